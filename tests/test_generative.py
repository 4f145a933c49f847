"""Tests of `llm_tutorial.generative` (notebook 14): the KL in closed form against a hand
computation and PyTorch, its Monte Carlo estimate within its own standard error, gradients
through the reparameterisation, exact ELBOs of hand-set models, the independent-pixel baseline
by hand, and short training runs of the VAE (beating the baseline) and the conditional VAE."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from llm_tutorial import generative as gen


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def data() -> gen.DigitSplit:
    return gen.load_digits_data()


@pytest.fixture(scope="module")
def trained_vae(data):
    """A small 2-D VAE after a short run, with its history."""
    torch.manual_seed(0)
    model = gen.VAE(hidden=128)
    history = gen.train_vae(model, data, steps=400, lr=5e-3, seed=0)
    return model, history


@pytest.fixture(scope="module")
def trained_cvae(data):
    torch.manual_seed(0)
    model = gen.ConditionalVAE(hidden=128)
    gen.train_vae(model, data, steps=400, lr=5e-3, seed=0)
    return model


# ------------------------------------------------------------------------------------- data


def test_digits_are_64_pixels_in_unit_interval_with_a_stratified_split(data):
    assert data.x_train.shape == (1347, 64) and data.x_test.shape == (450, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0 <= data.x_train.min() and data.x_train.max() == 1  # 16/16 is the darkest ink
    train_share = torch.bincount(data.y_train, minlength=10) / len(data.y_train)
    test_share = torch.bincount(data.y_test, minlength=10) / len(data.y_test)
    assert torch.allclose(train_share, test_share, atol=0.005)
    with pytest.raises(ValueError, match="fraction"):
        gen.load_digits_data(test_size=450)


# ---------------------------------------------------------------------------------- the KL


def test_gaussian_kl_matches_a_hand_computation_and_torch():
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    # 1/2 [(1 + 1 - 0 - 1) + (0 + 4 - log 4 - 1)] = 2 - log 2; the prior itself: 0
    assert torch.allclose(gen.gaussian_kl(mu, logvar), torch.tensor([2 - math.log(2), 0.0]))

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.allclose(gen.gaussian_kl(mu, logvar), expected, atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        gen.gaussian_kl(mu, logvar[:, :2])


def test_monte_carlo_kl_agrees_with_the_closed_form_within_its_standard_error():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    exact = gen.gaussian_kl(mu, logvar)
    estimate, std_error = gen.monte_carlo_kl(mu, logvar, 20_000, g, return_std_error=True)
    assert (std_error < 0.05).all()  # the tolerance below is tight, not vacuous
    assert ((estimate - exact).abs() < 5 * std_error).all()
    # the error shrinks like 1/sqrt(S): 100x the samples, a tenth of the standard error
    _, small = gen.monte_carlo_kl(mu, logvar, 200, torch.Generator().manual_seed(2), True)
    ratio = small / std_error
    assert ((ratio > 7) & (ratio < 13)).all(), ratio
    # same generator seed, same estimate
    a = gen.monte_carlo_kl(mu, logvar, 10, torch.Generator().manual_seed(3))
    b = gen.monte_carlo_kl(mu, logvar, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (4,)


def test_reparameterised_samples_pass_gradients_to_mu_and_logvar():
    mu = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    logvar = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    z = gen.reparameterise(mu, logvar, torch.Generator().manual_seed(0))
    z.sum().backward()
    sigma = (0.5 * logvar).exp().detach()
    eps = (z.detach() - mu.detach()) / sigma
    assert torch.equal(mu.grad, torch.ones(3))  # dz/dmu = 1
    assert torch.allclose(logvar.grad, 0.5 * sigma * eps)  # dz/dlogvar = sigma * eps / 2
    assert logvar.grad.abs().min() > 0
    again = gen.reparameterise(mu.detach(), logvar.detach(), torch.Generator().manual_seed(0))
    assert torch.equal(again, z.detach())


# ------------------------------------------------------------------------------- the ELBO


def _hand_set(model: gen.VAE, mu: list[float], logvar: list[float], logit_bias: torch.Tensor) -> None:
    """Make the encoder output (mu, logvar) and the decoder `logit_bias` whatever the input."""
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.tensor(mu + logvar))
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.copy_(logit_bias)


def test_elbo_of_the_coin_flip_model_is_minus_64_log_2(data):
    model = gen.VAE(hidden=16)
    _hand_set(model, [0.0, 0.0], [0.0, 0.0], torch.zeros(64))
    # q = prior (KL 0), every pixel p = 1/2: x log 1/2 + (1 - x) log 1/2 = -log 2 for any x
    x = torch.cat([data.x_test[:5], torch.zeros(1, 64), torch.ones(1, 64)])
    terms = gen.elbo(model, x, n_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(terms["elbo"], torch.full((7,), -64 * math.log(2)))
    assert torch.equal(terms["kl"], torch.zeros(7))
    # with q equal to the prior every importance weight is p(x | z): the bound is exact
    nll = gen.importance_weighted_nll(model, x, k=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(nll, torch.full((7,), 64 * math.log(2)))


def test_elbo_of_a_hand_set_model_equals_the_closed_form(data):
    model = gen.VAE(hidden=16)
    bias = torch.linspace(-3, 3, 64)
    mu, logvar = [0.5, -1.0], [math.log(0.25), 0.3]
    _hand_set(model, mu, logvar, bias)
    x = data.x_test[:4]
    p = torch.sigmoid(bias).double()
    log_lik = (x.double() * p.log() + (1 - x.double()) * (1 - p).log()).sum(-1)
    kl = 0.5 * sum(m * m + math.exp(v) - v - 1 for m, v in zip(mu, logvar, strict=True))
    terms = gen.elbo(model, x)
    assert torch.allclose(terms["reconstruction"].double(), log_lik, atol=1e-4)
    assert torch.allclose(terms["kl"], torch.full((4,), kl))
    assert torch.allclose(terms["elbo"].double(), log_lik - kl, atol=1e-4)
    # the training loss is the same number, averaged over the batch (beta=1)
    out = model(x)
    assert out["loss"].item() == pytest.approx(-(log_lik - kl).mean().item(), abs=1e-4)
    assert set(out) >= {"loss", "reconstruction", "kl", "logits", "mu", "logvar"}
    # beta weighs the KL term only
    model.beta = 3.0
    assert model(x)["loss"].item() == pytest.approx(-log_lik.mean().item() + 3 * kl, abs=1e-4)


def test_independent_pixel_nll_matches_a_hand_computation():
    train = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    test = torch.tensor([[1.0, 0.0]])
    # Laplace: p = ((0 + 1) + 1) / (2 + 2) = 1/2 and (2 + 1) / 4 = 3/4; -log(1/2) - log(1/4)
    assert gen.independent_pixel_nll(train, test) == pytest.approx(3 * math.log(2))
    # no smoothing, grey levels: p = (0.5, 0.25) scores each test digit by its own entropy
    grey = torch.tensor([[0.5, 0.25]])
    entropy = math.log(2) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert gen.independent_pixel_nll(grey, grey, pseudo_count=0) == pytest.approx(entropy)
    assert gen.entropy_floor(grey) == pytest.approx(entropy)
    per = gen.independent_pixel_nll(train, torch.cat([test, test]), per_example=True)
    assert per.shape == (2,) and per[0].item() == pytest.approx(3 * math.log(2))
    with pytest.raises(ValueError, match="same features"):
        gen.independent_pixel_nll(train, torch.zeros(1, 3))


def test_bernoulli_log_likelihood_is_minus_bce_summed_over_pixels():
    logits, x = torch.randn(3, 64), torch.rand(3, 64)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(gen.bernoulli_log_likelihood(logits, x), expected)


# -------------------------------------------------------------------------------- training


def test_vae_learns_and_beats_the_independent_pixel_baseline(data, trained_vae):
    model, history = trained_vae
    assert isinstance(history, pd.DataFrame)
    losses = history["train_loss"].to_numpy()
    assert losses[-1] < losses[0] - 10, losses  # ~40 -> ~26 nats
    baseline = gen.independent_pixel_nll(data.x_train, data.x_test)
    terms = gen.elbo(model, data.x_test, n_samples=5, generator=torch.Generator().manual_seed(0))
    neg_elbo = -terms["elbo"].mean().item()
    assert neg_elbo < baseline - 1.5, (neg_elbo, baseline)  # an upper bound below an exact NLL
    assert neg_elbo > gen.entropy_floor(data.x_test)  # and no model goes below the floor
    # importance weighting tightens the bound
    iw = gen.importance_weighted_nll(model, data.x_test, k=50, generator=torch.Generator().manual_seed(0))
    assert iw.mean().item() < neg_elbo
    assert history["eval_loss"].dropna().iloc[-1] == pytest.approx(neg_elbo, abs=0.5)


def test_training_repeats_exactly_with_the_same_seed(data):
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        histories.append(gen.train_vae(gen.VAE(hidden=16), data, steps=20, seed=3))
    pd.testing.assert_frame_equal(histories[0].drop(columns="elapsed_s"),
                                  histories[1].drop(columns="elapsed_s"))


def test_sample_interpolate_and_the_latent_plots(data, trained_vae):
    model, _ = trained_vae
    a = model.sample(6, torch.Generator().manual_seed(0))
    assert a.shape == (6, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, model.sample(6, torch.Generator().manual_seed(0)))
    path = model.interpolate(data.x_test[0], data.x_test[1], steps=5)
    assert path.shape == (5, 64)
    mu, _ = model.encode(data.x_test[:2])
    assert torch.allclose(path[0], torch.sigmoid(model.decode(mu[:1]))[0], atol=1e-6)
    assert torch.allclose(path[-1], torch.sigmoid(model.decode(mu[1:]))[0], atol=1e-6)

    ax = gen.plot_latent_space(model, data)
    assert len(ax.collections) == 10  # one scatter per digit
    ax = gen.decode_grid(model, n=5)
    assert ax.images[0].get_array().shape == (5 * 9 - 1, 5 * 9 - 1)
    ax = gen.plot_digit_grid(data.x_test[:6], nrow=2, titles=list("abcdef"))
    assert ax.images[0].get_array().shape == (2 * 12 - 1, 3 * 9 - 1)  # 3 rows of pixels for titles
    assert gen.plot_digit_grid(data.x_test[:6], nrow=2).images[0].get_array().shape == (17, 26)
    assert [t.get_text() for t in ax.texts] == list("abcdef")


def test_conditional_vae_generates_the_digits_asked_for(data, trained_cvae):
    images, labels = trained_cvae.generate([3, 7], n_per_digit=4,
                                           generator=torch.Generator().manual_seed(0))
    assert images.shape == (8, 64) and labels.tolist() == [3] * 4 + [7] * 4
    assert 0 <= images.min() and images.max() <= 1

    judge = gen.train_digit_classifier(data, steps=300)
    assert judge.test_accuracy > 0.93
    table = gen.judge_generated(trained_cvae, judge, n_per_digit=20,
                                generator=torch.Generator().manual_seed(0))
    assert list(table.index) == [*range(10), "all"]
    assert (table["n"].iloc[:10] == 20).all() and table.loc["all", "n"] == 200
    assert table.loc["all", "share"] > 0.8
    assert (table["low"] <= table["share"]).all() and (table["share"] <= table["high"]).all()
    # conditioning matters: the same code decodes to different digits under different labels
    z = torch.zeros(2, 2)
    assert not torch.allclose(trained_cvae.decode(z, torch.tensor([0, 1]))[0],
                              trained_cvae.decode(z, torch.tensor([0, 1]))[1])
    terms = gen.elbo(trained_cvae, data.x_test, data.y_test)
    assert terms["elbo"].shape == (450,)
    assert gen.decode_grid(trained_cvae, n=3, digit=4).images


# ----------------------------------------------------------------------------------- errors


def test_learner_mistakes_get_messages_that_name_the_fix(data):
    with pytest.raises(ValueError, match="latent_dim"):
        gen.VAE(latent_dim=0)
    with pytest.raises(ValueError, match="hidden"):
        gen.VAE(hidden=0)
    model = gen.VAE(hidden=8)
    with pytest.raises(ValueError, match="64 features"):
        model(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="divide the raw"):
        model(data.x_test[:4] * 16)
    cvae = gen.ConditionalVAE(hidden=8)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        cvae(data.x_test[:2], torch.tensor([3, 10]))
    with pytest.raises(ValueError, match="one label per image"):
        cvae(data.x_test[:2], torch.tensor([3]))
    with pytest.raises(ValueError, match="pass the labels"):
        gen.elbo(cvae, data.x_test[:2])
    with pytest.raises(ValueError, match="no labels"):
        gen.elbo(model, data.x_test[:2], data.y_test[:2])
    with pytest.raises(ValueError, match="latent_dim=2"):
        gen.plot_latent_space(gen.VAE(hidden=8, latent_dim=3), data)
    with pytest.raises(ValueError, match="digit="):
        gen.decode_grid(cvae)
    with pytest.raises(ValueError, match="one title per image"):
        gen.plot_digit_grid(data.x_test[:3], nrow=1, titles=["a"])
    with pytest.raises(TypeError, match="ConditionalVAE"):
        gen.judge_generated(model, None)
