"""Tests for `llm_tutorial.multimodal` (notebook 09): the balanced task, encoders, fusion, CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from llm_tutorial import assets
from llm_tutorial import multimodal as mm


@pytest.fixture(scope="module")
def data() -> mm.DigitData:
    return mm.load_digit_data()


@pytest.fixture(scope="module")
def bank() -> list[mm.Question]:
    return mm.question_bank()


def one_hot_features(data: mm.DigitData, bank) -> tuple[mm.ImageFeatures, mm.TextFeatures]:
    """Ideal encoders: the digit and the question as one-hot vectors (2 'patches', 3 'tokens')."""
    digits = F.one_hot(data.digits, 10).float()
    questions = F.one_hot(torch.arange(len(bank)), len(bank)).float()
    image = mm.ImageFeatures(digits[:, None].repeat(1, 2, 1), digits)
    tokens = questions[:, None].repeat(1, 3, 1)
    return image, mm.TextFeatures(tokens, torch.ones(len(bank), 3, dtype=torch.bool), questions)


# ============================================================================ the task


def test_question_bank_pairs_every_question_with_its_negation(bank):
    assert len(bank) == 82
    assert len({q.text for q in bank}) == len(bank)
    for question, negation in zip(bank[0::2], bank[1::2], strict=True):
        assert question.family == negation.family
        assert question.yes | negation.yes == frozenset(range(10))
        assert not question.yes & negation.yes
        assert 0 < len(question.yes) < 10


@pytest.mark.parametrize(("text", "digit", "answer"), [
    ("Is the digit greater than 6?", 7, 1), ("Is the digit greater than 6?", 6, 0),
    ("Is this digit plus 3 greater than 9?", 7, 1), ("Is this digit plus 3 greater than 9?", 6, 0),
    ("Does it have the same parity as five?", 3, 1), ("Is the digit a prime number?", 9, 0),
    ("Is it any digit but 4?", 4, 0), ("Is the digit at least four?", 4, 1),
    ("Is it an eight?", 8, 1), ("Is it a seven?", 8, 0),
])
def test_questions_answer_by_their_meaning(bank, text, digit, answer):
    assert next(q for q in bank if q.text == text).answer(digit) == answer


def test_naive_questions():
    naive = mm.naive_questions()
    assert [len(q.yes) for q in naive] == list(range(9, 0, -1))


def test_digit_split(data):
    assert data.images.shape == (1797, 8, 8) and data.images.max() == 16
    assert len(data.train_idx) == 1437 and len(data.test_idx) == 360
    assert not set(data.train_idx.tolist()) & set(data.test_idx.tolist())
    assert torch.bincount(data.digits[data.test_idx]).min() >= 35  # stratified
    again = mm.load_digit_data()
    assert torch.equal(again.test_idx, data.test_idx)
    assert not torch.equal(mm.load_digit_data(seed=1).test_idx, data.test_idx)


def test_balanced_sampling_makes_each_modality_useless(data, bank):
    vqa = mm.make_vqa(data.digits, data.train_idx, bank, 60_000, seed=0)
    digits = data.digits[vqa.image_idx]
    assert all(bank[q].answer(d) == a for q, d, a in
               zip(vqa.question_idx.tolist(), digits.tolist(), vqa.answers.tolist(), strict=True))
    assert set(vqa.image_idx.tolist()) <= set(data.train_idx.tolist())
    for q in range(len(bank)):  # P(yes | question) = 1/2
        assert abs(vqa.answers[vqa.question_idx == q].float().mean() - 0.5) < 0.08
    for d in range(10):  # P(yes | digit) = 1/2
        assert abs(vqa.answers[digits == d].float().mean() - 0.5) < 0.03
    ceilings = mm.modality_ceilings(vqa, data.digits)
    assert ceilings["digit only"] < 0.52 and ceilings["question only"] < 0.53


def test_naive_sampling_leaks(data):
    naive = mm.naive_questions()
    vqa = mm.make_vqa(data.digits, data.test_idx, naive, 5_000, seed=0, balanced=False)
    digits = data.digits[vqa.image_idx].tolist()
    assert all(naive[q].answer(d) == a for q, d, a in
               zip(vqa.question_idx.tolist(), digits, vqa.answers.tolist(), strict=True))
    ceilings = mm.modality_ceilings(vqa, data.digits)
    assert ceilings["digit only"] > 0.7 and ceilings["question only"] > 0.7


def test_make_vqa_is_reproducible(data, bank):
    a = mm.make_vqa(data.digits, data.test_idx, bank, 100, seed=3)
    b = mm.make_vqa(data.digits, data.test_idx, bank, 100, seed=3)
    c = mm.make_vqa(data.digits, data.test_idx, bank, 100, seed=4)
    assert torch.equal(a.image_idx, b.image_idx) and torch.equal(a.answers, b.answers)
    assert not torch.equal(a.image_idx, c.image_idx)


def test_modality_ceilings_by_hand():
    digits = torch.tensor([0, 1, 2])
    vqa = mm.VQAData(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 0, 0]), torch.tensor([1, 0, 1, 0]))
    # question 0: yes, yes, no -> 2 of 3; question 1: no -> 1; digit 0: yes, no -> 1; digits 1, 2: 1 each
    assert mm.modality_ceilings(vqa, digits) == {"question only": 0.75, "digit only": 0.75,
                                                 "majority answer": 0.5}


def test_vqa_data_and_batches(data, bank):
    vqa = mm.make_vqa(data.digits, data.test_idx, bank, 50, seed=0)
    batches = vqa.batches(16, seed=0)
    assert len(batches) == 4
    first, second = list(batches), list(batches)
    assert [len(b["labels"]) for b in first] == [16, 16, 16, 2]
    rows = lambda epoch: sorted(zip(*(torch.cat([b[k] for b in epoch]).tolist()  # noqa: E731
                                      for k in ("image_idx", "question_idx", "labels")), strict=True))
    assert rows(first) == rows(second)  # every sample once per pass
    assert not torch.equal(first[0]["image_idx"], second[0]["image_idx"])  # reshuffled
    assert torch.equal(first[0]["image_idx"], next(iter(vqa.batches(16, seed=0)))["image_idx"])
    frame = vqa.frame(bank, data.digits)
    assert list(frame.columns) == ["digit", "question", "family", "answer"] and len(frame) == 50


# ============================================================================ encoders


def test_check_digit_images():
    assert mm.check_digit_images(torch.zeros(2, 8, 8)).shape == (2, 1, 8, 8)
    assert mm.check_digit_images(torch.zeros(2, 1, 8, 8, dtype=torch.long)).dtype == torch.float32
    assert torch.equal(mm.check_digit_images(torch.full((1, 8, 8), 16)), torch.full((1, 1, 8, 8), 16.0))


def test_digit_cnn_shapes_and_loss():
    torch.manual_seed(0)
    cnn = mm.DigitCNN()
    patches, vector = cnn.encode(torch.rand(3, 8, 8) * 16)
    assert patches.shape == (3, 16, 64) and vector.shape == (3, 128)
    out = cnn(torch.rand(3, 8, 8) * 16, torch.tensor([1, 2, 3]))
    assert out["logits"].shape == (3, 10) and out["loss"].ndim == 0


def test_random_shift_moves_by_at_most_one_pixel():
    images = torch.zeros(50, 8, 8)
    images[:, 3:5, 3:5] = 16  # a 2x2 blob in the middle: no shift can push it off the canvas
    shifted = mm.random_shift(images, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.sum((1, 2)), images.sum((1, 2)))
    rows, cols = torch.nonzero(shifted[:, :, :].amax(2) > 0), torch.nonzero(shifted.amax(1) > 0)
    assert rows[:, 1].min() >= 2 and rows[:, 1].max() <= 5 and cols[:, 1].min() >= 2
    assert len({tuple(torch.nonzero(s)[0].tolist()) for s in shifted}) == 9  # all 9 offsets occur
    again = mm.random_shift(images, torch.Generator().manual_seed(0))
    assert torch.equal(shifted, again)


def test_train_digit_cnn_learns(data):
    cnn, accuracy = mm.train_digit_cnn(data, steps=60, batch_size=64)
    assert accuracy > 0.75
    assert not cnn.training and not any(p.requires_grad for p in cnn.parameters())


def test_encode_images_in_batches_equals_one_pass(data):
    torch.manual_seed(0)
    cnn = mm.DigitCNN().eval()
    images = data.images[:37]
    feats = mm.encode_images(cnn, images, batch_size=10)
    patches, vectors = cnn.encode(images)
    assert torch.allclose(feats.patches, patches, atol=1e-6)
    assert torch.allclose(feats.vectors, vectors, atol=1e-6)


@pytest.fixture(scope="module")
def efficientnet():
    try:
        return assets.load_efficientnet_lite0()
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))


def test_efficientnet_digit_encoder(efficientnet, data):
    encoder = mm.EfficientNetDigitEncoder(efficientnet, size=64)
    patches, vector = encoder.encode(data.images[:2])
    assert patches.shape == (2, 4, 1280) and vector.shape == (2, 1280)
    assert torch.allclose(vector, patches.mean(1))
    assert not any(p.requires_grad for p in encoder.parameters())


def test_efficientnet_recognises_real_photos(efficientnet):
    photos = assets.load_sample_photos()
    names = assets.load_imagenet_classes()
    probs, top = mm.imagenet_top_k(efficientnet, [photos["coffee"], photos["cat"]], names, k=3)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    assert top[0][0][0] == "espresso"
    assert {"tabby", "tiger cat", "Egyptian cat"} & {name for name, _ in top[1]}


def test_tiny_text_encoder():
    tiny = mm.TinyTextEncoder(["Is the digit odd?", "Is it a seven?"], dim=16, max_length=6)
    assert set(tiny.vocab) == {"[PAD]", "[UNK]", "is", "the", "digit", "odd", "?", "it", "a", "seven"}
    ids, mask = tiny.tokenize(["Is it purple?", "is the digit odd or even or seven ?"])
    assert ids[0, 2].item() == 1  # unknown word
    assert mask.sum(1).tolist() == [4, 6]  # the second question is cut at max_length
    tokens, vector = tiny(ids, mask)
    assert tokens.shape == (2, 6, 16) and vector.shape == (2, 16)


def test_tiny_text_encoder_ignores_padding():
    torch.manual_seed(0)
    tiny = mm.TinyTextEncoder(["Is the digit odd?"], dim=16, max_length=8)
    ids, mask = tiny.tokenize(["Is the digit odd?"])
    _, vector = tiny(ids, mask)
    _, again = tiny(ids[:, :5], mask[:, :5])  # the same question with less padding
    assert torch.allclose(vector, again, atol=1e-5)


@pytest.mark.slow
def test_minilm_question_features():
    encoder, tokenizer = assets.load_minilm()
    feats = mm.encode_questions_minilm(encoder, tokenizer, ["Is the digit odd?", "Is it a seven?"],
                                       max_length=12)
    assert feats.tokens.shape == (2, 12, 384) and feats.vectors.shape == (2, 384)
    assert feats.mask.dtype == torch.bool and feats.mask[0].sum() == 7  # [CLS] is the digit odd ? [SEP]
    real = feats.tokens[0][feats.mask[0]].mean(0)
    assert torch.allclose(feats.vectors[0], real, atol=1e-5)
    with pytest.raises(ValueError, match=r"questions\[0\] is empty"):
        mm.encode_questions_minilm(encoder, tokenizer, [""])


# ============================================================================ fusion


def random_inputs(batch=5, patches=4, patch_dim=6, image_dim=7, tokens=3, token_dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[0, -1] = False
    return (torch.randn(batch, patches, patch_dim, generator=g), torch.randn(batch, image_dim, generator=g),
            torch.randn(batch, tokens, token_dim, generator=g), mask,
            torch.randn(batch, token_dim, generator=g))


def make_head(strategy, **kwargs):
    torch.manual_seed(0)
    options = dict(patch_dim=6, image_dim=7, token_dim=8, text_dim=8, n_patches=4, hidden=16)
    return mm.fusion_head(strategy, **{**options, **kwargs})


@pytest.mark.parametrize("strategy", mm.STRATEGIES)
def test_every_strategy_gives_two_logits(strategy):
    assert make_head(strategy)(*random_inputs()).shape == (5, 2)


def test_unimodal_heads_ignore_the_other_modality():
    patches, vector, tokens, mask, text = random_inputs()
    image_only, text_only = make_head("image_only"), make_head("text_only")
    other = random_inputs(seed=1)
    assert torch.equal(image_only(patches, vector, tokens, mask, text),
                       image_only(patches, vector, other[2], other[3], other[4]))
    assert torch.equal(text_only(patches, vector, tokens, mask, text),
                       text_only(other[0], other[1], tokens, mask, text))


def test_late_fusion_is_additive():
    """f(image) + g(question): swapping questions between two images changes nothing in sum,
    which is why late fusion cannot answer "yes for this image under q, no under not-q"."""
    head = make_head("late")
    patches, vector, tokens, mask, text = random_inputs(batch=2)
    same = head(patches, vector, tokens, mask, text).sum(0)
    swapped = head(patches, vector, tokens.flip(0), mask.flip(0), text.flip(0)).sum(0)
    assert torch.allclose(same, swapped, atol=1e-6)
    concat = make_head("concat")
    assert not torch.allclose(concat(patches, vector, tokens, mask, text).sum(0),
                              concat(patches, vector, tokens.flip(0), mask.flip(0), text.flip(0)).sum(0))


def test_cross_attention_weights():
    head = make_head("cross_attention")
    head(*random_inputs())
    weights = head.last_attention
    assert weights.shape == (5, 3, 1 + 4)  # tokens x (summary + patches)
    assert torch.allclose(weights.sum(-1), torch.ones(5, 3), atol=1e-5)


def test_one_class_per_strategy_in_the_registry():
    assert tuple(mm.FUSIONS) == mm.STRATEGIES
    for name, cls in mm.FUSIONS.items():
        head = make_head(name)
        assert type(head) is cls and isinstance(head, mm.FusionHead) and head.strategy == name


def vqa_model(data, bank, strategy="concat") -> mm.VQAModel:
    image, text = one_hot_features(data, bank)
    return mm.VQAModel(strategy, image, text, [q.text for q in bank])


def test_vqa_model_prob_yes(data, bank):
    model = vqa_model(data, bank)
    p = model.prob_yes([0, 1], [0, 1])
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()
    assert torch.equal(p, model.prob_yes(torch.tensor([0, 1]), torch.tensor([0, 1])))
    assert model.training  # prob_yes restores the mode


def test_frozen_text_is_not_trained_and_tiny_text_is(data, bank):
    image, text = one_hot_features(data, bank)
    questions = [q.text for q in bank]
    frozen = mm.VQAModel("concat", image, text, questions)
    tiny = mm.VQAModel("concat", image, mm.TinyTextEncoder(questions, dim=16), questions)
    head_params = sum(p.numel() for p in frozen.head.parameters())
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == head_params
    tiny_params = sum(p.numel() for p in tiny.text_encoder.parameters())
    assert sum(p.numel() for p in tiny.parameters()) == tiny_params + sum(
        p.numel() for p in tiny.head.parameters())


def test_fusion_learns_what_late_fusion_cannot(data, bank):
    """With perfect one-hot encoders, concatenation learns the balanced task and late fusion
    (additive) stays at chance."""
    image, text = one_hot_features(data, bank)
    train = mm.make_vqa(data.digits, data.train_idx, bank, 6_000, seed=0)
    test = mm.make_vqa(data.digits, data.test_idx, bank, 2_000, seed=1)
    results, models = mm.fusion_study({"one-hot": image}, {"one-hot": text}, bank, train, test,
                                      strategies=("concat", "late"), steps=150, lr=1e-2)
    accuracy = dict(zip(results["strategy"], results["accuracy"], strict=True))
    assert accuracy["concat"] > 0.95
    assert accuracy["late"] < 0.6
    assert set(models) == {("concat", "one-hot", "one-hot"), ("late", "one-hot", "one-hot")}
    assert not models[("concat", "one-hot", "one-hot")].training


def test_fusion_study_seeds_and_fresh_tiny_encoders(data, bank):
    image, _ = one_hot_features(data, bank)
    questions = [q.text for q in bank]
    train = mm.make_vqa(data.digits, data.train_idx, bank, 512, seed=0)
    test = mm.make_vqa(data.digits, data.test_idx, bank, 256, seed=1)
    made = []

    def factory():
        made.append(mm.TinyTextEncoder(questions, dim=8))
        return made[-1]

    results, models = mm.fusion_study({"one-hot": image}, {"tiny": factory}, bank, train, test,
                                      strategies=("text_only",), steps=3, seeds=(0, 1))
    assert len(results) == 2 and list(results["seed"]) == [0, 1] and len(made) == 2
    assert models[("text_only", "one-hot", "tiny")].text_encoder is made[0]
    table = mm.summarise_fusion(results)
    assert len(table) == 1 and table["seeds"].item() == 2
    assert table["accuracy"].item() == pytest.approx(results["accuracy"].mean())
    assert table["std"].item() == pytest.approx(results["accuracy"].std())


def test_attention_map(data, bank):
    image, text = one_hot_features(data, bank)
    questions = [q.text for q in bank]
    model = mm.VQAModel("cross_attention", image, text, questions, hidden=16)
    weights = mm.attention_map(model, 0, 5)
    assert weights.shape == (3, 1 + 2)
    assert torch.allclose(weights.sum(-1), torch.ones(3), atol=1e-5)
    tiny = mm.TinyTextEncoder(questions, dim=16)
    model = mm.VQAModel("cross_attention", image, tiny, questions, hidden=16)
    assert len(mm.attention_map(model, 0, 0)) == len(tiny.tokenize([questions[0]])[1][0].nonzero())


# ============================================================================ alignment


def test_place_on_canvas():
    images = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8) / 4
    for position in range(4):
        canvas = mm.place_on_canvas(images, torch.tensor([position]))[0]
        r, c = divmod(position, 2)
        assert torch.equal(canvas[8 * r:8 * r + 8, 8 * c:8 * c + 8], images[0])
        assert canvas.sum() == images.sum()


def test_make_captions(data):
    pairs = mm.make_captions(data, data.test_idx, 200, seed=0)
    assert pairs.canvases.shape == (200, 16, 16)
    for text, d, p in zip(pairs.captions, pairs.digits.tolist(), pairs.positions.tolist(), strict=True):
        assert (mm.DIGIT_WORDS[d] in text.split() or str(d) in text) and mm.POSITIONS[p] in text
    assert torch.equal(pairs.classes, pairs.digits * 4 + pairs.positions)
    assert mm.caption(mm.TRAIN_CAPTIONS[3], 8, 1) == "an eight written in the top right corner"
    assert mm.caption(mm.TRAIN_CAPTIONS[1], 7, 2) == "the digit 7, bottom left"
    assert mm.make_captions(data, data.test_idx, 200, seed=0).captions == pairs.captions


def clip_form(images, texts, tau):
    scores = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T / tau
    targets = torch.arange(len(scores))
    return (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets)) / 2


def test_info_nce_matches_clip_and_is_symmetric():
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = mm.info_nce(images, texts, 0.1)
    assert torch.allclose(loss, clip_form(images, texts, 0.1))
    assert torch.allclose(loss, mm.info_nce(texts, images, 0.1))
    assert torch.allclose(loss, mm.info_nce(images, texts, 0.1, classes=torch.arange(6)))
    aligned = mm.info_nce(images, images * 3, 0.01)
    assert aligned < 1e-3


def test_info_nce_multi_positive():
    """Every same-class pair is a positive: which caption of the class sits next to which image
    no longer matters (CLIP's form would push the class's other captions away)."""
    g = torch.Generator().manual_seed(0)
    images, texts = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    classes = torch.tensor([0, 0, 1, 1])
    swapped = texts[[1, 0, 2, 3]]  # exchange the two captions of class 0
    multi = mm.info_nce(images, texts, 0.1, classes)
    assert torch.allclose(multi, mm.info_nce(images, swapped, 0.1, classes), atol=1e-6)
    assert not torch.allclose(mm.info_nce(images, texts, 0.1), mm.info_nce(images, swapped, 0.1))
    same = texts[[0, 0, 2, 2]]  # identical captions within a class, images equal to them
    assert mm.info_nce(same * 5, same, 0.01, classes) == pytest.approx(np.log(2), abs=1e-4)


def test_clip_model_temperature():
    learned, fixed = mm.ClipModel(temperature=None), mm.ClipModel(temperature=0.5)
    assert learned.temperature == pytest.approx(0.07)
    assert learned.log_scale.requires_grad and not fixed.log_scale.requires_grad
    assert fixed.temperature == pytest.approx(0.5)
    assert "log_scale" not in dict(fixed.named_parameters())


def test_train_clip_aligns(data):
    """Text vectors that are one-hot (digit, corner) classes: a short run retrieves well."""
    train = mm.make_captions(data, data.train_idx, 2_000, seed=0)
    test = mm.make_captions(data, data.test_idx, 800, seed=1)
    vectors = F.one_hot(train.classes, 40).float()
    model, history = mm.train_clip(train, vectors, steps=80, batch_size=64, lr=3e-3)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] - 1
    recall = mm.retrieval_recall(model, test, torch.eye(40), galleries=3)
    assert recall["image→text R@5"] >= recall["image→text R@1"] > 0.3  # chance 0.025
    assert recall["text→image R@1"] > 0.3
    accuracy, pred = mm.zero_shot_accuracy(model, test.canvases, test.classes, torch.eye(40))
    assert accuracy == pytest.approx(recall["image→text R@1"]) and pred.shape == (800,)


# ============================================================================ photographs


def test_imagenet_preprocess():
    photo = Image.fromarray(np.full((300, 500, 3), 255, dtype=np.uint8))
    x = mm.imagenet_preprocess(photo)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x, torch.full_like(x, (1 - 0.498) / 0.502), atol=1e-5)
    assert mm.imagenet_preprocess(np.zeros((100, 80, 3), dtype=np.uint8), size=64).shape == (3, 64, 64)


def test_imagenet_top_k_with_a_stand_in_network():
    torch.manual_seed(0)
    network = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    photos = [np.zeros((50, 60, 3), dtype=np.uint8), np.full((50, 60, 3), 200, dtype=np.uint8)]
    names = [f"class {i}" for i in range(1000)]
    probs, top = mm.imagenet_top_k(network, photos, names, k=4)
    assert probs.shape == (2, 1000) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    for row, guesses in zip(probs, top, strict=True):
        assert [p for _, p in guesses] == sorted((p for _, p in guesses), reverse=True)
        assert guesses[0] == (names[int(row.argmax())], pytest.approx(float(row.max())))


def test_conse_embeddings_and_ranking():
    class_vectors = torch.eye(4, 3)[[0, 1, 2, 0]] + 0.01
    probs = torch.tensor([[0.7, 0.2, 0.05, 0.05], [0.1, 0.1, 0.8, 0.0]])
    one = mm.conse_embeddings(probs, class_vectors, top_k=1)
    assert torch.allclose(one, F.normalize(class_vectors[[0, 2]], dim=-1))
    two = mm.conse_embeddings(probs, class_vectors, top_k=2)
    want = F.normalize(0.7 / 0.9 * class_vectors[0] + 0.2 / 0.9 * class_vectors[1], dim=-1)
    assert torch.allclose(two[0], want, atol=1e-6)
    ranks = mm.rank_captions(one, class_vectors[:3])
    assert ranks[:, 0].tolist() == [0, 2]


# ============================================================================ bad calls


def _idx(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


def _captions(data, n=50):
    return mm.make_captions(data, data.train_idx, n, seed=0)


# (call(data, bank), error, message pattern): each mistake is refused with a message naming the fix
BAD_CALLS = [
    pytest.param(lambda d, b: mm.VQAData(_idx(3), _idx(2), _idx(3)), ValueError, "same length",
                 id="vqa-data-lengths"),
    *[pytest.param(lambda d, b, shape=shape: mm.check_digit_images(torch.zeros(shape)), ValueError,
                   r"images must have shape \(batch, 8, 8\) or \(batch, 1, 8, 8\) with one channel",
                   id=f"image-shape-{shape}")
      for shape in [(2, 28, 28), (2, 3, 8, 8), (0, 8, 8), (8, 8)]],
    *[pytest.param(lambda d, b, v=v: mm.check_digit_images(torch.full((1, 8, 8), v)), ValueError,
                   r"images must hold grey levels in \[0, 16\] like sklearn's digits", id=f"grey-{v}")
      for v in (255.0, -1.0, float("nan"))],
    pytest.param(lambda d, b: mm.train_digit_cnn(d, batch_size=5000), ValueError,
                 r"batch_size must be in \[1, 1437\]", id="cnn-batch-larger-than-data"),
    pytest.param(lambda d, b: mm.TinyTextEncoder(["Is it odd?"]).tokenize(["Is it odd?", " "]),
                 ValueError, r"questions\[1\] is empty or blank", id="blank-question"),
    pytest.param(lambda d, b: mm.TinyTextEncoder(["Is it odd?"]).tokenize(["!!!"]), ValueError,
                 r"questions\[0\] has no words", id="question-without-words"),
    pytest.param(lambda d, b: make_head("sum"), ValueError,
                 "unknown strategy 'sum'; choose one of image_only", id="unknown-strategy"),
    pytest.param(lambda d, b: mm.VQAModel("concat", *one_hot_features(d, b), [q.text for q in b][:3]),
                 ValueError, "text features for 82 questions, but 3 questions", id="text-features-length"),
    pytest.param(lambda d, b: mm.VQAModel("concat", one_hot_features(d, b)[0], "minilm",
                                          [q.text for q in b]),
                 TypeError, "TextFeatures .* or a TinyTextEncoder", id="text-encoder-name"),
    pytest.param(lambda d, b: vqa_model(d, b).prob_yes([0, 1], [0, 1, 2]), ValueError,
                 "got 2 images and 3 questions: pass one question per image", id="prob-yes-lengths"),
    pytest.param(lambda d, b: vqa_model(d, b)(torch.tensor([0, 1]), torch.tensor([0])), ValueError,
                 "got 2 images and 1 questions", id="forward-lengths"),
    pytest.param(lambda d, b: mm.vqa_accuracy(vqa_model(d, b), mm.VQAData(_idx(0), _idx(0), _idx(0))),
                 ValueError, "data is empty", id="vqa-accuracy-empty"),
    pytest.param(lambda d, b: mm.attention_map(vqa_model(d, b), 0, 0), ValueError,
                 "need a cross_attention model, got 'concat'", id="attention-map-head"),
    pytest.param(lambda d, b: mm.place_on_canvas(torch.zeros(1, 8, 8), torch.tensor([0, 1])),
                 ValueError, r"one position in \[0, 4\) per image", id="canvas-positions-length"),
    pytest.param(lambda d, b: mm.place_on_canvas(torch.zeros(1, 8, 8), torch.tensor([4])),
                 ValueError, r"one position in \[0, 4\) per image", id="canvas-position-range"),
    pytest.param(lambda d, b: mm.info_nce(torch.randn(3, 4), torch.randn(2, 4), 0.1), ValueError,
                 "same shape", id="info-nce-shapes"),
    pytest.param(lambda d, b: mm.info_nce(torch.randn(3, 4), torch.randn(3, 4), 0.0), ValueError,
                 "temperature must be > 0", id="info-nce-temperature"),
    pytest.param(lambda d, b: mm.ClipModel(temperature=0), ValueError,
                 "temperature must be > 0 or None", id="clip-temperature"),
    pytest.param(lambda d, b: mm.ClipModel()(torch.zeros(3, 16, 16), torch.zeros(2, 384)), ValueError,
                 "got 3 images and 2 captions: a batch needs one caption per image", id="clip-lengths"),
    pytest.param(lambda d, b: mm.train_clip(_captions(d), torch.zeros(3, 40)), ValueError,
                 "caption_vectors has 3 rows for 50 captions", id="clip-caption-vectors"),
    pytest.param(lambda d, b: mm.train_clip(_captions(d), torch.zeros(50, 40), batch_size=1),
                 ValueError, "batch needs negatives", id="clip-batch-of-one"),
    pytest.param(lambda d, b: mm.train_clip(_captions(d), torch.zeros(50, 40), batch_size=5000),
                 ValueError, r"batch_size must be in \[1, 50\]", id="clip-batch-larger-than-data"),
    pytest.param(lambda d, b: mm.retrieval_recall(mm.ClipModel(text_dim=10), _captions(d), torch.eye(10)),
                 ValueError, "needs 40 rows", id="retrieval-class-vectors"),
    pytest.param(lambda d, b: mm.zero_shot_accuracy(mm.ClipModel(text_dim=40), torch.zeros(4, 16, 16),
                                                    _idx(3), torch.eye(40)),
                 ValueError, "got 4 images and 3 labels", id="zero-shot-lengths"),
    pytest.param(lambda d, b: mm.imagenet_top_k(nn.Identity(), [], [f"c{i}" for i in range(10)]),
                 ValueError, "1,000 ImageNet class names", id="imagenet-class-names"),
    pytest.param(lambda d, b: mm.conse_embeddings(torch.rand(2, 3), torch.eye(4, 3)), ValueError,
                 r"probs must be \(n, 4\)", id="conse-probs-shape"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_CALLS)
def test_bad_calls_are_refused_with_a_fix(data, bank, call, error, match):
    with pytest.raises(error, match=match):
        call(data, bank)
