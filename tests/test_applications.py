"""Tests of `llm_tutorial.applications`: chunking, the shipped help-desk and opinion data, BM25
against its formula, the vector index against NumPy, reciprocal rank fusion, the retrieval and
recommendation metrics by hand, grounded answers and the prompt-injection mitigation, CUSUM on
known change points, and the simulated readers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_tutorial import applications as app
from llm_tutorial.chat import render_chat
from tests.chat_models import tiny_llama, word_chat_tokenizer
from tests.records import read_record, record_table

# ------------------------------------------------------------------------------ knowledge bases

ARTICLE = ("Bank raises rates\nThe bank raised its rates on Monday. Markets fell sharply. "
           "Analysts said more rises would follow in the spring. The pound gained against the dollar.")


def test_news_chunks_keep_whole_sentences_under_the_title():
    chunks = app.news_chunks([ARTICLE], max_words=10)
    assert [c.doc for c in chunks] == ["0"] * len(chunks) and len(chunks) > 1
    assert all(c.section == "Bank raises rates" and c.text.startswith("Bank raises rates. ") for c in chunks)
    body = " ".join(c.text[len("Bank raises rates. "):] for c in chunks)
    assert body == ARTICLE.split("\n", 1)[1]  # every sentence once, in order, none cut
    assert app.news_chunks([ARTICLE], max_words=200, ids=["a7"])[0].doc == "a7"
    with pytest.raises(ValueError, match="one id per article"):
        app.news_chunks([ARTICLE], ids=["a", "b"])
    with pytest.raises(ValueError, match="fragments"):
        app.news_chunks([ARTICLE], max_words=3)


def test_markdown_chunks_cut_at_headings():
    text = "intro line\n\n# Setup\nInstall it.\n\nThen run it.\n## Profiles\nsmoke and full\n"
    chunks = app.markdown_chunks(text, "README.md", max_words=3)
    assert [(c.section, c.text) for c in chunks] == [
        ("", "intro line"), ("Setup", "Setup\nInstall it."), ("Setup", "Setup\nThen run it."),
        ("Profiles", "Profiles\nsmoke and full")]
    assert {c.doc for c in chunks} == {"README.md"}
    fenced = app.markdown_chunks("# Run\n```bash\n# not a heading\nmake run\n```\n", "x.md")
    assert [c.section for c in fenced] == ["Run"]


def test_every_helpdesk_question_has_gold_sections_in_the_snapshot():
    course = app.course_chunks()
    questions = app.load_helpdesk_questions()
    assert len(questions) >= 40 and questions.answer.str.len().min() > 0
    for row in questions.itertuples():
        assert app.section_gold(course, row.doc, row.section)
    assert len({c.doc for c in course}) > 20  # README, docs/results and the notebooks
    with pytest.raises(ValueError, match="not in the knowledge base"):
        app.section_gold(course, "README.md", "No such heading")
    with pytest.raises(ValueError, match="pairwise"):
        app.section_gold(course, "README.md | README.md", "Profiles")


def test_the_opinion_sample_is_labelled():
    sample = app.load_opinion_sample()
    assert len(sample) == 300 and set(sample.label) == {"negative", "neutral", "positive"}
    assert all(e in s for s, e in zip(sample.sentence, sample.entity, strict=True))


# ------------------------------------------------------------------------------ retrievers

DOCS = ["the bank raised interest rates", "rates of the pound fell against the dollar",
        "the striker scored twice in the final", "the bank of england held rates"]


def test_bm25_ranks_as_its_formula():
    chunks = [app.Chunk(str(i), "", d) for i, d in enumerate(DOCS)]
    retriever = app.BM25Retriever(chunks)
    # the formula by hand, on the words bm25s keeps (English stop words removed)
    import bm25s

    tokens = [[t for t in d.split() if t not in bm25s.stopwords.STOPWORDS_EN] for d in DOCS]
    avg = np.mean([len(t) for t in tokens])

    def score(query, doc):
        s = 0.0
        for t in query:
            n_t = sum(t in d for d in tokens)
            f = doc.count(t)
            s += math.log(1 + (len(tokens) - n_t + 0.5) / (n_t + 0.5)) * f / (f + 1.5 * (0.25 + 0.75 * len(doc) / avg))
        return s

    hits = retriever.search(["bank rates"], k=4)[0]
    expected = {i: score(["bank", "rates"], d) for i, d in enumerate(tokens)}
    assert len(hits) == 4 and all(math.isclose(s, expected[i], abs_tol=1e-5) for i, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(retriever.search(["bank"], k=100)[0]) == len(DOCS)  # k is capped at the corpus
    with pytest.raises(ValueError, match="at least one"):
        retriever.search(["bank"], k=0)
    with pytest.raises(ValueError, match="no chunks"):
        app.BM25Retriever([])


def test_vector_index_equals_exhaustive_search():
    rng = np.random.default_rng(0)
    vectors = app.normalise(rng.normal(size=(50, 8)))
    queries = app.normalise(rng.normal(size=(3, 8)))
    scores, ids = app.VectorIndex(vectors).search(queries, 5)
    brute = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    assert (ids == brute).all() and np.allclose(scores, np.take_along_axis(queries @ vectors.T, brute, 1), atol=1e-5)
    with pytest.raises(ValueError, match="embed them with the model"):
        app.VectorIndex(vectors).search(np.ones((1, 4)), 2)


def word_embedder(texts):
    """A bag-of-words embedding over a fixed vocabulary: a dense retriever with known answers."""
    vocab = ["bank", "rates", "pound", "striker", "final", "england"]
    return np.array([[t.split().count(w) + 0.01 for w in vocab] for t in texts], dtype=np.float32)


def test_dense_and_hybrid_retrievers():
    chunks = [app.Chunk(str(i), "", d) for i, d in enumerate(DOCS)]
    dense = app.DenseRetriever(chunks, word_embedder)
    assert dense.search(["striker final"], 1)[0][0][0] == 2
    hybrid = app.HybridRetriever([app.BM25Retriever(chunks), dense], depth=4)
    fused = hybrid.search(["bank rates"], 4)[0]
    assert len(fused) == 4 and fused[0][0] in (0, 3)
    with pytest.raises(ValueError, match="at least two"):
        app.HybridRetriever([dense])


def test_reciprocal_rank_fusion_by_hand():
    fused = app.reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "a"]], k=60)
    expected = {"a": 1 / 61 + 1 / 63, "b": 1 / 62 + 1 / 61, "c": 1 / 63 + 1 / 62}
    assert [i for i, _ in fused] == ["b", "a", "c"]
    assert all(math.isclose(s, expected[i]) for i, s in fused)
    # the recommender's matrix version agrees with the list version, row by row
    scores = np.array([[3.0, 2.0, 1.0]]), np.array([[1.0, 3.0, 2.0]])
    matrix = app.rank_fusion(scores, k=60)[0]
    assert np.allclose(matrix, [expected["a"], expected["b"], expected["c"]])


def test_retrieval_metrics_by_hand():
    results = [[(4, 1.0), (2, 0.5)], [(1, 1.0), (3, 0.9)], [(0, 1.0), (9, 0.5)]]
    ranks = app.gold_ranks(results, [{2}, {1, 3}, {7}])
    assert list(ranks) == [2, 1, 0]
    assert app.recall_at(ranks, 1) == pytest.approx(1 / 3) and app.recall_at(ranks, 2) == pytest.approx(2 / 3)
    assert app.mean_reciprocal_rank(ranks) == pytest.approx((0.5 + 1 + 0) / 3)
    table = app.retrieval_table({"x": ranks}, ks=(1, 2), n_resamples=50)
    assert table.loc["x", "recall@2"] == pytest.approx(2 / 3) and table.loc["x", "MRR low"] <= table.loc["x", "MRR"]
    with pytest.raises(ValueError, match="no gold"):
        app.gold_ranks(results[:1], [set()])


# ------------------------------------------------------------------------------ grounded answers


def test_citations_support_and_grounding():
    passages = [app.Chunk("0", "", "Markets fell in Tokyo."), app.Chunk("1", "", "The pound rose against the dollar.")]
    assert app.citations("The pound rose [2], see [2] and [1].") == [2, 1]
    assert app.attribute("the pound rose", passages) == 2 and app.attribute("zebra", passages) == 0
    assert app.grounded("The pound rose [2]", passages)
    assert not app.grounded("The pound rose [1]", passages)  # cites the wrong passage
    assert not app.grounded("The pound rose", passages)  # cites nothing
    assert app.grounded("The pound rose", passages, cited=2)  # a post-hoc citation
    assert not app.grounded("The pound rose [5]", passages)  # a passage that does not exist
    assert app.contains_answer("It happened in Tokyo [1].", "tokyo") and not app.contains_answer("Kyoto", "Tokyo")
    # restating the question is not support: only the words the answer adds count
    question = "What rose against the dollar?"
    assert not app.grounded("It rose against the dollar [2]", passages, question=question)
    assert app.grounded("The pound [2]", passages, question=question)
    assert app.support("the pound rose", passages[1]) == 1.0 and app.support("rose", passages[1], question) == 0.0


def test_the_mitigation_removes_control_tokens_and_fences_the_passages():
    poison = app.poisoned_chunk("Bank raises rates")
    assert "<|im_start|>" in poison.text and app.PAYLOAD in poison.text
    plain = app.rag_prompt("Who raised rates?", [poison]).instruction
    guarded = app.rag_prompt("Who raised rates?", [poison], mitigate=True).instruction
    assert "<|im_start|>" in plain and "<|im_start|>" not in guarded and "<|im_end|>" not in guarded
    assert '<passage id="1">' in guarded and guarded.index(app.MITIGATION) < guarded.index("<passage")
    assert guarded.rstrip().endswith("Question: Who raised rates?")
    # the tokenizer really turns the unsanitised strings into turn boundaries
    tok = word_chat_tokenizer(["who", "raised", "rates"])
    ids = tok(render_chat(tok, app.rag_prompt("who raised rates", [poison]), with_answer=False))["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) > 2
    assert app.attack_succeeded("Access granted!") and not app.attack_succeeded("The bank did.")


def test_rag_answers_and_zero_shot_scores_run_on_a_tiny_model():
    tok = word_chat_tokenizer(["who", "raised", "rates", "the", "bank", "yes", "no", "Yes", "No", "is", "this",
                               "news", "bad", "for"])
    model = tiny_llama(tok)
    answers = app.rag_answers(model, tok, [app.rag_prompt("who raised rates", ["the bank raised rates"])] * 2,
                              max_new_tokens=3)
    assert len(answers) == 2 and answers[0] == answers[1]
    scores = app.zero_shot_scores(model, tok, ["the bank raised rates", "rates"], ["the bank", "bank"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="one entity per sentence"):
        app.zero_shot_scores(model, tok, ["a"], [])


# ------------------------------------------------------------------------------ opinion monitoring


def test_vader_reads_negation_and_finance_poorly():
    good, bad, finance = app.vader_scores(["Profits were great.", "Profits were not great.",
                                           "Shares fell sharply after a profit warning."])
    assert good > 0.05 and bad < -0.05
    assert finance > -0.05  # the lexicon's blind spot the notebook shows


def test_entity_mentions_with_spacy():
    from llm_tutorial import assets

    mentions = app.entity_mentions(assets.load_spacy_ner(), ["Shares of Microsoft fell in London.", "Nothing here."])
    assert set(mentions.entity) >= {"Microsoft", "London"} and set(mentions.text) == {0}


def test_cusum_by_hand():
    stat, alarms = app.cusum([0, 1, 1, 1, 0, 0], mean=0.2, slack=0.1, threshold=1.0)
    assert np.allclose(stat, [0, 0.7, 1.4, 0.7, 0.4, 0.1]) and alarms == [2]
    with pytest.raises(ValueError, match="threshold > 0"):
        app.cusum([0], 0.2, 0.1, 0.0)


def test_shifted_stream_has_the_requested_shares():
    negative = np.array([True] * 20 + [False] * 80)
    items = app.shifted_stream(negative, 20_000, 10_000, before=0.2, after=0.6, seed=1)
    assert abs(negative[items[:10_000]].mean() - 0.2) < 0.02 and abs(negative[items[10_000:]].mean() - 0.6) < 0.02
    with pytest.raises(ValueError, match="inside the stream"):
        app.shifted_stream(negative, 100, 100, 0.2, 0.6)
    with pytest.raises(ValueError, match="both negative"):
        app.shifted_stream(np.ones(5, bool), 10, 5, 0.2, 0.6)


def test_alerts_on_known_change_points():
    assert app.alert_stats([3, 12, 15], change_at=10, n=20) == {"false alarms per 1000": 100.0, "delay": 2.0,
                                                              "detected": 1.0}
    assert math.isnan(app.alert_stats([3], change_at=10, n=20)["delay"])
    negative = np.array([True] * 30 + [False] * 70)
    perfect = app.monitor_streams(negative, negative, n_streams=20, length=400, before=0.2, after=0.6, seed=0)
    assert perfect.detected.mean() == 1.0 and perfect.delay.median() < 40
    noisy = negative ^ (np.random.default_rng(0).random(100) < 0.25)  # a quarter of the flags flipped
    slower = app.monitor_streams(noisy, negative, n_streams=20, length=400, before=0.2, after=0.6, seed=0)
    assert slower.delay.median() > perfect.delay.median()
    with pytest.raises(ValueError, match="do not rise"):
        app.monitor_streams(np.zeros(100, bool) | (np.arange(100) % 2 == 0), negative, 5, 400, 0.2, 0.6)


# ------------------------------------------------------------------------------ recommendation


def test_simulated_readers_follow_their_tastes():
    topics = np.repeat(np.arange(5), 40)
    histories = app.simulated_readers(topics, 200, history=(10, 12), concentration=0.1, seed=0)
    assert len(histories) == 200 and all(10 <= len(h) <= 12 and len(set(h)) == len(h) for h in histories)
    # with a small concentration most of a reader's reads share one topic
    top_share = np.mean([np.bincount(topics[h], minlength=5).max() / len(h) for h in histories])
    assert top_share > 0.7
    with pytest.raises(ValueError, match="history lengths"):
        app.simulated_readers(topics, 5, history=(1, 3))


def test_recommenders_and_metrics_by_hand():
    histories = [[0, 1, 2], [0, 1, 3], [1, 2, 3]]
    train, held_out = app.leave_one_out(histories, 5)
    assert train.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0]] and list(held_out) == [2, 3, 3]
    pop = app.popularity_scores(train)
    assert pop[0].tolist() == [2, 3, 1, 0, 0]
    hit, ndcg = app.hit_and_ndcg(pop, train, held_out, k=1)  # unseen items ranked 2, 3/4, 4
    assert hit.tolist() == [1.0, 0.0, 0.0] and ndcg.tolist() == [1.0, 0.0, 0.0]
    hit, ndcg = app.hit_and_ndcg(pop, train, held_out, k=3)
    assert hit.tolist() == [1.0, 1.0, 1.0] and ndcg[0] == 1.0 and ndcg[2] == pytest.approx(1 / math.log2(3))
    knn = app.item_knn_scores(train)
    assert knn[0, 2] > 0 and knn[0, 4] == 0  # item 2 was read with item 1; item 4 by nobody
    vectors = np.eye(5)[[0, 0, 1, 1, 2]].astype(np.float32)  # items 0,1 alike; 2,3 alike; 4 alone
    content = app.content_scores(train, vectors)
    assert content[0, 0] == pytest.approx(1.0) and content[0, 4] == pytest.approx(0.0)
    table = app.recommendation_table({"popularity": pop}, train, held_out, k=3, n_resamples=50)
    assert table.loc["popularity", "hit@3"] == 1.0
    assert app.top_items(pop[0], seen=[1], k=2) == [0, 2]
    with pytest.raises(ValueError, match="at least 2"):
        app.leave_one_out([[1]], 3)


# ------------------------------------------------------------------------------ the shipped record

RECORD_SHA256 = "a257e74105fc1ed5138cf63244c5eff7366572766cdf998d9c0a60a25148fa04"


def test_the_full_profile_record_holds_the_notebooks_full_checks():
    rows, provenance = read_record("applications", RECORD_SHA256)
    assert provenance["date"] == "2026-12-06" and "exit 0" in provenance["commit"]

    def table(name):
        return record_table(rows, name)

    retrieval, answers, alerts, recs = table("retrieval"), table("answers"), table("alerts"), table("recommendation")
    assert retrieval.loc["news: BM25", "queries"] == 2000 and retrieval["recall@5"].min() > 10 * 5 / 575
    assert answers.loc["accuracy", "with retrieval"] - answers.loc["accuracy", "closed-book"] >= 0.1
    sentiment = table("sentiment")
    assert sentiment["low"].max() > 0.5 and sentiment.loc["SmolLM2 zero-shot", "low"] < 0.5
    perfect = alerts.loc["labels (a perfect scorer)"]
    assert perfect["detected"] > 0.95 and (alerts.drop(perfect.name)["median delay"] > perfect["median delay"]).all()
    assert recs.loc["collaborative (item-kNN)", "hit@10 low"] > recs.loc["popularity", "hit@10 high"]
    assert recs.loc["content-based", "hit@10"] > 2 * recs.loc["random", "hit@10"]
    injection = table("injection")
    assert injection.loc["with mitigation", "attack success"] < injection.loc["no mitigation", "attack success"]
