"""
# A Llama-style decoder in one file

This is the model behind SmolLM2, Llama 2/3, Mistral and most open decoders, written so that
it can be read in one sitting, top to bottom. It is the decoder of GPT-2
with four changes that every modern decoder has adopted:

* **RMSNorm** instead of LayerNorm, applied *before* each sub-layer (pre-norm);
* **rotary position embeddings** (RoPE) instead of learned absolute positions: position is
  put into the queries and keys by rotating them, so attention scores depend on the
  *distance* between tokens;
* **grouped-query attention** (GQA): several query heads share one key/value head, which
  shrinks the KV cache;
* a **SwiGLU** MLP instead of `GELU(x W_1) W_2`.

A decoder with $L$ blocks maps token ids $x_1 \\dots x_T$ to next-token logits:

$$h^{(0)}_t = E[x_t], \\qquad
  h' = h + \\mathrm{Attn}(\\mathrm{RMSNorm}(h)), \\qquad
  h^{(\\ell+1)} = h' + \\mathrm{MLP}(\\mathrm{RMSNorm}(h')),$$
$$\\mathrm{logits}_t = \\mathrm{RMSNorm}(h^{(L)}_t)\\, E^\\top \\quad\\text{(embeddings tied)}.$$

The pieces come in the order a forward pass uses them: `attention` and `causal_mask`,
`RMSNorm`, RoPE, the `Attention` module with its `KVCache`, the `MLP`, the `Block`, the
`Transformer` itself, then generation (`sample_next`, `generate_tokens`) and loading the
SmolLM2 weights from a Hugging Face `LlamaForCausalLM` (`from_hf_llama`); `save_checkpoint` and
`load_checkpoint` keep a trained model in a safetensors file.

```python
hf_model, tokenizer = llm_tutorial.assets.load_smollm2()
model = from_hf_llama(hf_model)                 # the logits of hf_model, to ~5e-5 in float32
ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
print(tokenizer.decode(generate_tokens(model, ids, max_new_tokens=10)[0]))
```
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .trainer import IGNORE_INDEX, eval_mode

# --------------------------------------------------------------------------- attention


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ## Scaled dot-product attention

    $$\\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\Big(\\frac{Q K^\\top}{\\sqrt{d}} + M\\Big)\\, V$$

    `q` is `(..., t, d)` (one row per query), `k` and `v` are `(..., s, d)` (one row per
    key). Row $i$ of the softmax says how much query $i$ takes from each value. Dividing by
    $\\sqrt{d}$ keeps the scores of unit-variance vectors at unit variance, so the softmax
    does not saturate as $d$ grows.

    `mask` is either **boolean**, `True` where a query *may* attend to a key (PyTorch's
    `scaled_dot_product_attention` convention, what `causal_mask` returns), or **additive**,
    a float tensor $M$ of `0` and `-inf` added to the scores. It broadcasts to `(..., t, s)`.

    Returns `(output, weights)`: `output` is `(..., t, d)`, `weights` is `(..., t, s)`.
    """
    d = q.shape[-1]
    assert k.shape[-1] == d and v.shape[-2] == k.shape[-2], "k must match q's width, v k's length"
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def causal_mask(t: int, past: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """
    ## The causal mask

    A **boolean** `(t, past + t)` tensor, `True` where attention is allowed: the queries are
    the tokens at positions `past ... past + t - 1`, the keys those at `0 ... past + t - 1`,
    and query $i$ may see key $j$ iff $j \\le \\text{past} + i$ (itself and what came before).
    With `past = 0` it is the lower triangle; with a KV cache holding `past` tokens, the new
    queries see every cached key.

    For the additive form, `torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))`.
    """
    queries = torch.arange(past, past + t, device=device)
    keys = torch.arange(past + t, device=device)
    return keys[None, :] <= queries[:, None]


# --------------------------------------------------------------------------- RMSNorm


class RMSNorm(nn.Module):
    """
    ## Root-mean-square normalisation

    $$\\mathrm{RMSNorm}(x) = \\frac{x}{\\sqrt{\\frac{1}{d}\\sum_i x_i^2 + \\epsilon}} \\odot g$$

    LayerNorm without the mean subtraction and without a bias: one learned gain $g$ per
    feature (initialised to 1). It is cheaper, and works as well. The statistic is computed
    in float32 even for bfloat16 inputs, as in Llama.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


# --------------------------------------------------------------------------- RoPE


def rotate_pair(pair: torch.Tensor, angle: float | torch.Tensor) -> torch.Tensor:
    """
    ## RoPE on one pair of numbers

    Rotate 2-D vectors `pair` (`(..., 2)`) by `angle` radians:

    $$\\begin{pmatrix} x' \\\\ y' \\end{pmatrix} =
      \\begin{pmatrix} \\cos\\phi & -\\sin\\phi \\\\ \\sin\\phi & \\cos\\phi \\end{pmatrix}
      \\begin{pmatrix} x \\\\ y \\end{pmatrix}$$

    RoPE does exactly this to every pair of coordinates of a query or key, with the angle
    $\\phi = m\\,\\theta_i$ growing with the position $m$. Since rotations preserve dot products
    up to the *difference* of angles, $\\langle R_{m\\theta} q, R_{n\\theta} k\\rangle =
    \\langle R_{(m-n)\\theta}\\, q, k\\rangle$: the score depends on $m - n$ only.
    """
    angle = torch.as_tensor(angle, dtype=pair.dtype, device=pair.device)
    x, y = pair[..., 0], pair[..., 1]
    return torch.stack([x * angle.cos() - y * angle.sin(), x * angle.sin() + y * angle.cos()], dim=-1)


def rope_frequencies(head_dim: int, max_positions: int, theta: float = 10000.0,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ## The rotation angles

    A head of width $d$ holds $d/2$ pairs; pair $i$ turns by $\\theta_i = \\text{theta}^{-2i/d}$
    radians per position, from one radian per token ($i = 0$) down to a very slow turn, so
    nearby and distant offsets are both distinguishable. Returns `(cos, sin)`, each
    `(max_positions, head_dim)`, with row $m$ holding the angles $m\\theta_i$ twice,
    $[m\\theta_0 \\dots m\\theta_{d/2-1}, m\\theta_0 \\dots m\\theta_{d/2-1}]$: the layout
    that `apply_rope`'s "rotate half" convention expects.
    """
    assert head_dim % 2 == 0, "RoPE rotates pairs of coordinates: head_dim must be even"
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """$[x_1, x_2] \\mapsto [-x_2, x_1]$ for the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               positions: torch.Tensor | int = 0) -> torch.Tensor:
    """
    ## Rotary position embedding

    Rotate each query or key `x` (`(batch, heads, t, head_dim)`) by the angles of its position:

    $$\\mathrm{RoPE}(x)_m = x \\odot \\cos(m\\theta) + \\mathrm{rotate\\_half}(x) \\odot \\sin(m\\theta)$$

    This is `rotate_pair` applied to the pairs $(x_i, x_{i + d/2})$: the "rotate half"
    convention of Hugging Face's Llama. (Meta's original code pairs neighbours
    $(x_{2i}, x_{2i+1})$; the two are the same model up to a fixed permutation of the rows of
    $W_Q$ and $W_K$, which transformers applies when it converts checkpoints, including the
    GGUF file of SmolLM2, so the HF weights need this convention.)

    `positions` is an `int` offset (the tokens sit at `offset ... offset + t - 1`), a `(t,)`
    tensor of positions, or a `(batch, t)` tensor (left-padded batches). `cos` and `sin`
    are the tables of `rope_frequencies`.
    """
    if isinstance(positions, int):
        positions = torch.arange(positions, positions + x.shape[-2], device=x.device)
    cos, sin = cos[positions].to(x.dtype), sin[positions].to(x.dtype)  # (t, d) or (batch, t, d)
    if positions.dim() == 2:
        cos, sin = cos[:, None], sin[:, None]  # one angle per position, shared by every head
    return x * cos + rotate_half(x) * sin


# --------------------------------------------------------------------------- attention layer


class KVCache:
    """
    ## The KV cache

    When generating, the keys and values of the tokens already seen never change, so each
    layer keeps them and the model only computes those of the new token. Per layer, `keys`
    and `values` are `(batch, kv_heads, tokens, head_dim)` and grow by concatenation (as
    Hugging Face's `DynamicCache`; servers preallocate them instead). Their size is

    $$\\text{bytes} = 2 \\cdot \\text{layers} \\cdot \\text{batch} \\cdot \\text{kv\\_heads}
      \\cdot \\text{head\\_dim} \\cdot \\text{tokens} \\cdot \\text{bytes per number},$$

    which is why grouped-query attention (fewer kv heads) matters for long contexts.
    """

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of tokens held (the position of the next token)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[-2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' `k`, `v` to `layer`'s cache; return all keys and values."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class Attention(nn.Module):
    """
    ## Multi-head attention with grouped-query heads

    One linear map each produces the queries of `n_heads` heads and the keys and values of
    `n_kv_heads` heads, all of width `head_dim`; multi-head is just a reshape of the last
    dimension into `(heads, head_dim)`. Queries and keys are rotated (RoPE), each group of
    `n_heads / n_kv_heads` query heads shares one key/value head (repeated to match), the heads
    attend independently, and `o_proj` mixes their concatenated outputs:

    $$\\mathrm{head}_h = \\mathrm{Attention}(\\mathrm{RoPE}(x W_Q^h),\\ \\mathrm{RoPE}(x W_K^{g(h)}),
      \\ x W_V^{g(h)}), \\qquad g(h) = \\lfloor h / (n_\\text{heads}/n_\\text{kv}) \\rfloor$$

    With `use_sdpa`, PyTorch's fused `scaled_dot_product_attention` replaces the hand-written
    `attention` (same result, less memory, faster for long sequences).
    """

    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        self.layer = layer  # where this layer's keys and values live in a KVCache
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.config = config  # shared by every layer: `model.config.use_sdpa = True` switches all
        self.q_proj = nn.Linear(config.dim, config.n_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, config.n_kv_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        batch, t, _ = x.shape
        # (batch, t, heads * head_dim) -> (batch, heads, t, head_dim)
        q = self.q_proj(x).view(batch, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin, positions), apply_rope(k, cos, sin, positions)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # now every token so far: (batch, kv, s, head_dim)
        groups = self.n_heads // self.n_kv_heads  # kv head j serves query heads j*groups ...
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if self.config.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out, _ = attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, t, self.n_heads * self.head_dim))


# --------------------------------------------------------------------------- MLP and block


class MLP(nn.Module):
    """
    ## SwiGLU feed-forward

    $$\\mathrm{MLP}(x) = W_\\text{down}\\big(\\mathrm{SiLU}(W_\\text{gate}\\, x) \\odot W_\\text{up}\\, x\\big),
      \\qquad \\mathrm{SiLU}(z) = z\\, \\sigma(z)$$

    The gate branch decides, feature by feature, how much of the up branch passes. With three
    matrices instead of two, a hidden width of $\\frac{8}{3} d$ costs the parameters of a
    $4d$ GELU MLP (SmolLM2: $\\frac{8}{3} \\cdot 576 = 1536$).
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """
    ## A decoder block (pre-norm residual)

    $$h' = h + \\mathrm{Attn}(\\mathrm{RMSNorm}_1(h)), \\qquad
      h'' = h' + \\mathrm{MLP}(\\mathrm{RMSNorm}_2(h'))$$

    The residual stream $h$ is never normalised itself; each sub-layer reads a normalised
    copy and adds its result back, which keeps deep stacks trainable.
    """

    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config.dim, config.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, positions, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


def _divisors(n: int) -> list[int]:
    """The divisors of `n` up to 16 (to suggest head counts in error messages)."""
    return [d for d in range(1, min(n, 16) + 1) if n % d == 0]


# --------------------------------------------------------------------------- the model


@dataclass
class TransformerConfig:
    """
    ## The model's shape

    The defaults are a tiny character-level model (65 characters of Tiny Shakespeare, 4
    layers of width 128); `TransformerConfig.smollm2_135m()` is SmolLM2-135M.

    * `n_kv_heads` defaults to `n_heads` (plain multi-head attention); fewer is GQA.
    * `hidden_dim` (the MLP width) defaults to $\\frac{8}{3}$ `dim`, rounded up to a multiple of 32.
    * `max_positions` is the longest sequence (prompt plus generated tokens) the RoPE
      tables cover.
    * `use_sdpa` swaps the hand-written `attention` for PyTorch's fused kernel; every layer
      reads it at each call, so `model.config.use_sdpa = True` switches a built model.
    * `causal=False` makes the same network an *encoder*, as BERT is: no causal mask, so every
      token sees both sides, and the loss is unshifted (each labelled position predicts its own
      token, the masked-LM loss of notebook 03). It cannot generate.
    """

    vocab_size: int = 65
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    hidden_dim: int | None = None
    max_positions: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    use_sdpa: bool = False
    causal: bool = True

    def __post_init__(self) -> None:
        self.n_kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if self.hidden_dim is None:
            self.hidden_dim = 32 * math.ceil(8 * self.dim / 3 / 32)
        if self.dim % self.n_heads:  # each head gets dim / n_heads features
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}: "
                             f"choose n_heads among {_divisors(self.dim)} or change dim")
        if self.n_heads % self.n_kv_heads:  # each kv head serves a whole group of query heads
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads="
                             f"{self.n_kv_heads}: choose n_kv_heads among {_divisors(self.n_heads)}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} is odd, but RoPE rotates pairs")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def smollm2_135m(cls, **overrides) -> TransformerConfig:
        """SmolLM2-135M: 30 layers of width 576, 9 query heads sharing 3 kv heads, 49152 tokens."""
        shape = dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                     max_positions=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True)
        return cls(**{**shape, **overrides})


@dataclass
class TransformerOutput:
    """What `Transformer.forward` returns: `logits` `(batch, t, vocab)`, the mean next-token
    `loss` when labels were given, and the `cache` that was passed in (now updated)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    cache: KVCache | None = None


class Transformer(nn.Module):
    """
    ## The decoder

    Token embeddings, `n_layers` blocks, a final RMSNorm and the language-model head, whose
    weight *is* the embedding matrix when `tie_embeddings` (the logit of token $v$ is the dot
    product of the final hidden state with $v$'s embedding). Weights start as
    $\\mathcal{N}(0, 0.02^2)$, gains at 1. RoPE's `cos`/`sin` tables are buffers, computed once.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_frequencies(config.head_dim, config.max_positions, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False) -> TransformerOutput:
        """
        `input_ids` `(batch, t)` are the new tokens; a `cache` holds the earlier ones.

        * `labels` `(batch, t)`: the loss is the mean cross-entropy of predicting token $t+1$
          from position $t$, $-\\frac{1}{N}\\sum_t \\log p(x_{t+1} \\mid x_{\\le t})$; the shift
          happens here, so `labels` may simply be `input_ids`. Labels of `-100` are skipped.
        * `attention_mask` `(batch, past + t)`, 1 for tokens and 0 for (left) padding, over
          the cached tokens *and* the new ones. Padding keys are hidden from every query, and
          positions count real tokens only (`cumsum(mask) - 1`), as in `transformers`' generate.
          (With RoPE a row shifted by its padding would give the same scores anyway: they
          depend on offsets only. Learned absolute positions, as in GPT-2, would not.)
        * `position_ids`: override the positions (default `past ... past + t - 1`).
        * `last_only`: return the logits of the last position only, `(batch, 1, vocab)`.
        """
        batch, t = input_ids.shape
        past, limit = (cache.length if cache is not None else 0), self.config.max_positions
        if past + t > limit:
            raise ValueError(f"{past + t} tokens ({past} cached + {t} new) exceed max_positions={limit}: "
                             f"crop the input (input_ids[:, -max_positions:]) or raise max_positions")
        if labels is not None and labels.shape != input_ids.shape:  # e.g. labels shifted by hand
            raise ValueError(f"labels {tuple(labels.shape)} must have input_ids' shape: pass labels=input_ids")
        causal = self.config.causal  # an encoder (causal=False) lets every token see both sides
        mask = causal_mask(t, past, input_ids.device) if causal and t > 1 else None  # one new token sees all
        if attention_mask is not None:
            if attention_mask.shape != (batch, past + t):
                raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must be (batch, cached + new) "
                                 f"= {(batch, past + t)}: append a 1 for each generated token")
            keep = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, past + t), False at padding
            new_tokens = torch.arange(past, past + t, device=input_ids.device)
            itself = torch.arange(past + t, device=input_ids.device) == new_tokens[:, None]  # (t, past + t)
            mask = (keep if mask is None else mask & keep) | itself  # each token sees itself, so a
            # padding row is never all -inf (which would make its softmax NaN)
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)

        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin, position_ids, mask, cache)
        if last_only:  # generation needs only the last position: skip the vocabulary projection
            x = x[:, -1:]  # of the others (a fifth of SmolLM2's weights)
        logits = self.lm_head(self.norm(x))

        loss = None
        if labels is not None and causal:  # position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        elif labels is not None:  # an encoder: each labelled (masked) position predicts its own token
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=IGNORE_INDEX)
        return TransformerOutput(logits=logits, loss=loss, cache=cache)


# --------------------------------------------------------------------------- generation


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """
    ## Choosing the next token

    From the last position's `logits` `(batch, vocab)`, return one token id per row:

    * `temperature == 0`: greedy, $\\arg\\max_v \\mathrm{logits}_v$;
    * otherwise sample from $\\mathrm{softmax}(\\mathrm{logits} / \\tau)$: $\\tau < 1$
      sharpens the distribution, $\\tau > 1$ flattens it;
    * `top_k` keeps only the $k \\ge 1$ most likely tokens;
    * `top_p` (nucleus) keeps the smallest set of most likely tokens whose probability adds
      up to at least $p$ (the most likely token always stays).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p is a probability mass in (0, 1], got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before this token already reaches p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(model: Transformer, input_ids: torch.Tensor, max_new_tokens: int,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    use_cache: bool = True, generator: torch.Generator | None = None,
                    attention_mask: torch.Tensor | None = None,
                    eos_token_id: int | None = None) -> torch.Tensor:
    """
    ## The generation loop

    Autoregressive decoding: run the model, pick the next token from the last position
    (`sample_next`), append it, repeat. Returns the prompt followed by the new tokens,
    `(batch, prompt + new)`.

    * **Without a cache** every step re-runs the whole sequence, $O(T^2)$ token-layers of work
      for $T$ tokens.
    * **With a cache** the first step (*prefill*) runs the prompt once and stores every
      layer's keys and values; each later step feeds only the newest token, which attends to
      the cached keys. Same tokens, $O(T)$ token-layers of work.

    `attention_mask` marks left padding in a batch of prompts (1 = token, 0 = padding); it is
    extended by a 1 per generated token. With `eos_token_id`, generation stops once every row
    has produced it (rows that finished earlier keep going: cut them at their first eos).
    """
    if not model.config.causal:
        raise ValueError("this model is an encoder (causal=False): it sees both sides of every token, "
                         "so it cannot generate left to right; train a causal model (causal=True) to generate")
    with eval_mode(model):
        ids = input_ids
        cache = KVCache(model.config.n_layers) if use_cache else None
        new = ids  # the tokens the model has not seen yet
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            out = model(new, attention_mask=attention_mask, cache=cache, last_only=True)
            next_id = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if attention_mask is not None:
                one_more = attention_mask.new_ones(ids.shape[0], 1)  # the new token is real
                attention_mask = torch.cat([attention_mask, one_more], dim=1)
            new = next_id[:, None] if use_cache else ids
            if eos_token_id is not None:
                done |= next_id == eos_token_id
                if done.all():
                    break
        return ids


# --------------------------------------------------------------------------- SmolLM2 weights


def from_hf_llama(hf_model: nn.Module, use_sdpa: bool = False) -> Transformer:
    """
    ## Loading a Hugging Face Llama (SmolLM2)

    Build a `Transformer` with the shape of a `transformers` `LlamaForCausalLM` and copy its
    weights in. The modules line up one to one; only the names differ:

    | transformers | here |
    |---|---|
    | `model.embed_tokens` | `embed` |
    | `model.layers.{i}.input_layernorm` | `blocks.{i}.attention_norm` |
    | `model.layers.{i}.self_attn.{q,k,v,o}_proj` | `blocks.{i}.attention.{q,k,v,o}_proj` |
    | `model.layers.{i}.post_attention_layernorm` | `blocks.{i}.mlp_norm` |
    | `model.layers.{i}.mlp.{gate,up,down}_proj` | `blocks.{i}.mlp.{gate,up,down}_proj` |
    | `model.norm`, `lm_head` | `norm`, `lm_head` |

    The q/k weights need no permutation: transformers already stores them for the
    rotate-half RoPE (its GGUF loader undoes llama.cpp's interleaved layout). Every tensor on
    both sides must be used. The copy is float32 on the CPU; move it with `.to(...)`.
    """
    hf = hf_model.config
    rope = getattr(hf, "rope_parameters", None) or {"rope_type": "default", "rope_theta": hf.rope_theta}
    unsupported = {
        "hidden_act": (hf.hidden_act, "silu"), "attention_bias": (hf.attention_bias, False),
        "mlp_bias": (hf.mlp_bias, False), "rope_type": (rope.get("rope_type", "default"), "default"),
        "head_dim": (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
                     hf.hidden_size // hf.num_attention_heads),
    }
    different = {name: value for name, (value, expected) in unsupported.items() if value != expected}
    if different:
        raise ValueError(f"this Transformer implements plain Llama, but the model has {different}")
    config = TransformerConfig(
        vocab_size=hf.vocab_size, dim=hf.hidden_size, n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads,
        hidden_dim=hf.intermediate_size, max_positions=hf.max_position_embeddings,
        rope_theta=float(rope["rope_theta"]), norm_eps=hf.rms_norm_eps,
        tie_embeddings=bool(hf.tie_word_embeddings), use_sdpa=use_sdpa)

    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "model.embed_tokens.weight" if config.tie_embeddings else "lm_head.weight"}
    for i in range(config.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        names[ours + "attention_norm.weight"] = theirs + "input_layernorm.weight"
        names[ours + "mlp_norm.weight"] = theirs + "post_attention_layernorm.weight"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"{ours}attention.{proj}.weight"] = f"{theirs}self_attn.{proj}.weight"
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[f"{ours}mlp.{proj}.weight"] = f"{theirs}mlp.{proj}.weight"

    hf_state = hf_model.state_dict()
    if config.tie_embeddings and "lm_head.weight" in hf_state:  # tied: the same matrix twice
        assert torch.equal(hf_state.pop("lm_head.weight"), hf_state["model.embed_tokens.weight"])
    unused = set(hf_state) - set(names.values())
    assert not unused, f"weights of the Hugging Face model that have no place here: {sorted(unused)}"

    model = Transformer(config)
    state = {ours: hf_state[theirs] for ours, theirs in names.items()}
    model.load_state_dict(state, strict=True)  # strict: every tensor of ours must be filled
    assert model.lm_head.weight is model.embed.weight or not config.tie_embeddings
    return model.eval()


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: Transformer, path: str | Path, dtype: torch.dtype = torch.float16,
                    **metadata: str) -> Path:
    """
    ## Saving a trained model

    One [safetensors](https://huggingface.co/docs/safetensors) file: the weights (float16 by
    default, half the bytes of float32), the `TransformerConfig` as JSON and any string
    `metadata` (the command, hardware and date that produced it). A tied output matrix is
    stored once. safetensors holds only tensors and strings, so loading it runs no code
    (unlike a pickle).
    """
    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # the same matrix as embed.weight
    header = {"config": json.dumps(asdict(model.config)), **metadata}
    save_file(state, str(path), metadata=header)
    return Path(path)


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, dict[str, str]]:
    """The model saved by `save_checkpoint` (in `dtype`, eval mode, on the CPU) and its metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if "config" not in metadata:
        raise ValueError(f"{path} has no 'config' in its metadata: it was not written by save_checkpoint")
    model = Transformer(TransformerConfig(**json.loads(metadata.pop("config"))))
    state = {name: tensor.to(dtype) for name, tensor in load_file(str(path)).items()}
    if model.config.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(dtype).eval(), metadata
