"""Tests for `llm_tutorial.transformer`: each piece against PyTorch or transformers, the whole
model against `LlamaForCausalLM` (tiny and random, then SmolLM2), caching, loss and generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llm_tutorial import assets
from llm_tutorial import transformer as tr
from llm_tutorial.trainer import TrainConfig, train

# ---------------------------------------------------------------------------- helpers


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tiny_config(**overrides):
    shape = dict(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_positions=64)
    return tr.TransformerConfig(**{**shape, **overrides})


def sharpen(model, std=0.3, seed=0):
    """Large random weights: logits far apart, so greedy decoding has no near-ties and
    positional or masking mistakes change the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("norm.weight"):
                parameter.normal_(0.0, std, generator=g)
    return model.eval()


def hf_llama(config: tr.TransformerConfig, attn="eager", seed=0):
    """A random `LlamaForCausalLM` with `config`'s shape (rope theta, eps, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
        intermediate_size=config.hidden_dim, max_position_embeddings=config.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        rms_norm_eps=config.norm_eps, tie_word_embeddings=True, attn_implementation=attn,
        bos_token_id=None, eos_token_id=None, pad_token_id=0))
    hf.loss_type = "ForCausalLM"
    return sharpen(hf, std=0.1, seed=seed)


LEFT_PADDED = torch.tensor([[0, 0, 0, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19]])
LEFT_MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])


def positions_from(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------- attention


def test_attention_matches_sdpa_causal():
    q, k, v = randn(2, 3, 6, 8, seed=1), randn(2, 3, 6, 8, seed=2), randn(2, 3, 6, 8, seed=3)
    out, weights = tr.attention(q, k, v, tr.causal_mask(6))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6))
    assert weights[..., 0, 1:].abs().max() == 0 and weights[..., -1, :].min() > 0  # causal


def test_attention_matches_sdpa_with_a_mask_boolean_or_additive():
    q, k, v = randn(2, 4, 5, 16, seed=4), randn(2, 4, 7, 16, seed=5), randn(2, 4, 7, 16, seed=6)
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(7)) > 0.4
    mask[..., 0] = True  # every query sees at least one key
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out, _ = tr.attention(q, k, v, mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(tr.attention(q, k, v, additive)[0], expected, atol=1e-6, rtol=0)
    assert (tr.attention(q, k, v)[0] - expected).abs().max() > 1e-2  # the mask matters


def test_causal_mask_with_cached_tokens():
    assert tr.causal_mask(3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # two new queries at positions 3 and 4 see the three cached keys and what precedes them
    assert tr.causal_mask(2, past=3).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


# ---------------------------------------------------------------------------- RMSNorm


def test_rms_norm_matches_torch_and_llama():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = randn(3, 5, 16, seed=8) * 4 + 1
    ours, reference, llama = tr.RMSNorm(16, eps=1e-5), nn.RMSNorm(16, eps=1e-5), LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        for norm in (ours, reference, llama):
            norm.weight.copy_(randn(16, seed=9))
    torch.testing.assert_close(ours(x), reference(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours(x), llama(x), atol=0, rtol=0)
    assert (ours(x) - F.layer_norm(x, (16,), ours.weight)).abs().max() > 1e-2  # no mean subtraction


# ---------------------------------------------------------------------------- RoPE


def test_rotate_pair_is_a_rotation_and_rope_applies_it():
    torch.testing.assert_close(tr.rotate_pair(torch.tensor([1.0, 0.0]), math.pi / 2),
                               torch.tensor([0.0, 1.0]), atol=1e-7, rtol=0)
    # a head of width 2 is one pair turning by one radian per position (theta_0 = 1)
    cos, sin = tr.rope_frequencies(2, 8)
    x = randn(1, 1, 8, 2, seed=10)
    expected = torch.stack([tr.rotate_pair(x[0, 0, m], float(m)) for m in range(8)])
    torch.testing.assert_close(tr.apply_rope(x, cos, sin)[0, 0], expected, atol=1e-6, rtol=0)


def test_rope_scores_depend_only_on_the_offset():
    cos, sin = tr.rope_frequencies(64, 200, theta=10000.0)
    q, k = randn(1, 1, 1, 64, seed=11), randn(1, 1, 1, 64, seed=12)

    def score(m, n):
        return (tr.apply_rope(q, cos, sin, m) * tr.apply_rope(k, cos, sin, n)).sum().item()

    for m, n, shift in [(5, 2, 30), (17, 17, 100), (3, 40, 120)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-2  # ... but it does depend on the offset


def test_rope_matches_transformers_rotate_half():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64 * 3, num_attention_heads=3, max_position_embeddings=128,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    q, k = randn(2, 3, 6, 64, seed=13), randn(2, 3, 6, 64, seed=14)
    positions = torch.tensor([[0, 0, 0, 1, 2, 3], [40, 41, 42, 43, 44, 45]])  # left padding; an offset
    hf_cos, hf_sin = LlamaRotaryEmbedding(config)(q, positions)
    hf_q, hf_k = apply_rotary_pos_emb(q, k, hf_cos, hf_sin)
    cos, sin = tr.rope_frequencies(64, 128, theta=100000.0)
    torch.testing.assert_close(tr.apply_rope(q, cos, sin, positions), hf_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.apply_rope(k, cos, sin, positions), hf_k, atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.apply_rope(q[1:], cos, sin, 40), hf_q[1:], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- attention module


def test_attention_with_as_many_kv_heads_as_heads_is_plain_multi_head_attention():
    config = tiny_config(n_kv_heads=4)
    ours = sharpen(tr.Attention(config, layer=0), std=0.2)
    mha = nn.MultiheadAttention(32, 4, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.out_proj.weight.copy_(ours.o_proj.weight)
    x = randn(2, 7, 32, seed=15)
    cos, sin = tr.rope_frequencies(8, 16)
    no_rotation = torch.zeros(7, dtype=torch.long)  # position 0 everywhere: RoPE is the identity
    expected, _ = mha(x, x, x, attn_mask=~tr.causal_mask(7), need_weights=False)
    torch.testing.assert_close(ours(x, cos, sin, no_rotation, tr.causal_mask(7)), expected,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_grouped_query_attention_equals_mha_with_shared_kv_heads(use_sdpa):
    """Query heads 0,1 read kv head 0 and heads 2,3 kv head 1: an MHA layer whose k/v weights
    repeat each kv head for its group computes the same thing."""
    gqa = sharpen(tr.Attention(tiny_config(use_sdpa=use_sdpa), layer=0), std=0.2)
    mha = tr.Attention(tiny_config(n_kv_heads=4), layer=0)
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("k_proj", "v_proj"):
            heads = getattr(gqa, name).weight.view(2, 8, 32)  # (kv heads, head_dim, dim)
            getattr(mha, name).weight.copy_(heads.repeat_interleave(2, dim=0).reshape(32, 32))
    x = randn(2, 7, 32, seed=16)
    cos, sin = tr.rope_frequencies(8, 16)
    args = (cos, sin, torch.arange(7), tr.causal_mask(7))
    torch.testing.assert_close(gqa(x, *args), mha(x, *args), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- whole model vs transformers


@pytest.fixture(scope="module")
def hf_and_ours():
    config = tiny_config()
    hf = hf_llama(config)
    return hf, tr.from_hf_llama(hf)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_tiny_transformer_matches_llama_for_causal_lm(hf_and_ours, use_sdpa):
    hf, ours = hf_and_ours
    ours.config.use_sdpa = use_sdpa  # read by every layer at each call
    ids = torch.randint(0, 50, (3, 20), generator=torch.Generator().manual_seed(17))
    labels = ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        expected = hf(ids, labels=labels)
        got = ours(ids, labels=labels)
        last = ours(ids, last_only=True).logits
    torch.testing.assert_close(last, got.logits[:, -1:], atol=1e-6, rtol=0)
    assert (got.logits - expected.logits).abs().max() <= 1e-5
    assert got.loss.item() == pytest.approx(expected.loss.item(), abs=1e-5)
    assert got.logits.std() > 0.5  # a model whose output depends on its weights


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_left_padded_batch_matches_llama_on_real_tokens(hf_and_ours, use_sdpa):
    hf, ours = hf_and_ours
    ours.config.use_sdpa = use_sdpa
    with torch.no_grad():
        expected = hf(LEFT_PADDED, attention_mask=LEFT_MASK, position_ids=positions_from(LEFT_MASK)).logits
        got = ours(LEFT_PADDED, attention_mask=LEFT_MASK).logits
        alone = ours(LEFT_PADDED[:1, 3:]).logits
    real = LEFT_MASK.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5
    assert (got[0, 3:] - alone[0]).abs().max() <= 1e-5  # padding changes nothing
    assert torch.isfinite(got).all()


def test_only_relative_positions_matter(hf_and_ours):
    """RoPE makes the model blind to a common shift of every position, not to reordering."""
    _, ours = hf_and_ours
    ids = LEFT_PADDED[1:]
    with torch.no_grad():
        plain = ours(ids).logits
        shifted = ours(ids, position_ids=torch.arange(8) + 30).logits
        swapped = ours(ids, position_ids=torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])).logits
    assert (plain - shifted).abs().max() <= 1e-4
    assert (plain - swapped).abs().max() > 1e-2


def test_from_hf_llama_copies_every_weight(hf_and_ours):
    hf, ours = hf_and_ours
    assert ours.lm_head.weight is ours.embed.weight
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    ours_down, hf_down = ours.blocks[1].mlp.down_proj.weight, hf.model.layers[1].mlp.down_proj.weight
    torch.testing.assert_close(ours_down, hf_down)
    assert ours_down.data_ptr() != hf_down.data_ptr()  # a copy: training ours leaves hf alone


# ---------------------------------------------------------------------------- cache and generation


def test_kv_cache_holds_the_formula_bytes_and_gives_the_same_logits():
    config = tiny_config(n_layers=3)
    model = sharpen(tr.Transformer(config))
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(18))
    cache = tr.KVCache(config.n_layers)
    with torch.no_grad():
        model(ids[:, :7], cache=cache)
        assert cache.length == 7
        expected = 2 * config.n_layers * 2 * config.n_kv_heads * config.head_dim * 7 * 4  # float32
        assert cache.nbytes() == expected
        step = model(ids[:, 7:8], cache=cache).logits
        two = model(ids[:, 8:9], cache=cache).logits
        full = model(ids).logits
    assert cache.length == 9 and cache.nbytes() == expected // 7 * 9
    torch.testing.assert_close(step[:, 0], full[:, 7], atol=1e-5, rtol=0)
    torch.testing.assert_close(two[:, 0], full[:, 8], atol=1e-5, rtol=0)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_greedy_generation_is_the_same_with_and_without_cache(use_sdpa):
    model = sharpen(tr.Transformer(tiny_config(use_sdpa=use_sdpa)))
    prompt = torch.tensor([[1, 2, 3, 4], [9, 8, 7, 6]])
    cached = tr.generate_tokens(model, prompt, max_new_tokens=20, use_cache=True)
    uncached = tr.generate_tokens(model, prompt, max_new_tokens=20, use_cache=False)
    assert cached.shape == (2, 24) and torch.equal(cached[:, :4], prompt)
    assert torch.equal(cached, uncached)
    assert len(set(cached[0, 4:].tolist())) > 2  # not a degenerate constant output


def test_generation_of_a_left_padded_batch_matches_transformers(hf_and_ours):
    hf, ours = hf_and_ours
    ours_ids = tr.generate_tokens(ours, LEFT_PADDED, max_new_tokens=8, attention_mask=LEFT_MASK)
    hf_ids = hf.generate(LEFT_PADDED, attention_mask=LEFT_MASK, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours_ids, hf_ids)
    alone = tr.generate_tokens(ours, LEFT_PADDED[:1, 3:], max_new_tokens=8)
    assert torch.equal(ours_ids[0, 3:], alone[0])


def test_generation_stops_when_every_row_has_produced_eos():
    model = sharpen(tr.Transformer(tiny_config()))
    prompt = torch.tensor([[1, 2, 3]])
    free = tr.generate_tokens(model, prompt, max_new_tokens=10)
    eos = free[0, 5].item()
    stopped = tr.generate_tokens(model, prompt, max_new_tokens=10, eos_token_id=eos)
    first = free[0, 3:].tolist().index(eos) + 3
    assert torch.equal(stopped, free[:, : first + 1])


def test_sample_next_greedy_top_k_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 2.9, 0.0]])
    assert tr.sample_next(logits).tolist() == [0, 1]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([tr.sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(300)])
    assert set(draws[:, 0].tolist()) == {0, 1} and set(draws[:, 1].tolist()) == {1, 2}
    # probabilities of row 0: .61 .22 .14 .03, so top_p=0.7 keeps tokens 0 and 1, 0.5 token 0 only
    draws = torch.stack([tr.sample_next(logits[:1], 1.0, top_p=0.7, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}
    assert set(tr.sample_next(logits[:1].expand(50, 4), 1.0, top_p=0.5, generator=g).tolist()) == {0}
    hot = tr.sample_next(logits[:1].expand(2000, 4), 100.0, generator=g)
    assert hot.bincount(minlength=4).min() > 350  # a high temperature flattens the distribution
    a = tr.sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, tr.sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5)))


# ---------------------------------------------------------------------------- loss and training


def test_loss_is_the_shifted_cross_entropy():
    model = sharpen(tr.Transformer(tiny_config()))
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(19))
    labels = ids.clone()
    labels[1, 6:] = -100  # not scored
    out = model(ids, labels=labels)
    logits = out.logits.detach()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    unshifted = F.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    assert abs(out.loss.item() - unshifted.item()) > 1e-3


def test_the_course_trainer_trains_it_on_a_repeated_pattern():
    torch.manual_seed(0)
    model = tr.Transformer(tr.TransformerConfig(vocab_size=12, dim=32, n_layers=2, n_heads=4,
                                                max_positions=32, use_sdpa=True))
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6] * 4)
    batches = [{"input_ids": torch.roll(pattern, -s)[None, :24].repeat(4, 1),
                "labels": torch.roll(pattern, -s)[None, :24].repeat(4, 1)} for s in range(8)]
    with torch.no_grad():
        before = model(**batches[0]).loss.item()
    train(model, batches, TrainConfig(max_steps=50, lr=1e-2, warmup_steps=5, progress=False,
                                      mixed_precision="no"))
    with torch.no_grad():
        after = model(**batches[0]).loss.item()
    assert before > 2.0 and after < 0.3, (before, after)


# ---------------------------------------------------------------------------- learner mistakes


def test_an_encoder_sees_both_sides_and_has_the_masked_lm_loss():
    from llm_tutorial import pretraining as pt

    torch.manual_seed(0)
    config = tr.TransformerConfig(vocab_size=30, dim=32, n_layers=2, n_heads=4, causal=False)
    encoder = tr.Transformer(config).eval()
    ids = torch.randint(0, 30, (2, 10), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 30  # only the last token changes
    with torch.no_grad():
        first, second = encoder(ids).logits, encoder(changed).logits
    assert not torch.allclose(first[:, 0], second[:, 0])  # the first position sees the last token
    decoder = tr.Transformer(tr.TransformerConfig(vocab_size=30, dim=32, n_layers=2, n_heads=4)).eval()
    with torch.no_grad():
        assert torch.allclose(decoder(ids).logits[:, :-1], decoder(changed).logits[:, :-1])  # causal: it cannot
    labels = torch.full_like(ids, -100)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    with torch.no_grad():
        out = encoder(ids, labels=labels)
    assert torch.allclose(out.loss, pt.mlm_loss(out.logits, labels), atol=1e-6)  # unshifted, masked positions only
    with pytest.raises(ValueError, match="encoder"):
        tr.generate_tokens(encoder, ids, 3)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tr.Transformer(tr.TransformerConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
    path = tr.save_checkpoint(model, tmp_path / "m.safetensors", dtype=torch.float32, command="test")
    loaded, metadata = tr.load_checkpoint(path)
    assert metadata == {"command": "test"} and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.embed.weight  # tied again after loading
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    half = tr.save_checkpoint(model, tmp_path / "h.safetensors")  # float16: half the bytes
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert torch.allclose(tr.load_checkpoint(half)[0](ids).logits, model(ids).logits, atol=1e-3)


def test_a_file_without_a_config_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not written by save_checkpoint"):
        tr.load_checkpoint(tmp_path / "x.safetensors")


SHIPPED_SHA256 = "0e603637ea55288fee7461f6c7810888ae29ca8f72d5b2f5f5fd9474db6e4047"


def test_the_shipped_tiny_shakespeare_checkpoint_reproduces_its_held_out_loss():
    """Notebook 02's full-profile model, shipped in llm_tutorial/data/checkpoints: the file is the
    recorded one, and in float32 it scores its recorded held-out loss (<= 1.6 nats/char) on the
    windows the notebook evaluated: 32 batches of 32 random 128-character windows of the last
    10% of Tiny Shakespeare, drawn with seed 1 as `RandomWindows` draws them."""
    import hashlib

    path = assets.tiny_shakespeare_checkpoint()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHIPPED_SHA256
    model, metadata = tr.load_checkpoint(path)
    assert {"command", "hardware", "date", "trained", "block", "heldout_loss"} <= set(metadata)
    text = assets.load_tiny_shakespeare()
    chars = sorted(set(text))
    assert model.config.vocab_size == len(chars) == 65
    stoi = {c: i for i, c in enumerate(chars)}
    heldout = torch.tensor([stoi[c] for c in text[int(0.9 * len(text)):]])
    block, generator, losses = int(metadata["block"]), torch.Generator().manual_seed(1), []
    with torch.no_grad():
        for _ in range(32):
            starts = torch.randint(len(heldout) - block, (32,), generator=generator)
            windows = torch.stack([heldout[s:s + block] for s in starts])
            losses.append(model(windows, labels=windows).loss.item())
    loss = sum(losses) / len(losses)
    assert loss <= 1.6 and abs(loss - float(metadata["heldout_loss"])) < 0.005, (loss, metadata["heldout_loss"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=30, n_heads=4), "dim=30 is not divisible by n_heads=4"),
    (dict(n_heads=4, n_kv_heads=3), "n_heads=4 is not divisible by n_kv_heads=3.*among \\[1, 2, 4\\]"),
    (dict(dim=36, n_heads=4), "head_dim = dim / n_heads = 9 is odd"),
])
def test_config_mistakes_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tr.TransformerConfig(**kwargs)


def test_forward_mistakes_are_explained():
    model = tr.Transformer(tiny_config(max_positions=16))
    with pytest.raises(ValueError, match="17 tokens .* exceed max_positions=16: crop"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = tr.KVCache(2)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"17 tokens \(10 cached \+ 7 new\)"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="attention_mask .* must be \\(batch, cached"):
        model(torch.zeros(1, 1, dtype=torch.long), attention_mask=torch.ones(1, 1), cache=cache)
    with pytest.raises(ValueError, match="labels .* pass labels=input_ids"):
        model(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        tr.sample_next(torch.zeros(1, 5), temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        tr.sample_next(torch.zeros(1, 5), temperature=1.0, top_p=1.5)


def test_smollm2_config_has_the_published_shape():
    config = tr.TransformerConfig.smollm2_135m()
    assert (config.head_dim, config.hidden_dim, config.n_heads // config.n_kv_heads) == (64, 1536, 3)
    with torch.device("meta"):
        model = tr.Transformer(config)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied


# ---------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
    try:
        assets.asset_path("smollm2")
    except assets.AssetNotFoundError as error:
        pytest.skip(str(error))
    hf, tokenizer = assets.load_smollm2()
    return hf, tr.from_hf_llama(hf), tokenizer


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2):
    hf, ours, tokenizer = smollm2
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    with torch.no_grad():
        expected = hf(**batch, position_ids=positions_from(mask)).logits
        got = ours(batch["input_ids"], attention_mask=mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-4

    ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    hf_ids = hf.generate(ids, max_new_tokens=10, do_sample=False)
    ours_ids = tr.generate_tokens(ours, ids, max_new_tokens=10)
    assert hf_ids.shape[1] > ids.shape[1] + 3
    assert torch.equal(ours_ids[:, : hf_ids.shape[1]], hf_ids)  # (hf stops early at eos)
