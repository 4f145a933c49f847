"""Tests for `llm_tutorial.tokenization`: training, measuring and showing tokenizers."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from llm_tutorial.tokenization import (
    BERT_SPECIAL_TOKENS,
    BPE_SPECIAL_TOKEN,
    compare_tokenizers,
    fertility,
    rare_word_report,
    surface_vocab,
    token_explorer,
    tokens_html,
    train_bpe,
    train_char_tokenizer,
    train_wordpiece,
    unknown_rate,
    vocab_overlap,
)

# ---------------------------------------------------------------------------- a small corpus

SUBJECTS = ["the minister", "a striker", "the company", "our reporter", "the band", "a judge"]
VERBS = ["announced", "reported", "rejected", "celebrated", "questioned", "predicted"]
OBJECTS = ["record profits", "a new album", "the final score", "higher taxes",
           "the election result", "a surprising transfer", "lower interest rates"]
PLACES = ["in london", "on monday", "after the match", "during the interview", "in brussels"]


def make_corpus(n: int, seed: int) -> list[str]:
    """``n`` generated news-like sentences (a fixed seed gives the same sentences)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
        f"{rng.choice(PLACES)}, {rng.randint(2, 99)} people said."
        for _ in range(n)
    ]


TRAIN = make_corpus(400, seed=0)
TEST = make_corpus(50, seed=1)


@pytest.fixture(scope="module")
def wordpiece() -> PreTrainedTokenizerFast:
    return train_wordpiece(TRAIN, vocab_size=300)


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return train_bpe(TRAIN, vocab_size=400)


@pytest.fixture(scope="module")
def chars() -> PreTrainedTokenizerFast:
    return train_char_tokenizer(TRAIN)


# ---------------------------------------------------------------------------- training


def test_wordpiece_special_tokens_and_template(wordpiece):
    assert [wordpiece.convert_tokens_to_ids(t) for t in BERT_SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (wordpiece.pad_token, wordpiece.unk_token, wordpiece.cls_token, wordpiece.sep_token,
            wordpiece.mask_token) == tuple(BERT_SPECIAL_TOKENS)
    assert wordpiece.model_max_length == 512
    assert len(wordpiece) == 300
    single = wordpiece("the band")["input_ids"]
    assert single[0] == wordpiece.cls_token_id and single[-1] == wordpiece.sep_token_id
    pair = wordpiece("the band", "a judge")
    assert pair["input_ids"].count(wordpiece.sep_token_id) == 2
    assert pair["token_type_ids"][-1] == 1 and pair["token_type_ids"][0] == 0
    # the "##x" forms registered for determinism must be ordinary tokens, not special ones
    assert set(wordpiece.all_special_tokens) == set(BERT_SPECIAL_TOKENS)
    assert "##e" in wordpiece.get_vocab()


def test_round_trip_decode(wordpiece, bpe, chars):
    text = "the minister rejected higher taxes in london"
    for tokenizer in (wordpiece, bpe, chars):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # byte-level BPE and characters keep case and punctuation exactly; BPE also newlines
    exact = "The band, 42 people said."
    for tokenizer in (bpe, chars):
        assert tokenizer.decode(tokenizer(exact)["input_ids"], skip_special_tokens=True) == exact
    assert bpe.decode(bpe(exact + "\n" + exact)["input_ids"]) == exact + "\n" + exact


def test_wordpiece_lowercase_flag():
    cased = train_wordpiece(TRAIN, vocab_size=300, lowercase=False)
    assert "T" in cased.get_vocab()
    assert cased.tokenize("The")[0].startswith("T")


@pytest.mark.parametrize("train", [
    lambda texts: train_wordpiece(texts, vocab_size=250),
    lambda texts: train_bpe(texts, vocab_size=350),
    train_char_tokenizer,
])
def test_training_is_deterministic(train):
    # a tiny corpus has many merges of equal count: the tie-breaks must not depend on the run
    texts = make_corpus(40, seed=3)
    vocabs = [train(texts).get_vocab() for _ in range(4)]
    assert all(vocab == vocabs[0] for vocab in vocabs)


def test_bpe_special_token_and_no_unknowns(bpe):
    assert bpe.convert_tokens_to_ids(BPE_SPECIAL_TOKEN) == 0
    assert bpe.eos_token == bpe.bos_token == bpe.pad_token == BPE_SPECIAL_TOKEN
    unseen = ["Zoë's café sells 寿司 and 🙂 for ½ price — ΩΣ"]
    assert unknown_rate(bpe, unseen) == 0.0
    assert bpe.decode(bpe(unseen[0])["input_ids"]) == unseen[0]


def test_char_tokenizer_unknown_characters(chars):
    assert chars.convert_tokens_to_ids("[PAD]") == 0 and chars.unk_token_id == 1
    pieces = chars.tokenize("a€b")
    assert pieces == ["a", "[UNK]", "b"]
    assert unknown_rate(chars, ["a€b"]) == pytest.approx(1 / 3)
    assert unknown_rate(chars, TEST) == 0.0


def test_char_tokenizer_min_frequency():
    vocab = train_char_tokenizer(["aaab", "aac"], min_frequency=2).get_vocab()
    assert "a" in vocab and "b" not in vocab and "c" not in vocab


def test_char_tokenizer_with_bert_specials_can_be_masked():
    from llm_tutorial import pretraining as pt

    chars = train_char_tokenizer(TRAIN, bert_specials=True)
    assert [chars.pad_token_id, chars.unk_token_id, chars.cls_token_id, chars.sep_token_id,
            chars.mask_token_id] == [0, 1, 2, 3, 4]
    assert chars.decode(chars("ab cd", add_special_tokens=False)["input_ids"]) == "ab cd"
    blocks = pt.pack_texts(chars, TRAIN, block_size=16)
    assert (blocks[:, 0] == 2).all() and (blocks[:, -1] == 3).all()
    batch = pt.MLMCollator(chars, seed=0)(list(blocks))
    selected = batch["labels"] != -100
    assert selected.any() and not selected[:, [0, -1]].any()  # [CLS] and [SEP] are never masked


# ---------------------------------------------------------------------------- measuring


def test_fertility_by_hand(chars, wordpiece):
    # "ab cd": characters a, b, ▁, c, d = 5 tokens for 2 words
    assert fertility(chars, ["ab cd"]) == pytest.approx(5 / 2)
    # total tokens / total words over the corpus, special tokens not counted
    texts = ["the band", "a judge said"]
    n_tokens = sum(len(wordpiece.tokenize(t)) for t in texts)
    assert fertility(wordpiece, texts) == pytest.approx(n_tokens / 5)


def test_compare_tokenizers(wordpiece, bpe, chars):
    table = compare_tokenizers({"char": chars, "WordPiece": wordpiece, "BPE": bpe}, TEST)
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["char", "WordPiece", "BPE"]
    assert list(table.columns) == ["vocab size", "fertility", "unknown rate", "unknown tokens",
                                   "tokens per document", "chars per token"]
    assert (table["unknown tokens"] == 0).all()
    with_unknowns = compare_tokenizers({"char": chars}, ["a€b c€"])
    assert with_unknowns.loc["char", "unknown tokens"] == 2
    assert with_unknowns.loc["char", "unknown rate"] == pytest.approx(2 / 6)
    assert table.loc["BPE", "unknown rate"] == 0
    assert table.loc["char", "chars per token"] == pytest.approx(1.0)
    assert table.loc["WordPiece", "fertility"] == pytest.approx(fertility(wordpiece, TEST))
    assert table.loc["char", "fertility"] > table.loc["BPE", "fertility"]


def test_rare_word_report(wordpiece):
    report = rare_word_report(wordpiece, ["band", "bandwagon"])
    assert list(report.columns) == ["word", "pieces", "n_pieces"]
    assert report.loc[0, "pieces"] == "band" and report.loc[0, "n_pieces"] == 1
    assert report.loc[1, "n_pieces"] == len(report.loc[1, "pieces"].split()) > 1


def test_vocab_overlap(wordpiece, bpe, chars):
    itself = vocab_overlap(wordpiece, wordpiece)
    assert itself["jaccard"] == 1.0 and itself["coverage_a_by_b"] == 1.0
    assert itself["size_a"] == 300
    # markers are normalised away: "##ing" and "ing", "Ġthe" and "the" are the same strings
    assert "##" not in "".join(surface_vocab(wordpiece))
    assert "Ġ" not in "".join(surface_vocab(bpe))
    assert "the" in surface_vocab(bpe) and "the" in surface_vocab(wordpiece)
    both = vocab_overlap(chars, bpe)
    assert 0 < both["jaccard"] < 1 and both["shared"] <= both["strings_a"]


def test_untruncated_measurement(wordpiece):
    # truncation left switched on in the backend must not shorten what we measure
    long_text = " ".join(TRAIN[:30])
    before = fertility(wordpiece, [long_text])
    wordpiece(long_text, truncation=True, max_length=16)
    assert fertility(wordpiece, [long_text]) == before


def test_tokens_html(bpe):
    snippet = tokens_html(bpe, "the band <b>\n", name="BPE")
    assert "&lt;" in snippet and "<b>BPE</b>" in snippet and "<b>\n" not in snippet
    assert snippet.count("<span") == len(bpe.tokenize("the band <b>\n"))


# ---------------------------------------------------------------------------- bad inputs


BAD_CALLS = [
    *[(lambda train=train, corpus=corpus: train(corpus), error, match)
      for train in (train_wordpiece, train_bpe, train_char_tokenizer)
      for corpus, error, match in (([], ValueError, "empty"), (["", "  "], ValueError, "empty"),
                                   ("just one text", TypeError, "single string"))],
    (lambda: train_wordpiece(TRAIN, vocab_size=len(BERT_SPECIAL_TOKENS)), ValueError, "vocab_size >= "),
    (lambda: train_bpe(TRAIN, vocab_size=256), ValueError, "vocab_size >= 257"),
    (lambda: train_char_tokenizer(TRAIN, min_frequency=0), ValueError, "min_frequency"),
    (lambda: fertility(Tokenizer(models.WordPiece(unk_token="[UNK]")), TEST), TypeError,
     "PreTrainedTokenizerFast"),
    (lambda: unknown_rate("bert", TEST), TypeError, "transformers tokenizer"),
    (lambda: compare_tokenizers(["a tokenizer, not a dict"], TEST), TypeError, "dict"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_inputs_are_rejected_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_an_empty_corpus_to_measure_is_rejected(wordpiece):
    with pytest.raises(ValueError, match="empty"):
        fertility(wordpiece, [])


# ---------------------------------------------------------------------------- real data


def test_bbc_news_tokenizers_quickly():
    assets = pytest.importorskip("llm_tutorial.assets")
    try:
        data = assets.load_bbc_news(max_per_class=20)
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    table = compare_tokenizers(
        {"WordPiece": train_wordpiece(data.train_texts, vocab_size=2000),
         "BPE": train_bpe(data.train_texts, vocab_size=2000)},
        data.test_texts,
    )
    assert table.loc["BPE", "unknown rate"] == 0
    assert table.loc["WordPiece", "unknown rate"] < 0.01
    assert 1.0 < table.loc["WordPiece", "fertility"] < 2.5


def test_token_explorer_redraws(wordpiece, bpe):
    pytest.importorskip("ipywidgets")
    explorer = token_explorer({"WordPiece": wordpiece, "BPE": bpe}, "the band")
    box, choice, area = explorer.children
    assert "<b>WordPiece</b>" in area.value and "<b>BPE</b>" in area.value
    choice.value = "BPE"
    assert "<b>WordPiece</b>" not in area.value
    box.value = "a judge"
    assert "judge" in area.value and "band" not in area.value


@pytest.mark.slow
def test_minilm_tokenizer_is_measured_like_ours():
    from transformers import AutoTokenizer

    from llm_tutorial import assets
    from llm_tutorial.exercises import ch01

    try:
        tokenizer = AutoTokenizer.from_pretrained(assets.asset_path("minilm"))
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    report = rare_word_report(tokenizer, ["cryptocurrency", "the"])
    assert report["pieces"].tolist() == ["crypt ##oc ##ur ##ren ##cy", "the"]
    assert report.loc[0, "n_pieces"] == ch01._PIECES_EXPECTED
    overlap = vocab_overlap(tokenizer, tokenizer)
    assert overlap["jaccard"] == 1.0 and overlap["size_a"] == 30522
    assert unknown_rate(tokenizer, ["the café"]) == 0.0
