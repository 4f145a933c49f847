"""
# Generative models: the variational autoencoder

A classifier learns $p(y \\mid x)$; a *generative* model learns $p(x)$ itself, so that it can
score how likely a digit is and draw new ones. This module builds the classic latent-variable
model for that, the **variational autoencoder** (VAE, Kingma & Welling 2014), on scikit-learn's
1,797 handwritten 8×8 digits (`load_digits_data`: 64 pixels scaled to $[0, 1]$).

## A latent variable and a bound

The model says a digit is made in two steps: draw a code $z \\sim p(z) = \\mathcal N(0, I)$ in a
small latent space (two dimensions here, so that it can be drawn), then draw the pixels from a
**decoder** $p_\\theta(x \\mid z)$, a neural network. The likelihood of a digit,
$p_\\theta(x) = \\int p_\\theta(x \\mid z)\\, p(z)\\, dz$, is an integral no one can compute, so an
**encoder** $q_\\phi(z \\mid x) = \\mathcal N(\\mu_\\phi(x), \\operatorname{diag} \\sigma^2_\\phi(x))$
guesses which codes could have made $x$, and Jensen's inequality gives the **evidence lower
bound** (ELBO):

$$\\log p_\\theta(x) \\;\\ge\\; \\underbrace{\\mathbb E_{q_\\phi(z \\mid x)}[\\log p_\\theta(x \\mid z)]}_
{\\text{reconstruction}} \\;-\\; \\underbrace{\\mathrm{KL}(q_\\phi(z \\mid x) \\,\\|\\, p(z))}_
{\\text{how far the code strays from the prior}}.$$

The gap is $\\mathrm{KL}(q_\\phi(z \\mid x) \\,\\|\\, p_\\theta(z \\mid x))$: the better the encoder
guesses the true posterior, the tighter the bound. Training maximises the ELBO over both
networks at once (`VAE`, `train_vae` with the course's `trainer`).

* The KL between two Gaussians has a closed form (`gaussian_kl`); `monte_carlo_kl` estimates
  the same number by sampling, which is what one does when there is no closed form.
* The expectation is estimated with one sample of $z$, written as $z = \\mu + \\sigma \\odot
  \\varepsilon$ with $\\varepsilon \\sim \\mathcal N(0, I)$ (`reparameterise`), so that the sample
  is a differentiable function of the encoder's outputs and gradients reach them.

## Is it any good?

`elbo` scores held-out digits. Because the ELBO is a *lower* bound, its negative is an upper
bound on the negative log-likelihood: when the VAE's $-\\text{ELBO}$ is below the exact
negative log-likelihood of a baseline, the VAE really does model the digits better. The
baseline is `independent_pixel_nll`, 64 independent pixels, each with its training-set mean:
it knows where ink usually goes but not that strokes hang together. `importance_weighted_nll`
tightens the VAE's bound, and `entropy_floor` is the score no model can beat with grey-level
pixels (`bernoulli_log_likelihood` explains why there is one).

Samples are judged by a classifier trained on real digits (`train_digit_classifier`).
A **conditional VAE** (`ConditionalVAE`, Sohn et al. 2015) is told the digit's label in both
networks, so that it can be asked for a "7"; `judge_generated` reports how often the judge
agrees that the digit drawn is the one that was asked for.

`plot_digit_grid`, `plot_latent_space` and `decode_grid` draw images, the latent codes of the
test digits and the digits the decoder makes across the latent plane.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from llm_tutorial.evaluation import bootstrap_ci
from llm_tutorial.trainer import TrainConfig, Trainer, eval_mode

__all__ = [
    "N_PIXELS", "N_CLASSES", "DigitSplit", "load_digits_data", "gaussian_kl", "monte_carlo_kl",
    "reparameterise", "bernoulli_log_likelihood", "entropy_floor", "VAE", "ConditionalVAE", "elbo",
    "importance_weighted_nll", "independent_pixel_nll", "train_vae", "DigitJudge",
    "train_digit_classifier", "judge_generated", "plot_digit_grid", "plot_latent_space",
    "decode_grid",
]

N_PIXELS = 64  # 8 x 8 digits, flattened
N_CLASSES = 10
LOG_2PI = math.log(2 * math.pi)

# ---------------------------------------------------------------------------------- the data


@dataclass
class DigitSplit:
    """scikit-learn's digits for generative modelling: `x_*` are `(n, 64)` float32 pixels in
    $[0, 1]$ (the raw 0..16 intensities divided by 16), `y_*` the `(n,)` int64 digit labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def __repr__(self) -> str:
        return f"DigitSplit(train={len(self.x_train)}, test={len(self.x_test)}, features={N_PIXELS})"


def load_digits_data(test_size: float = 0.25, seed: int = 0) -> DigitSplit:
    """The 1,797 digits bundled with scikit-learn (offline), flattened to 64 pixels in $[0, 1]$,
    with a split stratified by digit so that every digit is equally represented in both parts."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"test_size is a fraction of the 1,797 digits, e.g. 0.25; got {test_size}")
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size,
                                                        random_state=seed, stratify=y)
    assert x.shape[1] == N_PIXELS and 0 <= x.min() and x.max() <= 1
    return DigitSplit(torch.from_numpy(x_train), torch.from_numpy(y_train),
                      torch.from_numpy(x_test), torch.from_numpy(y_test))


# ------------------------------------------------------------------------- Gaussians and KL


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """
    ## KL divergence to the prior, in closed form

    For $q = \\mathcal N(\\mu, \\operatorname{diag}\\sigma^2)$ and $p = \\mathcal N(0, I)$ the
    divergence splits over the latent dimensions, and each one integrates to

    $$\\mathrm{KL}(q \\,\\|\\, p) = \\tfrac12 \\sum_d \\left(\\mu_d^2 + \\sigma_d^2 - \\log\\sigma_d^2
    - 1\\right).$$

    It is zero exactly when $\\mu = 0$ and $\\sigma = 1$: the encoder pays for every code that
    strays from the prior, in mean or in width. The encoder outputs $\\log\\sigma^2$ (`logvar`)
    rather than $\\sigma$, so that any real number is a valid output. Returns one value per
    example (the last dimension is summed), in nats.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the "
                         f"same shape: one mean and one log-variance per latent dimension")
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """$\\log \\mathcal N(z; \\mu, \\operatorname{diag} e^{\\mathrm{logvar}})$, summed over the
    last dimension."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def monte_carlo_kl(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int,
                   generator: torch.Generator | None = None, return_std_error: bool = False
                   ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """
    ## KL divergence by sampling

    The KL is an expectation, $\\mathrm{KL}(q \\,\\|\\, p) = \\mathbb E_{z \\sim q}[\\log q(z) -
    \\log p(z)]$, so averaging $\\log q(z_s) - \\log p(z_s)$ over $S$ draws $z_s \\sim q$ estimates
    it without any algebra: the tool for the many pairs of distributions that have no closed
    form. The estimate is unbiased, and its standard error shrinks like $1/\\sqrt S$.

    Returns one estimate per example; with `return_std_error=True` also the standard error of
    each (the standard deviation of the $S$ terms over $\\sqrt S$).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the "
                         f"same shape")
    eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + (0.5 * logvar).exp() * eps
    terms = _log_normal(z, mu, logvar) - _log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    estimate = terms.mean(0)
    if not return_std_error:
        return estimate
    std_error = terms.std(0) / math.sqrt(n_samples) if n_samples > 1 else torch.full_like(estimate, math.nan)
    return estimate, std_error


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """
    ## The reparameterisation trick

    Sampling $z \\sim \\mathcal N(\\mu, \\sigma^2)$ directly is a dead end for backpropagation: a
    random draw has no derivative with respect to $\\mu$ or $\\sigma$. Writing the same draw as

    $$z = \\mu + \\sigma \\odot \\varepsilon, \\qquad \\varepsilon \\sim \\mathcal N(0, I),
    \\qquad \\sigma = e^{\\frac12 \\log\\sigma^2},$$

    moves the randomness into $\\varepsilon$, which does not depend on the parameters, and makes
    $z$ a plain differentiable function of `mu` and `logvar`:
    $\\partial z / \\partial \\mu = 1$ and $\\partial z / \\partial \\log\\sigma^2 = \\tfrac12 \\sigma
    \\varepsilon$.
    """
    if generator is None:
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
    else:  # drawn where the generator lives (a seeded CPU generator also serves a GPU model)
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype,
                          device=generator.device).to(mu.device)
    return mu + (0.5 * logvar).exp() * eps


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """
    ## The pixel likelihood

    Each pixel is treated as a coin whose probability of ink is $p_j = \\operatorname{sigmoid}
    (\\ell_j)$, the decoder's logit passed through a sigmoid, independently of the others given
    $z$:

    $$\\log p(x \\mid z) = \\sum_{j=1}^{64} x_j \\log p_j + (1 - x_j) \\log (1 - p_j),$$

    which is minus `binary_cross_entropy_with_logits`, summed over the pixels (one value per
    example, in nats). For a black-and-white image ($x_j \\in \\{0, 1\\}$) this is an honest
    log-probability. The digits here are grey levels in $[0, 1]$, used as soft targets: the
    formula is still the standard choice (the cross-entropy of the intensity against the
    predicted ink probability, largest when $p_j = x_j$), but it is not a normalised density over
    grey levels (the continuous Bernoulli of Loaiza-Ganem & Cunningham 2019 adds the missing
    constant), and even a perfect model scores the intensities' entropy, not zero. The numbers
    are therefore comparable between models that use this same convention, which is why the
    baseline `independent_pixel_nll` uses it too.
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def entropy_floor(x: torch.Tensor) -> float:
    """The lowest `-bernoulli_log_likelihood` any model can score on the digits `x`, averaged
    per digit: with soft targets the cross-entropy is smallest when every predicted $p_j$
    equals $x_j$, and it is then the intensities' own binary entropy,
    $\\sum_j -x_j \\log x_j - (1 - x_j) \\log(1 - x_j)$ (zero for black-and-white images).
    Subtract it from a score to see how much of it a model could still remove."""
    x = torch.as_tensor(x, dtype=torch.float64)
    return float(torch.special.entr(x).add(torch.special.entr(1 - x)).sum(-1).mean())


# --------------------------------------------------------------------------------- the models


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _GaussianLatentModel(nn.Module):
    """What the VAE and the conditional VAE share: an encoder to $(\\mu, \\log\\sigma^2)$, a
    decoder to pixel logits, and the negative ELBO. `cond_dim` extra inputs (a one-hot label)
    are appended to both networks' inputs."""

    def __init__(self, input_dim: int, hidden: int, latent_dim: int, layers: int, beta: float,
                 cond_dim: int) -> None:
        super().__init__()
        if latent_dim <= 0:
            raise ValueError(f"latent_dim must be a positive number of latent dimensions, got "
                             f"{latent_dim}; use latent_dim=2 to draw the latent space")
        if hidden <= 0 or layers <= 0:
            raise ValueError(f"hidden (width, got {hidden}) and layers (hidden layers per network, "
                             f"got {layers}) must be positive, e.g. hidden=256, layers=2")
        if input_dim <= 0:
            raise ValueError(f"input_dim must be the number of pixels (64 for the 8x8 digits), "
                             f"got {input_dim}")
        if beta < 0:
            raise ValueError(f"beta weighs the KL term and must be >= 0 (1 is the ELBO), got {beta}")
        self.input_dim, self.latent_dim, self.beta = input_dim, latent_dim, float(beta)
        self.cond_dim = cond_dim
        self.encoder = _mlp([input_dim + cond_dim] + [hidden] * layers + [2 * latent_dim])
        self.decoder = _mlp([latent_dim + cond_dim] + [hidden] * layers + [input_dim])

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected a batch of flattened images, shape (batch, "
                             f"{self.input_dim}), i.e. {self.input_dim} features; got "
                             f"{tuple(x.shape)}. Flatten 8x8 images with x.reshape(len(x), -1)")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"pixels must be intensities in [0, 1] (the Bernoulli likelihood "
                             f"treats them as ink probabilities), got values in "
                             f"[{x.min().item():.3g}, {x.max().item():.3g}]; divide the raw "
                             f"0..16 digits by 16 (load_digits_data does)")
        return x.to(self.encoder[0].weight)  # the model's dtype and device

    def _stats(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(inputs).chunk(2, dim=-1)
        return mu, logvar

    def _objective(self, x: torch.Tensor, cond: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The negative ELBO with one reparameterised sample of $z$ per example."""
        extra = [] if cond is None else [cond]
        mu, logvar = self._stats(torch.cat([x, *extra], dim=-1))
        z = reparameterise(mu, logvar)
        logits = self.decoder(torch.cat([z, *extra], dim=-1))
        reconstruction = -bernoulli_log_likelihood(logits, x)  # nats, per example
        kl = gaussian_kl(mu, logvar)
        loss = (reconstruction + self.beta * kl).mean()
        return {"loss": loss, "reconstruction": reconstruction.mean(), "kl": kl.mean(),
                "logits": logits, "mu": mu, "logvar": logvar}

    def _prior_draws(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        if n < 1:
            raise ValueError(f"n must be >= 1 (how many digits to draw), got {n}")
        weight = self.decoder[0].weight
        return torch.randn((n, self.latent_dim), generator=generator, dtype=weight.dtype
                           ).to(weight.device)


class VAE(_GaussianLatentModel):
    """
    ## The variational autoencoder

    Two small MLPs (`layers` hidden layers of width `hidden`, ReLU):

    * the **encoder** maps a digit's 64 pixels to $(\\mu, \\log\\sigma^2)$, the mean and the
      log-variance of $q(z \\mid x)$, `latent_dim` numbers each;
    * the **decoder** maps a code $z$ to 64 logits, one per pixel, read as Bernoulli ink
      probabilities (`bernoulli_log_likelihood` explains the convention).

    `forward(x)` computes the training objective, the negative ELBO per example with one sample
    of $z$, averaged over the batch:

    $$\\mathcal L = \\frac1B \\sum_i \\Big(\\underbrace{-\\log p(x_i \\mid z_i)}_{\\texttt{reconstruction}}
    + \\beta\\, \\underbrace{\\mathrm{KL}(q(z \\mid x_i) \\,\\|\\, p(z))}_{\\texttt{kl}}\\Big),
    \\qquad z_i = \\mu(x_i) + \\sigma(x_i) \\odot \\varepsilon_i.$$

    With $\\beta = 1$ (the default) this is exactly the negative ELBO; $\\beta > 1$ (the
    β-VAE) buys a smoother, more disentangled latent space with worse reconstructions. The
    returned dict has `loss` (what the trainer minimises), the batch means of `reconstruction`
    and `kl` (nats), and the per-example `logits`, `mu` and `logvar`.
    """

    def __init__(self, input_dim: int = N_PIXELS, hidden: int = 256, latent_dim: int = 2,
                 layers: int = 2, beta: float = 1.0) -> None:
        super().__init__(input_dim, hidden, latent_dim, layers, beta, cond_dim=0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's `(mu, logvar)` for a batch of digits `(batch, 64)`."""
        return self._stats(self._check_x(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's pixel logits `(batch, 64)` for codes `(batch, latent_dim)`; the ink
        probabilities are `torch.sigmoid` of them."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._objective(self._check_x(x), None)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` new digits: $z \\sim \\mathcal N(0, I)$, decoded to ink probabilities `(n, 64)`.
        These are the Bernoulli *means*; flipping a coin per pixel would add salt-and-pepper
        noise that says nothing about the digit's shape, which lives in $z$."""
        with eval_mode(self):
            return torch.sigmoid(self.decode(self._prior_draws(n, generator)))

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """The decoded ink probabilities `(steps, 64)` along the straight line between the
        encoder means of two digits, $z_t = (1 - t)\\,\\mu(x_a) + t\\,\\mu(x_b)$ for `steps`
        values of $t$ from 0 to 1: in a well-trained latent space every point on the way
        decodes to a plausible digit, morphing from one into the other."""
        if steps < 2:
            raise ValueError(f"steps must be >= 2 (the two ends), got {steps}")
        with eval_mode(self):
            mu_a, _ = self.encode(x_a.reshape(1, -1))
            mu_b, _ = self.encode(x_b.reshape(1, -1))
            t = torch.linspace(0, 1, steps, dtype=mu_a.dtype, device=mu_a.device)[:, None]
            return torch.sigmoid(self.decode((1 - t) * mu_a + t * mu_b))


class ConditionalVAE(_GaussianLatentModel):
    """
    ## The conditional VAE

    The same model told which digit it is looking at: the label $y$, one-hot, is appended to the
    encoder's input *and* to the decoder's, so the networks model $q(z \\mid x, y)$ and
    $p(x \\mid z, y)$ and the bound is on $\\log p(x \\mid y)$. Since the decoder is handed the
    digit's identity, the code $z$ is free to carry only *style* (slant, thickness, size), and
    asking for a "7" is decoding any $z \\sim \\mathcal N(0, I)$ together with the label 7
    (`generate`). `forward(x, y)` returns the same dict as `VAE.forward`.
    """

    def __init__(self, input_dim: int = N_PIXELS, hidden: int = 256, latent_dim: int = 2,
                 layers: int = 2, beta: float = 1.0, n_classes: int = N_CLASSES) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 (10 for the digits), got {n_classes}")
        super().__init__(input_dim, hidden, latent_dim, layers, beta, cond_dim=n_classes)
        self.n_classes = n_classes

    def one_hot(self, y: torch.Tensor) -> torch.Tensor:
        """Labels `(batch,)` as one-hot rows `(batch, n_classes)`, checked to be in range."""
        y = torch.as_tensor(y)
        if y.ndim != 1 or y.is_floating_point():
            raise ValueError(f"labels must be a 1-D integer tensor (one digit per image), got "
                             f"shape {tuple(y.shape)} and dtype {y.dtype}")
        if y.numel() and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must be in 0..{self.n_classes - 1} (n_classes="
                             f"{self.n_classes}), got values in [{y.min().item()}, "
                             f"{y.max().item()}]")
        weight = self.decoder[0].weight
        return F.one_hot(y.long(), self.n_classes).to(weight.dtype).to(weight.device)

    def _check_pair(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, cond = self._check_x(x), self.one_hot(y)
        if len(cond) != len(x):
            raise ValueError(f"{len(x)} images but {len(cond)} labels: pass one label per image")
        return x, cond

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's `(mu, logvar)` for digits `x` `(batch, 64)` with labels `y` `(batch,)`."""
        x, cond = self._check_pair(x, y)
        return self._stats(torch.cat([x, cond], dim=-1))

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pixel logits `(batch, 64)` for codes `z` and the labels `y` to draw."""
        cond = self.one_hot(y)
        if len(cond) != len(z):
            raise ValueError(f"{len(z)} codes but {len(cond)} labels: pass one label per code")
        return self.decoder(torch.cat([z, cond], dim=-1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x, cond = self._check_pair(x, y)
        return self._objective(x, cond)

    @torch.no_grad()
    def generate(self, digits: Sequence[int] = tuple(range(N_CLASSES)), n_per_digit: int = 8,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n_per_digit` new images of each of `digits`, as ink probabilities (Bernoulli means)
        `(len(digits) * n_per_digit, 64)`, digit by digit, and the labels asked for. Drawn with
        `nrow=len(digits)` in `plot_digit_grid`, each row is one digit in many styles."""
        if n_per_digit < 1:
            raise ValueError(f"n_per_digit must be >= 1, got {n_per_digit}")
        labels = torch.as_tensor(list(digits), dtype=torch.long).repeat_interleave(n_per_digit)
        if labels.numel() == 0:
            raise ValueError("digits is empty: ask for at least one digit, e.g. range(10)")
        with eval_mode(self):
            z = self._prior_draws(len(labels), generator)
            return torch.sigmoid(self.decode(z, labels)), labels


def _condition(model: nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    """The one-hot labels a conditional model needs (checking they were given), else None."""
    if isinstance(model, ConditionalVAE):
        if y is None:
            raise ValueError("a ConditionalVAE scores p(x | y): pass the labels, y=...")
        return model.one_hot(y)
    if y is not None:
        raise ValueError("a plain VAE takes no labels; drop y, or use a ConditionalVAE")
    return None


def _encode_any(model: _GaussianLatentModel, x: torch.Tensor, y: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checked `x`, the encoder's `(mu, logvar)` and the one-hot labels (None for a VAE)."""
    if not isinstance(model, _GaussianLatentModel):
        raise TypeError(f"expected a VAE or ConditionalVAE, got {type(model).__name__}")
    x = model._check_x(x)
    cond = _condition(model, y)
    if cond is not None and len(cond) != len(x):
        raise ValueError(f"{len(x)} images but {len(cond)} labels: pass one label per image")
    extra = [] if cond is None else [cond]
    mu, logvar = model._stats(torch.cat([x, *extra], dim=-1))
    return x, mu, logvar, cond


@torch.no_grad()
def elbo(model: VAE | ConditionalVAE, x: torch.Tensor, y: torch.Tensor | None = None,
         n_samples: int = 1, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """
    ## Scoring digits with the ELBO

    Per example (no gradients, dropout-free eval mode): `reconstruction` is
    $\\mathbb E_q[\\log p(x \\mid z)]$ estimated with `n_samples` draws of $z$, `kl` is the
    closed-form $\\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z))$, and `elbo` is their difference, a
    lower bound on $\\log p(x)$ in nats ($\\beta$ plays no part: this is the bound itself, not
    the training loss). More samples make the estimate less noisy, not the bound tighter;
    `importance_weighted_nll` tightens it. A `ConditionalVAE` also needs the labels `y`.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    with eval_mode(model):
        x, mu, logvar, cond = _encode_any(model, x, y)
        extra = [] if cond is None else [cond]
        reconstruction = torch.zeros(len(x), dtype=mu.dtype, device=mu.device)
        for _ in range(n_samples):
            z = reparameterise(mu, logvar, generator)
            logits = model.decoder(torch.cat([z, *extra], dim=-1))
            reconstruction += bernoulli_log_likelihood(logits, x)
        reconstruction /= n_samples
        kl = gaussian_kl(mu, logvar)
    return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl}


@torch.no_grad()
def importance_weighted_nll(model: VAE | ConditionalVAE, x: torch.Tensor,
                            y: torch.Tensor | None = None, k: int = 100,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """
    ## A tighter bound: importance weighting

    The likelihood is an expectation under the encoder too,
    $p(x) = \\mathbb E_{q(z \\mid x)}\\big[p(x \\mid z)\\, p(z) / q(z \\mid x)\\big]$, so averaging
    $k$ importance weights $w_s$ *inside* the log (Burda et al. 2016) gives

    $$\\log p(x) \\;\\ge\\; \\mathbb E\\Big[\\log \\tfrac1k \\textstyle\\sum_{s=1}^k w_s\\Big]
    \\;\\ge\\; \\text{ELBO},$$

    a bound that grows with $k$ and reaches $\\log p(x)$ as $k \\to \\infty$; $k = 1$ is the
    ELBO. Returns minus the bound per example: an upper bound on the negative log-likelihood
    in nats, closer to the truth than $-$ELBO.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 importance samples, got {k}")
    with eval_mode(model):
        x, mu, logvar, cond = _encode_any(model, x, y)
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps  # (k, batch, latent)
        inputs = z if cond is None else torch.cat([z, cond.expand(k, -1, -1)], dim=-1)
        log_lik = bernoulli_log_likelihood(model.decoder(inputs), x.expand(k, -1, -1))
        log_w = (log_lik + _log_normal(z, torch.zeros_like(mu), torch.zeros_like(logvar))
                 - _log_normal(z, mu, logvar))
        return -(torch.logsumexp(log_w, dim=0) - math.log(k))


def independent_pixel_nll(train: torch.Tensor, test: torch.Tensor, pseudo_count: float = 1.0,
                          per_example: bool = False) -> float | torch.Tensor:
    """
    ## The baseline: 64 independent pixels

    The simplest generative model of the digits draws every pixel on its own, with the ink
    probability that pixel has on average in the training set. Its exact negative
    log-likelihood per test digit (same Bernoulli convention as the VAE,
    `bernoulli_log_likelihood`) is

    $$-\\frac1{N} \\sum_{i=1}^{N} \\sum_{j=1}^{64} x_{ij} \\log p_j + (1 - x_{ij}) \\log(1 - p_j),
    \\qquad p_j = \\frac{\\sum_{\\text{train}} x_j + \\alpha}{n_{\\text{train}} + 2\\alpha},$$

    where the pseudo-count $\\alpha$ (Laplace smoothing, `pseudo_count`) keeps $p_j$ off 0 and 1:
    a corner pixel that is blank in every training digit would otherwise give a test digit
    with a speck of ink there an infinite loss. It models where ink tends to go, but not that
    the pixels of a stroke come together; that is what the VAE's latent code adds.
    Returns the mean over the test digits, or with `per_example=True` one value per test digit
    (for a paired comparison with the VAE's per-digit $-$ELBO).
    """
    train, test = torch.as_tensor(train, dtype=torch.float64), torch.as_tensor(test, dtype=torch.float64)
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"train {tuple(train.shape)} and test {tuple(test.shape)} must both be "
                         f"(n, features) with the same features, e.g. data.x_train, data.x_test")
    if len(train) == 0 or len(test) == 0:
        raise ValueError("train and test must each hold at least one digit")
    if pseudo_count < 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
    p = (train.sum(0) + pseudo_count) / (len(train) + 2 * pseudo_count)
    nll = -(test * torch.log(p) + (1 - test) * torch.log1p(-p)).sum(-1)
    return nll.float() if per_example else float(nll.mean())


# ---------------------------------------------------------------------------------- training


def train_vae(model: VAE | ConditionalVAE, data: DigitSplit, steps: int = 1500,
              batch_size: int = 128, lr: float = 5e-3, seed: int = 0, eval_every: int | None = None,
              weight_decay: float = 0.0, progress: bool = False) -> pd.DataFrame:
    """
    Train a `VAE` (batches of digits) or a `ConditionalVAE` (batches of `(digits, labels)`,
    passed to `forward` positionally) with the course's trainer: AdamW, a 5% warm-up, then a
    cosine decay, reshuffling the training digits every pass. The held-out `eval_loss` is the
    test digits' negative ELBO (one sample of $z$, weighted by the model's $\\beta$), computed
    every `eval_every` steps and at the end. The noise of the reparameterisation comes from
    PyTorch's global generator, seeded with `seed` here, so a run repeats exactly. Returns the
    trainer's history; the model is left in train mode.
    """
    conditional = isinstance(model, ConditionalVAE)
    if not isinstance(model, _GaussianLatentModel):
        raise TypeError(f"expected a VAE or ConditionalVAE, got {type(model).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch.manual_seed(seed)
    train_set = TensorDataset(*((data.x_train, data.y_train) if conditional else (data.x_train,)))
    test_set = TensorDataset(*((data.x_test, data.y_test) if conditional else (data.x_test,)))
    # The sampler hands over whole index batches, so the dataset is indexed once per batch
    # (not once per digit followed by a `stack`).
    order = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
    batches = BatchSampler(order, batch_size=min(batch_size, len(train_set)), drop_last=True)
    train_loader = DataLoader(train_set, sampler=batches, batch_size=None)
    test_loader = DataLoader(test_set, batch_size=1024)
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.05, schedule="cosine",
                         weight_decay=weight_decay, eval_every=eval_every,
                         log_every=max(1, steps // 20), progress=progress,
                         desc="conditional VAE" if conditional else "VAE")
    return Trainer(model, train_loader, config, eval_data=test_loader).train()


# ------------------------------------------------------------------------------------ judging


class DigitJudge(nn.Module):
    """
    ## The judge

    A small classifier of *real* digits (64 pixels, one hidden layer of `hidden` ReLU units,
    dropout), used to read generated ones. `forward(x, y)` returns the cross-entropy loss for
    the trainer; `predict(images)` the most likely digit of each `(n, 64)` image with pixels in
    $[0, 1]$. `test_accuracy` is filled in by `train_digit_classifier`.
    """

    def __init__(self, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        if hidden <= 0:
            raise ValueError(f"hidden must be a positive width, e.g. 128; got {hidden}")
        self.net = nn.Sequential(nn.Linear(N_PIXELS, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, N_CLASSES))
        self.test_accuracy = float("nan")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x), y)

    @torch.no_grad()
    def predict(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """The predicted digit for each `(n, 64)` (or `(n, 8, 8)`) image, pixels in $[0, 1]$."""
        x = torch.as_tensor(np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor)
                                       else images), dtype=torch.float32)
        x = x.reshape(len(x), -1)
        if x.shape[1] != N_PIXELS:
            raise ValueError(f"the judge reads (n, {N_PIXELS}) images, got {tuple(x.shape)}")
        with eval_mode(self):
            return self.net(x.to(self.net[0].weight.device)).argmax(-1).cpu().numpy()


def train_digit_classifier(data: DigitSplit, steps: int = 600, batch_size: int = 128,
                           lr: float = 3e-3, hidden: int = 128, seed: int = 0,
                           progress: bool = False) -> DigitJudge:
    """
    Train the judge (`DigitJudge`) on the real training digits with the course's trainer and
    record its accuracy on the real test digits in `test_accuracy` (about 97-98%). That
    accuracy is the ceiling for any share of generated digits it reads correctly.
    """
    torch.manual_seed(seed)
    judge = DigitJudge(hidden)
    train_set = TensorDataset(data.x_train, data.y_train)
    order = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed))
    batches = BatchSampler(order, batch_size=min(batch_size, len(train_set)), drop_last=True)
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=0.05, schedule="cosine",
                         log_every=max(1, steps // 10), progress=progress, desc="digit judge")
    Trainer(judge, DataLoader(train_set, sampler=batches, batch_size=None), config).train()
    judge.eval().requires_grad_(False)
    judge.test_accuracy = float((judge.predict(data.x_test) == data.y_test.numpy()).mean())
    return judge


def judge_generated(cvae: ConditionalVAE, classifier: DigitJudge, n_per_digit: int = 100,
                    generator: torch.Generator | None = None,
                    digits: Sequence[int] = tuple(range(N_CLASSES)), seed: int = 0
                    ) -> pd.DataFrame:
    """
    ## Does the conditional VAE draw the digit it was asked for?

    Generate `n_per_digit` images of each digit and let the judge read them. The images are
    the decoder's Bernoulli *means* (ink probabilities), not coin flips per pixel: the judge was
    trained on smooth grey-level digits, and per-pixel noise would test its robustness to
    salt and pepper rather than the generator's idea of the digit.

    One row per digit and a last row `"all"`: `share` of the images the judge reads as the
    digit asked for, with a 95% percentile-bootstrap interval (`low`, `high`; resampling the
    generated images, `seed`) from `evaluation.bootstrap_ci`. The share is capped by the judge's
    own accuracy, which is worth quoting next to it.
    """
    if not isinstance(cvae, ConditionalVAE):
        raise TypeError(f"judge_generated needs a ConditionalVAE (it asks for given digits), "
                        f"got {type(cvae).__name__}")
    images, labels = cvae.generate(digits, n_per_digit, generator)
    correct = (classifier.predict(images) == labels.numpy()).astype(np.float64)
    rows = []
    for digit in [*dict.fromkeys(int(d) for d in digits), "all"]:
        mask = np.ones_like(correct, dtype=bool) if digit == "all" else labels.numpy() == digit
        ci = bootstrap_ci(np.mean, correct[mask], seed=seed)
        rows.append({"digit": digit, "n": int(mask.sum()), "share": ci["estimate"],
                     "low": ci["low"], "high": ci["high"]})
    return pd.DataFrame(rows).set_index("digit")


# ----------------------------------------------------------------------------------- plotting


def _as_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 2 and x.shape[1] == N_PIXELS:
        x = x.reshape(len(x), 8, 8)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(f"images must be (n, 64) or (n, 8, 8) digits, got shape {x.shape}")
    return x


def plot_digit_grid(images: torch.Tensor | np.ndarray, nrow: int, ax=None,
                    titles: Sequence[str] | None = None, title: str | None = None):
    """Draw `(n, 64)` (or `(n, 8, 8)`) images with pixels in $[0, 1]$ as one mosaic of `nrow`
    rows, filled row by row (ink dark on white), optionally with a small title over each
    image; return the `Axes`."""
    x = _as_images(images)
    n = len(x)
    if nrow < 1 or n == 0:
        raise ValueError(f"need nrow >= 1 and at least one image, got nrow={nrow}, {n} images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images: pass one title per image")
    ncol = math.ceil(n / nrow)
    gap = 1
    top = 3 if titles is not None else 0  # room for a title over every tile
    cell_w, cell_h = 8 + gap, 8 + gap + top
    mosaic = np.zeros((nrow * cell_h - gap, ncol * cell_w - gap))
    for i, image in enumerate(x):
        r, c = divmod(i, ncol)
        mosaic[r * cell_h + top: r * cell_h + top + 8, c * cell_w: c * cell_w + 8] = image
    if ax is None:
        _, ax = plt.subplots(figsize=(max(2.0, 0.6 * ncol), max(2.0, 0.6 * nrow * cell_h / 9)))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    for i, text in enumerate(titles or []):
        r, c = divmod(i, ncol)
        ax.text(c * cell_w + 3.5, r * cell_h + top - 0.6, str(text), ha="center", va="bottom",
                fontsize=7)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def _check_2d(model: nn.Module) -> None:
    if not isinstance(model, _GaussianLatentModel):
        raise TypeError(f"expected a VAE or ConditionalVAE, got {type(model).__name__}")
    if model.latent_dim != 2:
        raise ValueError(f"this plot draws a 2-D latent space, but the model has latent_dim="
                         f"{model.latent_dim}; train one with latent_dim=2")


@torch.no_grad()
def plot_latent_space(model: VAE | ConditionalVAE, data: DigitSplit, ax=None, split: str = "test"):
    """Scatter the encoder means $\\mu(x)$ of the `split` digits (`"test"` or `"train"`) in the
    2-D latent plane, coloured by their label, over the prior's 1σ and 2σ circles; return the
    `Axes`. A good VAE puts each digit in its own region of the plane, without being told the
    labels; a conditional VAE, which is told them, mixes the digits (its code holds style)."""
    _check_2d(model)
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    with eval_mode(model):
        _, mu, _, _ = _encode_any(model, x, y if isinstance(model, ConditionalVAE) else None)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    mu = mu.cpu().numpy()
    for digit in range(N_CLASSES):
        keep = y.numpy() == digit
        ax.scatter(mu[keep, 0], mu[keep, 1], s=6, color=f"C{digit}", label=str(digit))
    for radius in (1, 2):
        ax.add_patch(plt.Circle((0, 0), radius, fill=False, linestyle="--", color="0.6"))
    ax.set(xlabel="$z_1$", ylabel="$z_2$", title=f"latent means of the {split} digits",
           aspect="equal")
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1), title="digit",
              title_fontsize=7)
    return ax


@torch.no_grad()
def decode_grid(model: VAE | ConditionalVAE, n: int = 12, span: float = 2.0, ax=None,
                digit: int | None = None):
    """Decode an `n × n` grid of codes spanning $[-\\text{span}, \\text{span}]^2$ of the latent
    plane (in prior standard deviations; $z_1$ left to right, $z_2$ bottom to top) and draw the
    ink probabilities as a mosaic; return the `Axes`. For a `ConditionalVAE` pass the `digit`
    to draw: the plane then shows that digit's styles."""
    _check_2d(model)
    if n < 2 or span <= 0:
        raise ValueError(f"need n >= 2 and span > 0, got n={n}, span={span}")
    values = torch.linspace(-span, span, n)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")  # top row: largest z2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=-1).to(model.decoder[0].weight)
    with eval_mode(model):
        if isinstance(model, ConditionalVAE):
            if digit is None:
                raise ValueError("a ConditionalVAE draws a given digit: pass digit=0..9")
            logits = model.decode(z, torch.full((len(z),), int(digit)))
        else:
            if digit is not None:
                raise ValueError("a plain VAE takes no digit; drop digit=, or use a ConditionalVAE")
            logits = model.decode(z)
    ax = plot_digit_grid(torch.sigmoid(logits), nrow=n, ax=ax)
    label = "" if digit is None else f" (digit {digit})"
    ax.set_title(f"decoded latent plane, z in [-{span:g}, {span:g}]²{label}", fontsize=9)
    return ax
