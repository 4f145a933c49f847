"""Tests for `llm_tutorial.pretraining`: masking, losses, data pipelines, metrics, tiny models."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_tutorial import pretraining as pt
from llm_tutorial.pretraining import IGNORE_INDEX
from llm_tutorial.tokenization import train_wordpiece

# ---------------------------------------------------------------------------- synthetic data

VOCAB = 1000
SPECIAL_IDS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], as train_wordpiece numbers them
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def synthetic_batch(rows: int, cols: int, seed: int = 0, vocab: int = VOCAB):
    """Ids framed as ``[CLS] ... [SEP] [PAD]*`` and the matching special-tokens mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_IDS), vocab, (rows, cols), generator=g)
    ids[:, 0] = CLS
    lengths = torch.randint(cols // 2, cols, (rows,), generator=g)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length] = SEP
        ids[row, length + 1 :] = PAD
    return ids, torch.isin(ids, torch.tensor(SPECIAL_IDS))


WORDS = ["market", "shares", "minister", "election", "match", "goal", "film", "album", "phone",
         "software", "profits", "rose", "fell", "won", "lost", "released", "announced", "the",
         "a", "new", "old", "big", "small", "on", "monday", "in", "london", "after", "talks"]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(n)]


def make_documents(n_docs: int, n_sentences: int) -> list[str]:
    """Documents whose sentences are unique and name their document and position."""
    return [" ".join(f"Document {d} says sentence {s} here." for s in range(n_sentences))
            for d in range(n_docs)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(make_corpus(300), vocab_size=200)


@pytest.fixture(scope="module")
def bert(tokenizer):
    torch.manual_seed(0)
    model = pt.tiny_bert(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, max_length=64)
    return model.eval()


@pytest.fixture(scope="module")
def sharp_bert(tokenizer):
    """A tiny BERT with large random weights: unlike the default (std 0.02) initialisation,
    its predictions depend strongly on the context, so padding mistakes show up."""
    torch.manual_seed(1)
    model = pt.tiny_bert(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, max_length=64)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def gpt(tokenizer):
    """transformers' GPT-2, the library oracle for the causal-LM loss."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    return model.eval()


@pytest.fixture(scope="module")
def blocks(tokenizer):
    return pt.pack_texts(tokenizer, make_corpus(200, seed=1), block_size=16)


def test_tokenizer_fixture_is_bert_like(tokenizer):
    assert 100 < len(tokenizer) <= 200
    assert [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id] == [PAD, CLS, SEP, MASK]


# ---------------------------------------------------------------------------- mask_tokens


def test_mask_tokens_never_selects_special_tokens():
    ids, special = synthetic_batch(50, 40)
    masked, labels = pt.mask_tokens(ids, special, VOCAB, MASK, mlm_probability=0.5,
                                     generator=torch.Generator().manual_seed(0))
    assert masked.shape == labels.shape == ids.shape
    assert masked.dtype == labels.dtype == torch.long
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(masked[special], ids[special])  # [CLS], [SEP], [PAD] untouched


def test_mask_tokens_labels():
    ids, special = synthetic_batch(50, 40)
    masked, labels = pt.mask_tokens(ids, special, VOCAB, MASK, generator=torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    assert selected.any()
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # only selected tokens may change
    assert ((masked >= 0) & (masked < VOCAB)).all()
    assert not torch.equal(masked, ids)


def test_mask_tokens_rates_on_many_tokens():
    ids, special = synthetic_batch(400, 500, seed=2)  # 200k positions
    masked, labels = pt.mask_tokens(ids, special, VOCAB, MASK, generator=torch.Generator().manual_seed(2))
    rates = pt.masking_rates(ids, masked, labels, special, MASK)
    assert rates["special selected"] == 0
    assert rates["selected"] == pytest.approx(0.15, abs=0.005)
    assert rates["[MASK]"] == pytest.approx(0.8, abs=0.01)
    assert rates["random"] == pytest.approx(0.1, abs=0.01)
    assert rates["unchanged"] == pytest.approx(0.1, abs=0.01)
    assert rates["[MASK]"] + rates["random"] + rates["unchanged"] == pytest.approx(1.0)


def test_mask_tokens_probability_is_respected():
    ids, special = synthetic_batch(200, 100, seed=3)
    masked, labels = pt.mask_tokens(ids, special, VOCAB, MASK, mlm_probability=0.4,
                                    generator=torch.Generator().manual_seed(3))
    assert pt.masking_rates(ids, masked, labels, special, MASK)["selected"] == pytest.approx(0.4, abs=0.02)


def test_mask_tokens_is_reproducible_with_a_seeded_generator():
    ids, special = synthetic_batch(20, 30)

    def run(seed):
        return pt.mask_tokens(ids, special, VOCAB, MASK, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])


def test_mask_tokens_does_not_modify_its_input():
    ids, special = synthetic_batch(10, 30)
    before = ids.clone()
    pt.mask_tokens(ids, special, VOCAB, MASK, mlm_probability=0.9)
    assert torch.equal(ids, before)


# ---------------------------------------------------------------------------- losses


def random_labels(shape, vocab, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) > p] = IGNORE_INDEX
    labels.view(-1)[0] = 3  # at least one selected position
    return labels


def test_mlm_loss_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = random_labels((3, 7), 11)
    expected = F.cross_entropy(logits.view(-1, 11), labels.view(-1))
    assert torch.allclose(pt.mlm_loss(logits, labels), expected, atol=1e-6)
    one = torch.full((3, 7), IGNORE_INDEX)
    one[1, 2] = 5
    assert torch.allclose(pt.mlm_loss(logits, one), -logits[1, 2].log_softmax(-1)[5], atol=1e-6)


def test_mlm_loss_equals_bert_loss(bert, tokenizer):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(tokenizer), (4, 12), generator=g)
    labels = random_labels((4, 12), len(tokenizer), seed=1)
    with torch.no_grad():
        out = bert(input_ids=ids, labels=labels)
    assert torch.allclose(pt.mlm_loss(out.logits, labels), out.loss, atol=1e-5)


def test_mlm_loss_gradient_flows():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    pt.mlm_loss(logits, random_labels((2, 5), 7)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_causal_lm_loss_equals_gpt2_loss(gpt, tokenizer):
    ids = torch.randint(5, len(tokenizer), (3, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = gpt(input_ids=ids, labels=ids)
    assert torch.allclose(pt.causal_lm_loss(out.logits, ids), out.loss, atol=1e-5)


def test_causal_lm_loss_ignores_padding(gpt, tokenizer):
    ids = torch.randint(5, len(tokenizer), (3, 10), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 6:] = 0
    attention_mask[2, 8:] = 0
    labels = ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        out = gpt(input_ids=ids, attention_mask=attention_mask, labels=labels)
    loss = pt.causal_lm_loss(out.logits, ids, attention_mask)
    assert torch.allclose(loss, out.loss, atol=1e-5)
    assert not torch.allclose(loss, pt.causal_lm_loss(out.logits, ids), atol=1e-5)


def test_causal_lm_loss_shift_by_hand():
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(4))
    ids = torch.tensor([[1, 2, 3, 4]])
    by_hand = -sum(logits[0, t].log_softmax(-1)[ids[0, t + 1]] for t in range(3)) / 3
    assert torch.allclose(pt.causal_lm_loss(logits, ids), by_hand, atol=1e-6)


# ---------------------------------------------------------------------------- MaskedPositionsMLM


def test_masked_positions_mlm_has_the_same_loss(bert, tokenizer):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, len(tokenizer), (4, 16), generator=g)
    labels = random_labels((4, 16), len(tokenizer), seed=5, p=0.15)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 12:] = 0
    wrapped = pt.MaskedPositionsMLM(bert).eval()
    with torch.no_grad():
        full = bert(input_ids=ids, attention_mask=attention_mask, labels=labels)
        fast = wrapped(ids, attention_mask=attention_mask, labels=labels)
    n_selected = int((labels != IGNORE_INDEX).sum())
    assert fast.logits.shape == (n_selected, len(tokenizer))
    assert torch.allclose(fast.loss, full.loss, atol=1e-5)
    assert torch.allclose(fast.logits, full.logits[labels != IGNORE_INDEX], atol=1e-5)
    assert list(wrapped.parameters())  # the wrapped model's parameters are registered


def test_masked_positions_mlm_without_labels_returns_all_logits(bert, tokenizer):
    ids = torch.randint(5, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = pt.MaskedPositionsMLM(bert)(input_ids=ids)
        expected = bert(input_ids=ids).logits
    assert out.loss is None
    assert torch.allclose(out.logits, expected, atol=1e-5)


# ---------------------------------------------------------------------------- data pipeline


def test_special_tokens_mask_for(tokenizer):
    ids = torch.tensor([[CLS, 10, 11, SEP, PAD], [CLS, MASK, 12, 1, SEP]])
    expected = torch.tensor([[1, 0, 0, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(pt.special_tokens_mask_for(ids, tokenizer), expected)


def test_pack_texts_shape_and_framing(tokenizer):
    texts = make_corpus(50, seed=2)
    packed = pt.pack_texts(tokenizer, texts, block_size=16)
    assert packed.dtype == torch.long and packed.dim() == 2 and packed.shape[1] == 16
    assert (packed[:, 0] == CLS).all() and (packed[:, -1] == SEP).all()
    stream = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [SEP]  # documents separated by [SEP]
    assert packed.shape[0] == len(stream) // 14  # the last incomplete block is dropped
    assert packed[:, 1:-1].flatten().tolist() == stream[: packed.shape[0] * 14]
    assert not (packed == PAD).any()


def test_pack_texts_max_blocks(tokenizer):
    texts = make_corpus(50, seed=2)
    full = pt.pack_texts(tokenizer, texts, block_size=16)
    few = pt.pack_texts(tokenizer, texts, block_size=16, max_blocks=3)
    assert few.shape == (3, 16)
    assert torch.equal(few, full[:3])


def test_mlm_collator(tokenizer, blocks):
    batch = pt.MLMCollator(tokenizer, seed=0)(list(blocks[:8]))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (8, 16)
    assert (batch["attention_mask"] == 1).all()
    assert (batch["labels"][:, [0, -1]] == IGNORE_INDEX).all()  # [CLS] / [SEP] never predicted
    selected = batch["labels"] != IGNORE_INDEX
    assert selected.any()
    assert torch.equal(batch["labels"][selected], blocks[:8][selected])


def test_mlm_collator_is_reproducible_and_dynamic(tokenizer, blocks):
    first, second = pt.MLMCollator(tokenizer, seed=3), pt.MLMCollator(tokenizer, seed=3)
    a, b = first(list(blocks[:8])), second(list(blocks[:8]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    again = first(list(blocks[:8]))  # a second call masks afresh
    assert not torch.equal(again["labels"], a["labels"])


def test_mlm_loader_is_reproducible(tokenizer, blocks):
    def batches(seed):
        return list(pt.mlm_loader(blocks, tokenizer, batch_size=4, seed=seed))

    first, again, other = batches(0), batches(0), batches(1)
    assert len(first) == len(blocks) // 4  # drop_last
    assert first[0]["input_ids"].shape == (4, 16)
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(first, other, strict=True))


def test_fixed_mlm_batches_are_identical_across_calls(tokenizer, blocks):
    first = pt.fixed_mlm_batches(blocks, tokenizer, batch_size=7)
    again = pt.fixed_mlm_batches(blocks, tokenizer, batch_size=7)
    assert len(first) == math.ceil(len(blocks) / 7)
    assert sum(len(b["input_ids"]) for b in first) == len(blocks)
    for x, y in zip(first, again, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    other = pt.fixed_mlm_batches(blocks, tokenizer, batch_size=7, seed=1)
    assert not torch.equal(other[0]["labels"], first[0]["labels"])


def test_clm_collate_and_loader(blocks):
    batch = pt.clm_collate(list(blocks[:3]))
    assert torch.equal(batch["input_ids"], blocks[:3]) and torch.equal(batch["labels"], blocks[:3])
    assert (batch["attention_mask"] == 1).all()
    a = [b["input_ids"] for b in pt.clm_loader(blocks, batch_size=4, seed=0)]
    b = [b["input_ids"] for b in pt.clm_loader(blocks, batch_size=4, seed=0)]
    assert len(a) == len(blocks) // 4 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------- unigram baseline


def test_unigram_loss_by_hand():
    train = torch.tensor([1, 1, 2, 3, IGNORE_INDEX])
    targets = torch.tensor([[1, 2], [IGNORE_INDEX, IGNORE_INDEX]])
    # add-one counts over V = 4: [1, 3, 2, 2] / 8
    expected = -(math.log(3 / 8) + math.log(2 / 8)) / 2
    assert pt.unigram_loss(train, targets, vocab_size=4) == pytest.approx(expected, rel=1e-12)
    unsmoothed = -(math.log(2 / 4) + math.log(1 / 4)) / 2
    assert pt.unigram_loss(train, targets, 4, smoothing=0.0) == pytest.approx(unsmoothed, rel=1e-12)


def test_unigram_loss_is_the_entropy_on_its_own_data():
    train = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    entropy = -sum(p * math.log(p) for p in (4 / 8, 2 / 8, 1 / 8, 1 / 8))
    assert pt.unigram_loss(train, train, 4, smoothing=0.0) == pytest.approx(entropy, rel=1e-12)


def test_unigram_loss_uniform_is_log_vocab():
    train = torch.arange(50).repeat(3)
    assert pt.unigram_loss(train, torch.tensor([0, 7, 49]), 50, smoothing=0.0) == pytest.approx(math.log(50))
    skewed = torch.zeros(100, dtype=torch.long)  # huge smoothing drowns any counts
    assert pt.unigram_loss(skewed, torch.tensor([0, 3]), 50, smoothing=1e9) == pytest.approx(
        math.log(50), rel=1e-6)


# ---------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("model_name", ["bert", "sharp_bert"])
def test_pseudo_perplexity_matches_a_hand_loop(request, tokenizer, model_name):
    bert = request.getfixturevalue(model_name)
    text = "the market rose on monday."
    ppl = pt.pseudo_perplexity(bert, tokenizer, [text])
    assert math.isfinite(ppl) and ppl > 1

    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    log_probs = []
    with torch.no_grad():
        for i in range(1, len(ids) - 1):  # every position except [CLS] and [SEP]
            masked = ids.clone()
            masked[i] = MASK
            logits = bert(input_ids=masked.unsqueeze(0)).logits[0, i]
            log_probs.append(float(logits.log_softmax(-1)[ids[i]]))
    assert ppl == pytest.approx(math.exp(-sum(log_probs) / len(log_probs)), rel=1e-5)


def test_pseudo_perplexity_batching_does_not_matter(sharp_bert, tokenizer):
    texts = ["the market rose.", "a new film was released in london after talks on monday."]
    one_by_one = pt.pseudo_perplexity(sharp_bert, tokenizer, texts, batch_size=1)
    padded = pt.pseudo_perplexity(sharp_bert, tokenizer, texts, batch_size=64)  # with padding
    assert padded == pytest.approx(one_by_one, rel=1e-5)


def test_pseudo_perplexity_accepts_the_wrapper_and_restores_mode(bert, tokenizer):
    wrapped = pt.MaskedPositionsMLM(bert).train()
    ppl = pt.pseudo_perplexity(wrapped, tokenizer, ["the market rose."])
    assert wrapped.training  # put back in training mode
    bert.eval()
    assert ppl == pytest.approx(pt.pseudo_perplexity(bert, tokenizer, ["the market rose."]), rel=1e-5)


def test_fill_mask(bert, tokenizer):
    predictions = pt.fill_mask(bert, tokenizer, "the market [MASK] on monday.", top_k=4)
    assert len(predictions) == 4
    tokens = [token for token, _ in predictions]
    probs = [p for _, p in predictions]
    assert all(isinstance(t, str) for t in tokens) and len(set(tokens)) == 4
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 1e-3
    assert probs == sorted(probs, reverse=True)


# ---------------------------------------------------------------------------- sentence pairs


def test_split_sentences():
    text = "The market rose today. Did it? Yes! Shares fell sharply again!\nA new line starts here"
    assert pt.nsp_sentences(text) == ["The market rose today.", "Shares fell sharply again!",
                                        "A new line starts here"]


def consecutive_pairs(documents):
    pairs, owner = set(), {}
    for d, doc in enumerate(documents):
        sentences = pt.nsp_sentences(doc)
        pairs |= set(zip(sentences, sentences[1:], strict=False))
        owner.update({s: d for s in sentences})
    return pairs, owner


def test_nsp_pairs():
    documents = make_documents(6, 5)
    pairs = pt.nsp_pairs(documents, 400, seed=0)
    consecutive, owner = consecutive_pairs(documents)
    assert len(pairs) == 400
    labels = [label for _, _, label in pairs]
    assert set(labels) == {0, 1} and 0.4 < sum(labels) / len(labels) < 0.6
    for a, b, label in pairs:
        if label == 0:
            assert (a, b) in consecutive
        else:
            assert owner[a] != owner[b]  # "random": a sentence from another document


def test_sop_pairs():
    documents = make_documents(4, 5)
    pairs = pt.sop_pairs(documents, 400, seed=0)
    consecutive, owner = consecutive_pairs(documents)
    labels = [label for _, _, label in pairs]
    assert len(pairs) == 400 and 0.4 < sum(labels) / len(labels) < 0.6
    for a, b, label in pairs:
        assert owner[a] == owner[b]  # both from one document
        assert ((a, b) if label == 0 else (b, a)) in consecutive
    assert len(pt.sop_pairs(make_documents(1, 2), 5)) == 5  # SOP needs a single document


@pytest.mark.parametrize("make", [pt.nsp_pairs, pt.sop_pairs])
def test_sentence_pairs_are_deterministic(make):
    documents = make_documents(5, 4)
    assert make(documents, 50, seed=3) == make(documents, 50, seed=3)
    assert make(documents, 50, seed=3) != make(documents, 50, seed=4)


def test_nsp_pairs_on_news(bbc_small):
    pairs = pt.nsp_pairs(bbc_small.train_texts, 20, seed=0)
    assert len(pairs) == 20 and all(a and b for a, b, _ in pairs)


# ---------------------------------------------------------------------------- tiny models


def test_tiny_bert_ties_weights_and_counts_once(bert, tokenizer):
    from transformers import BertForMaskedLM

    assert isinstance(bert, BertForMaskedLM)
    decoder = bert.cls.predictions.decoder.weight
    assert decoder.data_ptr() == bert.bert.embeddings.word_embeddings.weight.data_ptr()
    assert bert.config.vocab_size == len(tokenizer) and bert.config.hidden_size == 32
    unique = {id(p): p.numel() for _, p in bert.named_parameters(remove_duplicate=False)}
    assert pt.count_parameters(bert) == sum(unique.values())
    with_duplicates = sum(p.numel() for _, p in bert.named_parameters(remove_duplicate=False))
    assert pt.count_parameters(bert) <= with_duplicates - decoder.numel()


def test_causal_lm_loss_equals_transformer_loss(tokenizer):
    """The decoder of notebook 02, which notebook 03 trains, computes the same shifted loss."""
    from llm_tutorial import transformer as tf

    torch.manual_seed(0)
    model = tf.Transformer(tf.TransformerConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2,
                                                max_positions=64)).eval()
    batch = pt.clm_collate(list(torch.randint(5, len(tokenizer), (3, 10), generator=torch.Generator().manual_seed(4))))
    with torch.no_grad():
        out = model(**batch)
    assert torch.allclose(pt.causal_lm_loss(out.logits, batch["input_ids"]), out.loss, atol=1e-5)
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert pt.count_parameters(model) == with_duplicates - model.lm_head.weight.numel()  # tied, counted once


def test_count_parameters_trainable_only():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))  # 15 + 8 parameters
    assert pt.count_parameters(model) == 23
    model[0].requires_grad_(False)
    assert pt.count_parameters(model, trainable_only=True) == 8
    assert pt.count_parameters(model) == 23


# ---------------------------------------------------------------------------- mistakes


def _mask(special, p=0.15):
    ids, _ = synthetic_batch(2, 10)
    return pt.mask_tokens(ids, special, VOCAB, MASK, mlm_probability=p)


BAD_CALLS = [  # (call(tokenizer, bert), error, message): each mistake is named
    *[(lambda tokenizer, bert, p=p: _mask(torch.zeros(2, 10, dtype=torch.bool), p), ValueError,
       rf"mlm_probability must be in \(0, 1\), got {p}") for p in (0.0, 1.0, -0.1, 1.5, float("nan"))],
    (lambda tokenizer, bert: _mask(torch.zeros(2, 9, dtype=torch.bool)), ValueError,
     r"special_tokens_mask \(2, 9\) != input_ids \(2, 10\)"),
    (lambda tokenizer, bert: _mask(torch.zeros(10, dtype=torch.bool)), ValueError,  # would broadcast
     r"special_tokens_mask \(10,\) != input_ids \(2, 10\)"),
    (lambda tokenizer, bert: pt.mlm_loss(torch.randn(2, 5, 7), torch.full((2, 5), IGNORE_INDEX)),
     ValueError, "no position is selected"),
    (lambda tokenizer, bert: pt.causal_lm_loss(torch.randn(2, 1, 7), torch.zeros(2, 1, dtype=torch.long)),
     ValueError, "no position is selected"),  # one token: nothing to predict
    (lambda tokenizer, bert: pt.MaskedPositionsMLM(nn.Linear(3, 3)), TypeError, "wraps a BertForMaskedLM"),
    (lambda tokenizer, bert: pt.MaskedPositionsMLM(bert.bert), TypeError,  # the encoder, no MLM head
     "wraps a BertForMaskedLM"),
    *[(lambda tokenizer, bert, texts=texts: pt.pack_texts(tokenizer, texts), ValueError,
       "texts must be a non-empty list of strings") for texts in ([], (), "one string is not a list")],
    (lambda tokenizer, bert: pt.pack_texts(tokenizer, ["the market rose."], block_size=64), ValueError,
     "fewer than one block of 62"),
    (lambda tokenizer, bert: pt.unigram_loss(torch.tensor([1, 2]), torch.tensor([IGNORE_INDEX]), 4),
     ValueError, "must contain tokens"),
    (lambda tokenizer, bert: pt.unigram_loss(torch.tensor([], dtype=torch.long), torch.tensor([1]), 4),
     ValueError, "must contain tokens"),
    *[(lambda tokenizer, bert, texts=texts: pt.pseudo_perplexity(bert, tokenizer, texts), ValueError,
       "texts must be a non-empty list of strings") for texts in ([], "the market rose.")],
    (lambda tokenizer, bert: pt.fill_mask(bert, tokenizer, "the market rose on monday."), ValueError,
     r"text must contain \[MASK\]"),
    (lambda tokenizer, bert: pt.nsp_pairs(make_documents(1, 5), 10), ValueError,
     "at least two documents"),
    (lambda tokenizer, bert: pt.nsp_pairs(make_documents(3, 1), 10), ValueError,  # one sentence each
     "at least two documents"),
]


@pytest.mark.parametrize("call, error, match", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_mistakes_are_named(tokenizer, bert, call, error, match):
    with pytest.raises(error, match=match):
        call(tokenizer, bert)


# ---------------------------------------------------------------------------- MiniLM (slow)


@pytest.mark.slow
def test_masked_positions_mlm_on_minilm(minilm_mlm):
    model, tokenizer = minilm_mlm
    blocks = pt.pack_texts(tokenizer, ["The bank raised interest rates again on Monday."] * 6,
                           block_size=16, max_blocks=2)
    batch = pt.MLMCollator(tokenizer, mlm_probability=0.3, seed=0)(list(blocks))
    with torch.no_grad():
        full = model(**batch).loss
        fast = pt.MaskedPositionsMLM(model)(**batch).loss
    assert torch.allclose(fast, full, atol=1e-5)
    predictions = pt.fill_mask(model, tokenizer, "the bank raised interest [MASK] again.", top_k=3)
    assert len(predictions) == 3
