"""Tests for `llm_tutorial.token_classification`: label alignment, span decoding, QA windows,
best-span search, SQuAD metrics, and the errors raised on bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from llm_tutorial import assets
from llm_tutorial import token_classification as tc
from llm_tutorial.token_classification import IGNORE_INDEX, QAExample
from llm_tutorial.tokenization import train_wordpiece
from llm_tutorial.trainer import TrainConfig, Trainer

LABELS = tc.bio_labels(["PER", "LOC"])
LABEL2ID, ID2LABEL = tc.label_maps(LABELS)
OUT, B_PER, I_PER, B_LOC, I_LOC = (LABEL2ID[t] for t in ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))

CORPUS = ["the minister met the president in london on monday .",
          "shares fell after the talks in paris and berlin .",
          "a new film was released by the studio in new york ."] * 40


@pytest.fixture(scope="module")
def tokenizer():
    # a tiny vocabulary, so that rarer words split into several pieces
    return train_wordpiece(CORPUS, vocab_size=120)


# ---------------------------------------------------------------------------- labels


def test_bio_labels_and_maps():
    assert LABELS == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    assert ID2LABEL[0] == "O" and LABEL2ID["I-LOC"] == 4


def test_align_labels_first_subword_and_specials():
    # [CLS] w0 w1 w1 w1 w2 [SEP] [PAD]
    word_ids = [None, 0, 1, 1, 1, 2, None, None]
    tags = ["O", "B-PER", "B-LOC"]
    assert tc.align_labels(word_ids, tags, LABEL2ID) == [
        IGNORE_INDEX, OUT, B_PER, IGNORE_INDEX, IGNORE_INDEX, B_LOC, IGNORE_INDEX, IGNORE_INDEX]


def test_align_labels_propagates_b_as_i():
    word_ids = [None, 0, 0, 1, 1, None]
    tags = ["B-PER", "I-PER"]
    assert tc.align_labels(word_ids, tags, LABEL2ID, label_all_tokens=True) == [
        IGNORE_INDEX, B_PER, I_PER, I_PER, I_PER, IGNORE_INDEX]


def test_naive_labels_pad_and_truncate():
    assert tc.naive_labels(["B-PER", "O"], LABEL2ID, 5) == [
        IGNORE_INDEX, B_PER, OUT, IGNORE_INDEX, IGNORE_INDEX]
    assert tc.naive_labels(["B-PER", "O", "B-LOC"], LABEL2ID, 3) == [IGNORE_INDEX, B_PER, OUT]
    # [CLS] w0 w1 w1 w2 [SEP]: w0 is fine, w1's piece is fine, w2's tag lands on w1's 2nd piece
    assert tc.naive_misplaced([None, 0, 1, 1, 2, None], 3) == [False, False, True]


def test_encode_tagged_aligns_with_word_ids(tokenizer):
    words = ["the", "zanzibarian", "president", "met", "quixotic", "kowalski"]
    tags = ["O", "B-LOC", "O", "O", "O", "B-PER"]
    (feature,) = tc.encode_tagged(tokenizer, [(words, tags)], LABEL2ID, max_length=64)
    word_ids = tokenizer(words, is_split_into_words=True)
    word_ids = word_ids.word_ids()
    assert len(feature["labels"]) == len(feature["input_ids"]) == len(word_ids)
    assert len(word_ids) > len(words) + 2  # some words really were split
    scored = [label for label in feature["labels"] if label != IGNORE_INDEX]
    assert scored == [LABEL2ID[t] for t in tags]  # exactly one label per word, in order
    assert feature["labels"][0] == feature["labels"][-1] == IGNORE_INDEX  # [CLS], [SEP]

    (naive,) = tc.encode_tagged(tokenizer, [(words, tags)], LABEL2ID, 64, alignment="naive")
    assert naive["labels"][1: len(tags) + 1] == [LABEL2ID[t] for t in tags]  # token i+1 <- word i
    (every,) = tc.encode_tagged(tokenizer, [(words, tags)], LABEL2ID, 64, alignment="all")
    assert IGNORE_INDEX not in every["labels"][1:-1]


def test_encode_tagged_truncation(tokenizer):
    words = ["the", "minister", "met", "the", "president", "in", "london"] * 4
    tags = ["O"] * len(words)
    tags[6] = "B-LOC"
    (feature,) = tc.encode_tagged(tokenizer, [(words, tags)], LABEL2ID, max_length=8)
    assert len(feature["input_ids"]) == 8 and len(feature["labels"]) == 8
    assert feature["labels"][-1] == IGNORE_INDEX  # the final [SEP] survives truncation


def test_collate_and_loader_pad_and_repeat():
    features = [{"input_ids": [2, 5, 3], "labels": [-100, 1, -100], "start_positions": 1},
                {"input_ids": [2, 3], "labels": [-100, -100], "start_positions": 0}]
    batch = tc.collate(features, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert batch["start_positions"].tolist() == [1, 0]
    first = [b["input_ids"].tolist() for b in tc.make_loader(features * 4, 3, seed=1)]
    again = [b["input_ids"].tolist() for b in tc.make_loader(features * 4, 3, seed=1)]
    assert first == again


# ---------------------------------------------------------------------------- case channel


@pytest.mark.parametrize("word, shape", [
    ("talks", "lower"), ("Blair", "Capitalised"), ("I", "Capitalised"), ("BBC", "UPPER"),
    ("McDonald", "mIxed"), ("eBay", "mIxed"), ("2004", "no letters"), ("%", "no letters"),
    ("O'Brien", "mIxed"), ("£1.4bn", "lower"), ("Zoë", "Capitalised"),
])
def test_word_shape(word, shape):
    assert tc.SHAPES[tc.word_shape(word)] == shape


def test_token_shapes_follow_words():
    assert tc.token_shapes([None, 0, 0, 1, None], ["Kaepernick", "knelt"]) == [0, 2, 2, 1, 0]


def test_encode_tagged_with_shapes_pads_with_no_word(tokenizer):
    sentences = [(["The", "Minister", "met", "BBC"], ["O", "B-PER", "O", "B-LOC"]),
                 (["london"], ["B-LOC"])]
    features = tc.encode_tagged(tokenizer, sentences, LABEL2ID, shapes=True)
    plain = tc.encode_tagged(tokenizer, sentences, LABEL2ID)
    for feature, without in zip(features, plain, strict=True):
        assert feature["input_ids"] == without["input_ids"]  # the tokenizer is uncased
        assert len(feature["shape_ids"]) == len(feature["input_ids"])
        assert feature["shape_ids"][0] == feature["shape_ids"][-1] == 0  # [CLS], [SEP]
    assert {tc.SHAPES[i] for i in features[0]["shape_ids"][1:-1]} == {"Capitalised", "lower",
                                                                       "UPPER"}
    batch = tc.collate(features)
    assert batch["shape_ids"].shape == batch["input_ids"].shape
    assert batch["shape_ids"][1, len(features[1]["shape_ids"]):].eq(0).all()


def tiny_tagger(tokenizer, seed=0):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=len(LABELS),
                        id2label=ID2LABEL, label2id=LABEL2ID)
    return BertForTokenClassification(config).eval()


def test_case_channel_starts_as_the_wrapped_model_and_then_sees_case(tokenizer):
    inner = tiny_tagger(tokenizer)
    model = tc.CaseChannel(inner).eval()
    sentences = [["the", "minister", "met", "the", "president"],
                 ["The", "Minister", "met", "THE", "President"]]
    (plain_tags, cased_tags) = (tc.predict_word_tags(model, tokenizer, [s], ID2LABEL)[0]
                                for s in sentences)
    assert plain_tags == cased_tags == tc.predict_word_tags(inner, tokenizer, sentences[:1],
                                                            ID2LABEL)[0]
    batch = tc.collate(tc.encode_tagged(tokenizer, [(s, ["O"] * 5) for s in sentences],
                                        LABEL2ID, shapes=True))
    same = model(**batch).logits
    assert torch.allclose(same[0], same[1])  # zero shape vectors: case is invisible
    assert torch.allclose(model(**{k: v for k, v in batch.items() if k != "shape_ids"}).logits,
                          same)
    with torch.no_grad():
        model.shape_embeddings.weight.normal_()
    seen = model(**batch).logits
    assert not torch.allclose(seen[0], seen[1])  # same tokens, other shapes: other logits
    model(**batch).loss.backward()
    assert model.shape_embeddings.weight.grad.abs().sum() > 0


def test_disagreements_name_each_kind():
    words = [["Mr", "Blair", "met", "Nadal", "in", "Paris", "on", "Monday"], ["no", "entity"]]
    true = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC", "O", "B-DATE"], ["O", "O"]]
    pred = [["O", "B-PER", "O", "B-PER", "O", "B-LOC", "O", "O"], ["B-ORG", "O"]]
    table = tc.disagreements(words, true, pred)
    assert table[["sentence", "kind", "type", "reference", "predicted"]].values.tolist() == [
        [0, "boundary", "PER", "PER: Mr Blair", "PER: Blair"],
        [0, "type", "ORG", "ORG: Nadal", "PER: Nadal"],
        [0, "only reference", "DATE", "DATE: Monday", ""],
        [1, "only predicted", "ORG", "", "ORG: no"],
    ]
    assert set(table["kind"]) == set(tc.DISAGREEMENTS)
    assert tc.disagreements(words, true, true).empty  # agreeing taggers: no rows


# ---------------------------------------------------------------------------- spans


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
    (["O", "I-PER", "I-PER", "O"], [("PER", 1, 3)]),  # I- without B- starts an entity
    (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # adjacent entities
    (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # a type change ends the entity
    (["O", "O"], []),
])
def test_bio_to_spans(tags, spans):
    assert tc.bio_to_spans(tags) == spans


def test_bio_to_spans_matches_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities

    tags = ["I-PER", "B-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-PER", "I-LOC"]
    assert tc.bio_to_spans(tags) == [(t, s, e + 1) for t, s, e in get_entities(tags)]


def test_split_words_offsets_and_html():
    text = "Ed Sheeran played at O'Brien's in New York."
    words = tc.split_words(text)
    assert all(text[s:e] == w for w, s, e in words)
    assert [w for w, _, _ in words][-2:] == ["York", "."]
    page = tc.entities_html("a <b> Ed", [{"type": "PER", "start": 6, "end": 8}])
    assert "&lt;b&gt;" in page and "<mark" in page and "Ed <small><b>PER" in page


def test_entity_scores_and_report():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "B-LOC"]]  # the person's boundary is wrong
    scores = tc.entity_scores(gold, pred)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    report = tc.entity_report(gold, pred)
    assert report.loc["LOC", "f1"] == 1.0 and report.loc["PER", "support"] == 1


# ---------------------------------------------------------------------------- QA


CONTEXT = ("the minister met the president in london on monday . shares fell after the talks in "
           "paris and berlin . a new film was released by the studio in new york .")


def qa_example(answer="paris", question="where did shares fall after the talks ?"):
    return QAExample(question, CONTEXT, answer, CONTEXT.index(answer))


def test_qa_features_locate_the_answer_in_the_right_window(tokenizer):
    example = qa_example("new york")
    windows = tc.build_qa_features(tokenizer, [example], max_length=24, stride=4)
    assert len(windows) > 2 and set(windows.example_index) == {0}
    hits = 0
    for feature, offsets in zip(windows.features, windows.offsets, strict=True):
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:
            assert end == 0  # windows without the answer point at [CLS]
            continue
        hits += 1
        span = CONTEXT[offsets[start][0]:offsets[end][1]]
        assert span == "new york"
    assert hits >= 1
    assert windows.features[0]["start_positions"] == 0  # the answer is at the far end
    # consecutive windows overlap by `stride` context tokens
    first = [o for o in windows.offsets[0] if o is not None]
    second = [o for o in windows.offsets[1] if o is not None]
    assert first[-4:] == second[:4]


def test_best_span_rules():
    start = torch.tensor([9.0, 8.0, 1.0, 0.0, 5.0, 0.0])
    end = torch.tensor([9.0, 0.0, 0.0, 4.0, 1.0, 7.0])
    mask = [False, False, True, True, True, True]  # positions 0-1 are the question
    score, s, e = tc.best_span(start, end, mask, n_best=6, max_answer_len=10)
    assert (s, e) == (4, 5) and score == 12.0  # never in the question, end >= start
    assert tc.best_span(start, end, mask, n_best=6, max_answer_len=1) == (7.0, 5, 5)
    assert tc.best_span([0.0, 1.0, 0.0], [0.0, 0.0, 5.0], [True] * 3, max_answer_len=2)[1:] == (1, 2)
    assert tc.best_span([0.0, 1.0], [5.0, 0.0], [False, False]) is None  # no context at all


def test_templated_question():
    sentence = "Blair met Bush in Washington on Monday."
    start = sentence.index("Washington")
    assert tc.templated_question(sentence, start, start + 10, "where") == \
        "Blair met Bush in where on Monday?"


def test_split_and_sample_sentences():
    article = "Headline here\n\nFirst sentence is long enough. Second one follows it here.\n"
    assert tc.split_sentences(article) == ["Headline here", "First sentence is long enough.",
                                           "Second one follows it here."]
    assert tc.sample_sentences([article], 2, min_words=4) == \
        tc.sample_sentences([article], 2, min_words=4)
    everything = tc.sample_sentences([article], None, min_words=4, seed=3)
    assert sorted(everything) == ["First sentence is long enough.", "Second one follows it here."]
    assert everything == tc.sample_sentences([article], 2, min_words=4, seed=3)  # same order


# ---------------------------------------------------------------------------- SQuAD metrics


def test_squad_metrics():
    assert tc.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert tc.exact_match("the Paris", "Paris.") == 1.0
    assert tc.exact_match("Paris France", "Paris") == 0.0
    assert tc.token_f1("Paris France", "Paris") == pytest.approx(2 / 3)
    assert tc.token_f1("London", "Paris") == 0.0
    assert tc.token_f1("", "Paris") == 0.0
    scores = tc.squad_scores(["Paris France", "Berlin"], ["Paris", ["Bonn", "berlin"]])
    assert scores == {"exact_match": 50.0, "f1": pytest.approx(100 * (2 / 3 + 1) / 2)}


# ---------------------------------------------------------------------------- bad input

ARTICLE = "Headline here\n\nFirst sentence is long enough. Second one follows it here.\n"
DIS_WORDS = [["Mr", "Blair", "met", "Nadal"], ["no", "entity"]]
DIS_TAGS = [["B-PER", "I-PER", "O", "B-PER"], ["O", "O"]]

# (call with the tiny tokenizer, error, message): each row is a mistake learners make
BAD_CALLS = [
    # labels and their alignment to sub-words
    (lambda tok: tc.bio_labels(["B-PER"]), ValueError, "without a B-/I- prefix"),
    (lambda tok: tc.bio_labels(["PER", "PER"]), ValueError, "distinct bare type names"),
    (lambda tok: tc.label_maps(["O", "B-PER", "O"]), ValueError, "distinct tag names"),
    (lambda tok: tc.align_labels([None, 0, 1, None], ["O"], LABEL2ID), ValueError, "only 1 tags"),
    (lambda tok: tc.encode_tagged(tok, [(["a", "b"], ["O"])], LABEL2ID), ValueError,
     "2 words but 1 tags: give exactly one tag per word"),
    (lambda tok: tc.encode_tagged(tok, [(["a", "b"], ["O", "B-ORG"])], LABEL2ID), KeyError,
     "unknown tag 'B-ORG'; known tags: O, B-PER, I-PER, B-LOC, I-LOC"),
    (lambda tok: tc.naive_labels(["B-ORG"], LABEL2ID, 4), KeyError, "unknown tag 'B-ORG'"),
    (lambda tok: tc.encode_tagged(tok, [(["a"], ["O"])], LABEL2ID, alignment="last"), ValueError,
     r"alignment must be one of \('first', 'all', 'naive'\)"),
    (lambda tok: tc.predict_word_tags(None, tok, [["a"]], ID2LABEL, alignment="last"), ValueError,
     "alignment must be one of"),
    (lambda tok: tc.encode_tagged(SimpleNamespace(is_fast=False), [(["a"], ["O"])], LABEL2ID),
     TypeError, "a fast tokenizer is needed"),
    (lambda tok: tc.encode_tagged(tok, [], LABEL2ID), ValueError, "sentences is empty"),
    (lambda tok: tc.make_loader([], 4), ValueError, "nothing to train on"),
    (lambda tok: tc.CaseChannel(tiny_tagger(tok))(input_ids=torch.ones(2, 4, dtype=torch.long),
                                                  shape_ids=torch.ones(2, 1, dtype=torch.long)),
     ValueError, "one shape id per token"),
    # scoring tags and reading them as spans
    (lambda tok: tc.entity_scores([["B-PER", "O"]], [["O"]]), ValueError,
     "sentence 0 has 2 true tags but 1 predicted tags: give one tag per word"),
    (lambda tok: tc.entity_report([["O"], ["O"]], [["O"]]), ValueError,
     "2 sentences of true tags but 1 of predicted tags"),
    (lambda tok: tc.disagreements(DIS_WORDS[:1], DIS_TAGS, DIS_TAGS), ValueError,
     "1 sentences of words but 2 of true tags"),
    (lambda tok: tc.disagreements([DIS_WORDS[0], ["x"]], DIS_TAGS, DIS_TAGS), ValueError,
     "sentence 1 has 1 words but 2 true tags"),
    (lambda tok: tc.bio_to_spans(["S-PER"]), ValueError, "use 'O', 'B-type' or 'I-type'"),
    (lambda tok: tc.split_words("   "), ValueError, "type a sentence"),
    (lambda tok: tc.entities_html("abc", [{"type": "X", "start": 0, "end": 2},
                                          {"type": "X", "start": 1, "end": 3}]),
     ValueError, "overlaps"),
    (lambda tok: tc.sample_sentences([ARTICLE], 3, min_words=4), ValueError,
     "n=3, but 2 sentences have 4 to 40 words"),
    (lambda tok: tc.sample_sentences([ARTICLE], None, min_words=9), ValueError,
     "but 0 sentences have 9 to 40 words"),
    (lambda tok: tc.sample_sentences([ARTICLE], 0), ValueError, "n=0, but"),
    # extractive QA
    (lambda tok: tc.build_qa_features(tok, [QAExample("where ?", CONTEXT, "paris", 3)], 64, 8),
     ValueError, r"not at context\[3:...\].*context.find\(answer\) = \d+: fix answer_start"),
    (lambda tok: tc.check_qa_example(QAExample("where ?", CONTEXT, "rome", 0)), ValueError,
     "does not occur"),
    (lambda tok: tc.check_qa_example(QAExample(" ", CONTEXT, "paris", CONTEXT.index("paris"))),
     ValueError, "the question is empty"),
    (lambda tok: tc.check_qa_example(QAExample("where ?", CONTEXT, "", 0)), ValueError,
     "the answer is empty"),
    (lambda tok: tc.build_qa_features(tok, []), ValueError, "examples is empty"),
    (lambda tok: tc.build_qa_features(tok, [qa_example()], max_length=6, stride=1), ValueError,
     "smaller than the longest question"),
    (lambda tok: tc.build_qa_features(tok, [qa_example()], max_length=24, stride=10), ValueError,
     r"stride=10 must be in \[0, \d+\)"),
    (lambda tok: tc.best_span([0.0], [0.0, 1.0], [True]), ValueError, "one entry per token"),
    (lambda tok: tc.templated_question("Blair met Bush.", 5, 500, "who"), ValueError,
     "inside the sentence"),
    (lambda tok: tc.squad_scores(["a"], ["a", "b"]), ValueError, "one prediction per question"),
    (lambda tok: tc.squad_scores([], []), ValueError, "at least one"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_input_raises_a_helpful_error(tokenizer, call, error, message):
    with pytest.raises(error, match=message):
        call(tokenizer)


# ---------------------------------------------------------------------------- real models


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from llm_tutorial import assets

    try:
        return AutoTokenizer.from_pretrained(assets.asset_path("minilm"))
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))


@pytest.mark.slow
def test_minilm_ner_round_trip(minilm_tokenizer):
    torch.manual_seed(0)
    model = tc.token_classifier(LABELS)
    assert not model.get_input_embeddings().weight.requires_grad
    text = "Ed Sheeran played Wembley in London last night."
    for entity in tc.extract_entities(model, minilm_tokenizer, text, ID2LABEL):
        assert text[entity["start"]:entity["end"]] == entity["text"]
    (feature,) = tc.encode_tagged(minilm_tokenizer, [(["Kaepernick", "knelt"], ["B-PER", "O"])],
                                  LABEL2ID, alignment="all")
    assert feature["labels"][0] == IGNORE_INDEX and feature["labels"][1] == B_PER
    assert len(set(feature["labels"][2:-2])) == 1 and feature["labels"][2] == I_PER
    tags = tc.predict_word_tags(model, minilm_tokenizer, [["a", "b", "c"]], ID2LABEL)
    assert len(tags[0]) == 3
    torch.manual_seed(0)  # the same head: an untrained case channel changes nothing
    cased = tc.token_classifier(LABELS, case_channel=True)
    assert isinstance(cased, tc.CaseChannel) and cased.config.num_labels == len(LABELS)
    assert (tc.extract_entities(cased, minilm_tokenizer, text, ID2LABEL)
            == tc.extract_entities(model, minilm_tokenizer, text, ID2LABEL))


@pytest.mark.slow
def test_train_tagger_is_seeded_and_logs_entity_f1(minilm_tokenizer):
    sentences = [(["Ed", "Sheeran", "played", "in", "London"], ["B-PER", "I-PER", "O", "O", "B-LOC"]),
                 (["Paris", "is", "far"], ["B-LOC", "O", "O"])] * 4
    runs = [tc.train_tagger(minilm_tokenizer, sentences, LABELS, steps=4, lr=1e-3, batch_size=2,
                            max_length=16, eval_sentences=sentences[:2], evals=2,
                            case_channel=case, device="cpu", desc="test")
            for case in (False, False, True)]
    (model, history), (_, again), (cased, _) = runs
    assert isinstance(cased, tc.CaseChannel) and not isinstance(model, tc.CaseChannel)
    assert history["entity_f1"].notna().sum() == 2  # scored twice: at step 2 and step 4
    assert list(history["step"]) == [2, 4]
    pd.testing.assert_frame_equal(history.drop(columns=["elapsed_s"], errors="ignore"),
                                  again.drop(columns=["elapsed_s"], errors="ignore"))


@pytest.mark.slow
def test_minilm_qa_predictions_are_valid_spans(minilm_tokenizer):
    torch.manual_seed(0)
    model = tc.qa_model()
    examples = [qa_example("paris"), qa_example("london", "who met whom in where ?")]
    predictions = tc.predict_answers(model, minilm_tokenizer, examples, max_length=32, stride=8,
                                     max_answer_len=3)
    for prediction in predictions:
        assert prediction["answer"] == CONTEXT[prediction["start"]:prediction["end"]]
        assert 0 < len(minilm_tokenizer.tokenize(prediction["answer"])) <= 3
    loader = tc.make_loader(tc.build_qa_features(minilm_tokenizer, examples, 32, 8).features, 4)
    assert model(**next(iter(loader))).loss.ndim == 0


@pytest.mark.slow
def test_spacy_silver_labels_and_questions():
    from llm_tutorial import assets

    try:
        nlp = assets.load_spacy_ner()
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    (doc,) = tc.annotate(nlp, ["Tony Blair flew to Washington on Monday with 20% of his staff."])
    words, tags = tc.silver_tags(doc)
    assert len(words) == len(tags) and tags[0] == "B-PERSON" and "B-GPE" in tags
    article = ("Headline\n\nTony Blair flew to Washington on Monday for talks. "
               "He met George Bush at the White House. The talks lasted two days in March.")
    examples = tc.qa_examples_from_articles(nlp, [article] * 3, n=3, per_article=3)
    assert examples
    for example in examples:
        tc.check_qa_example(example)
        assert example.question.endswith("?") and example.answer not in example.question


# ---------------------------------------------------------------------------- your own data


def test_notebook_05_runs_on_a_learners_own_conll_file(tokenizer, tmp_path):
    # entity types WNUT does not have, in a CoNLL file: read, label set, encode, train, predict, score
    sentences = [("the minister ate an apple in paris .".split(), "O O O O B-FRUIT O B-CITY O".split()),
                 ("shares of apple fell in london .".split(), "O O O O O B-CITY O".split()),
                 ("a new york studio sold the pear .".split(), "O B-CITY I-CITY O O O B-FRUIT O".split())]
    text = "-DOCSTART- O\n\n" + "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(words, tags, strict=True))
                                             for words, tags in sentences) + "\n"
    path = tmp_path / "mine.conll"
    path.write_text(text, encoding="utf-8")
    data = assets.read_conll(path)
    assert data == [(list(w), list(t)) for w, t in sentences]

    types = sorted({tag[2:] for _, tags in data for tag in tags if tag != "O"})
    labels = tc.bio_labels(types)
    label2id, id2label = tc.label_maps(labels)
    assert labels == ["O", "B-CITY", "I-CITY", "B-FRUIT", "I-FRUIT"]
    features = tc.encode_tagged(tokenizer, data * 8, label2id, max_length=24)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=len(labels),
                        id2label=id2label, label2id=label2id)
    model = BertForTokenClassification(config)
    loader = tc.make_loader(features, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    history = Trainer(model, loader, TrainConfig(max_steps=60, lr=5e-3, log_every=10, progress=False)).train()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] / 4
    predicted = tc.predict_word_tags(model, tokenizer, [words for words, _ in data], id2label)
    report = tc.entity_report([tags for _, tags in data], predicted)
    assert {"CITY", "FRUIT"} <= set(report.index) and report.loc["CITY", "f1"] == 1.0


def test_read_conll_names_a_line_without_a_tag(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("paris\tB-CITY\nlondon\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2: 'london' has no tag column"):
        assets.read_conll(path)
