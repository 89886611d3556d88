"""The diffusion process: forward noising, DDPM and DDIM reverse steps, sampling (qdiff_lib.diffusion)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from qdiff_lib.diffusion import Diffusion, ddim_timesteps
from qdiff_lib.noise import GaussianNoise
from qdiff_lib.schedules import get_beta_schedule

T_SMALL = 50


def _x0(batch: int = 2) -> torch.Tensor:
    return torch.linspace(-0.9, 0.9, batch * 28 * 28).reshape(batch, 1, 28, 28)


def _oracle(diffusion: Diffusion, x0: torch.Tensor):
    """The exact noise predictor for a data distribution concentrated on ``x0``:
    eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    ab = diffusion._f64["alphas_cumprod"]

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].view(-1, 1, 1, 1)
        return ((x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    return model


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [T_SMALL, 1000])
def test_schedule_properties(name, T):
    d = Diffusion.from_schedule(name, T)
    ab = d._f64["alphas_cumprod"]
    assert bool((ab[1:] < ab[:-1]).all())  # strictly decreasing
    log_snr = torch.log(ab / (1 - ab))
    assert log_snr[0] > 4.5  # the first step is almost clean
    assert log_snr[-1] < -9  # the last step is almost pure noise
    if name == "cosine" and T == 1000:  # the paper's: the first beta is clipped at 1e-4
        assert math.isclose(float(log_snr[0]), math.log((1 - 1e-4) / 1e-4), rel_tol=1e-9)


def test_coefficients_against_numpy():
    betas = get_beta_schedule("cosine", T_SMALL).numpy()
    d = Diffusion(torch.from_numpy(betas))
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(d.alphas_cumprod.numpy(), ab, rtol=1e-6)
    np.testing.assert_allclose(d.posterior_variance.numpy(), betas * (1 - ab_prev) / (1 - ab), rtol=1e-6)
    assert d.alphas_cumprod.dtype == torch.float32
    assert d._f64["alphas_cumprod"].dtype == torch.float64


def test_posterior_is_the_gaussian_conditional():
    """q(x_{t-1} | x_t, x0) from Bayes' rule on the two Gaussians, independently of the closed form."""
    betas = get_beta_schedule("linear", T_SMALL).double()
    d = Diffusion(betas)
    ab = torch.cumprod(1 - betas, 0)
    x0, x_t = _x0(3) * 0.5, _x0(3).flip(-1)
    t = torch.tensor([1, 10, 49])
    mean, var = d.posterior_mean_variance(x0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        a_prev, alpha, beta = ab[ti - 1], 1 - betas[ti], betas[ti]
        # prior x_{t-1} | x0 ~ N(sqrt(a_prev) x0, 1 - a_prev); likelihood x_t | x_{t-1} ~ N(sqrt(alpha) x_{t-1}, beta)
        precision = 1 / (1 - a_prev) + alpha / beta
        m = (a_prev.sqrt() * x0[i].double() / (1 - a_prev) + alpha.sqrt() * x_t[i].double() / beta) / precision
        torch.testing.assert_close(mean[i].double(), m, rtol=1e-5, atol=1e-5)
        assert math.isclose(float(var[i]), float(1 / precision), rel_tol=1e-5)


def test_add_noise_then_true_noise_recovers_x0():
    d = Diffusion.from_schedule("cosine", 1000)
    x0 = _x0(4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 10, 500, 900])
    x_t = d.add_noise(x0, noise, t)
    ab = d._f64["alphas_cumprod"][t].view(-1, 1, 1, 1)
    expected = ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()
    torch.testing.assert_close(x_t.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.predict_x0(x_t, t, noise), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 10), ("ddim", T_SMALL)])
def test_reverse_pass_with_the_true_noise_recovers_x0(sampler, steps):
    d = Diffusion.from_schedule("cosine", T_SMALL)
    x0 = _x0(2)
    g = torch.Generator().manual_seed(1)
    out = d.sample(_oracle(d, x0), (2, 1, 28, 28), sampler=sampler, steps=steps, generator=g)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_ddim_with_eta_zero_is_deterministic():
    d = Diffusion.from_schedule("cosine", T_SMALL)

    def model(x, t):
        return 0.3 * x + 0.001 * t.view(-1, 1, 1, 1)

    g = torch.Generator().manual_seed(7)
    a = d.sample(model, (2, 1, 28, 28), sampler="ddim", steps=10, eta=0.0, generator=g)
    state_after = g.get_state()
    g_ref = torch.Generator().manual_seed(7)
    torch.randn((2, 1, 28, 28), generator=g_ref)  # x_T is the only draw
    assert torch.equal(state_after, g_ref.get_state())
    b = d.sample(model, (2, 1, 28, 28), sampler="ddim", steps=10, eta=0.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = d.sample(model, (2, 1, 28, 28), sampler="ddim", steps=10, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(a, c)


def test_ddim_with_eta_one_over_all_steps_is_the_ddpm_step():
    d = Diffusion.from_schedule("cosine", T_SMALL)
    x_t = _x0(3) * 1.7
    eps = _x0(3).flip(-1) * 2.5  # large enough that x0_hat is clamped
    t = torch.tensor([1, 20, 49])
    ddpm = d.step(eps, t, x_t, generator=torch.Generator().manual_seed(3))
    ddim = d.ddim_step(eps, t, t - 1, x_t, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert ddpm.pred_x0.abs().max() == 1.0  # the clamp was active
    torch.testing.assert_close(ddim.prev_sample, ddpm.prev_sample, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ddim.pred_x0, ddpm.pred_x0)


def test_ddpm_step_at_t0_returns_x0_hat_without_noise():
    d = Diffusion.from_schedule("cosine", T_SMALL)
    x_t, eps = _x0(2), _x0(2) * 0.1
    out = d.step(eps, torch.tensor([0, 0]), x_t, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.prev_sample, out.pred_x0)
    torch.testing.assert_close(out.pred_x0, d.predict_x0(x_t, torch.tensor([0, 0]), eps).clamp(-1, 1))


def test_same_generator_same_samples():
    d = Diffusion.from_schedule("linear", 20)

    def model(x, t):
        return torch.tanh(x)

    a = d.sample(model, (2, 1, 28, 28), sampler="ddpm", generator=torch.Generator().manual_seed(0))
    b = d.sample(model, (2, 1, 28, 28), sampler="ddpm", generator=torch.Generator().manual_seed(0))
    c = d.sample(model, (2, 1, 28, 28), sampler="ddpm", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


class _RecordingNoise:
    """A noise source that records the timesteps it is given and returns constant noise."""

    def __init__(self):
        self.calls = []

    def sample(self, shape, generator=None, t=None):
        self.calls.append((tuple(shape), None if t is None else t.tolist()))
        return torch.full(tuple(shape), 0.5)


def test_noise_source_is_pluggable_and_receives_t():
    d = Diffusion.from_schedule("cosine", 5)
    source = _RecordingNoise()
    d.sample(lambda x, t: torch.zeros_like(x), (2, 1, 28, 28), sampler="ddpm", noise_source=source)
    assert source.calls[0] == ((2, 1, 28, 28), [4, 4])  # x_T, drawn at t = T - 1
    assert [c[1] for c in source.calls[1:]] == [[t, t] for t in (4, 3, 2, 1, 0)]
    source = _RecordingNoise()
    d.sample(lambda x, t: torch.zeros_like(x), (1, 1, 28, 28), sampler="ddim", steps=3, eta=0.5, noise_source=source)
    assert len(source.calls) == 1 + 3


def test_gaussian_noise_is_the_default():
    d = Diffusion.from_schedule("cosine", 5)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    a = d.sample(model, (1, 1, 28, 28), generator=torch.Generator().manual_seed(4))
    b = d.sample(model, (1, 1, 28, 28), generator=torch.Generator().manual_seed(4), noise_source=GaussianNoise())
    assert torch.equal(a, b)


def test_ddim_timesteps():
    pairs = ddim_timesteps(1000, 50)
    assert len(pairs) == 50 and pairs[0][0] == 999 and pairs[-1][1] == -1
    ts = [p[0] for p in pairs] + [-1]
    assert all(a > b for a, b in itertools.pairwise(ts))
    assert all(p[1] == q[0] for p, q in itertools.pairwise(pairs))
    assert ddim_timesteps(6, 6) == [(5, 4), (4, 3), (3, 2), (2, 1), (1, 0), (0, -1)]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda d: d.sample(None, (1, 1, 28, 28), sampler="euler"),
         r"unknown sampler 'euler'; allowed: \['ddpm', 'ddim'\]"),
        (lambda d: d.sample(None, (1, 1, 28, 28), sampler="ddim", steps=0), r"DDIM steps must be an integer in 1..50"),
        (lambda d: d.sample(None, (1, 1, 28, 28), sampler="ddim", steps=51), r"DDIM steps must be an integer in 1..50"),
        (lambda d: d.sample(None, (1, 1, 28, 28), sampler="ddpm", steps=10), "DDPM runs all T=50 steps"),
        (lambda d: d.sample(None, (1, 28, 28)), r"shape: expected \(B, C, H, W\)"),
        (lambda d: d.add_noise(_x0(2), _x0(2), torch.tensor([0, 50])), r"t must lie in 0..49"),
        (lambda d: d.add_noise(_x0(2), _x0(2), torch.tensor([0])), r"t: expected \(2,\), got \(1,\)"),
        (lambda d: d.add_noise(_x0(2), _x0(1), torch.tensor([0, 1])), r"noise: expected \(2, 1, 28, 28\)"),
        (lambda d: d.ddim_step(_x0(1), torch.tensor([3]), torch.tensor([3]), _x0(1)), "t_prev < t"),
    ],
)
def test_bad_values(call, match):
    with pytest.raises(ValueError, match=match):
        call(Diffusion.from_schedule("cosine", T_SMALL))


def test_bad_betas():
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        Diffusion(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match=r"expected \(T,\)"):
        Diffusion(torch.ones(2, 2) * 0.1)


def _linear_model(x, t):
    """An analytic stand-in for a denoiser: eps_hat = 0.8 x_t + 0.002 t."""
    return 0.8 * x + 0.002 * t.view(-1, 1, 1, 1).to(x.dtype)


def test_ddpm_loop_against_a_numpy_reimplementation_of_the_official_sampler():
    """The official p_sample loop (PAPER.md), written in float64 numpy, fed the same Gaussian draws."""
    T, shape = 10, (2, 1, 28, 28)
    betas = get_beta_schedule("cosine", T).numpy()
    ours = Diffusion(torch.from_numpy(betas)).sample(_linear_model, shape, sampler="ddpm",
                                                     generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    alphas, ab = 1 - betas, np.cumprod(1 - betas)
    x = torch.randn(shape, generator=g).double().numpy()
    for t in range(T - 1, -1, -1):
        eps = 0.8 * x + 0.002 * t
        x0 = np.clip((x - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t]), -1, 1)
        z = torch.randn(shape, generator=g).double().numpy()  # ours draws at t = 0 too, and discards it
        if t > 0:
            mean = (betas[t] * np.sqrt(ab[t - 1]) / (1 - ab[t]) * x0
                    + (1 - ab[t - 1]) * np.sqrt(alphas[t]) / (1 - ab[t]) * x)
            x = mean + np.sqrt(betas[t] * (1 - ab[t - 1]) / (1 - ab[t])) * z
        else:
            x = x0
    np.testing.assert_allclose(ours.double().numpy(), x, rtol=0, atol=2e-5)


def test_ddim_loop_against_a_numpy_reimplementation_of_song_et_al():
    """DDIM (Song et al. 2021, eq. 12) on the grid of ddim_timesteps, eta = 0.5, in float64 numpy."""
    T, steps, eta, shape = 40, 7, 0.5, (2, 1, 28, 28)
    betas = get_beta_schedule("linear", T).numpy()
    ours = Diffusion(torch.from_numpy(betas)).sample(_linear_model, shape, sampler="ddim", steps=steps, eta=eta,
                                                     generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)
    ab = np.cumprod(1 - betas)
    x = torch.randn(shape, generator=g).double().numpy()
    grid = np.round(np.linspace(-1, T - 1, steps + 1)).astype(int)[::-1]
    for t, s in itertools.pairwise(grid):
        a_t, a_s = ab[t], (ab[s] if s >= 0 else 1.0)
        x0 = np.clip((x - np.sqrt(1 - a_t) * (0.8 * x + 0.002 * t)) / np.sqrt(a_t), -1, 1)
        eps = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)  # re-derived from the clamped x0
        sigma = eta * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        z = torch.randn(shape, generator=g).double().numpy()
        x = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - sigma**2) * eps + sigma * z
    np.testing.assert_allclose(ours.double().numpy(), np.clip(x, -1, 1), rtol=0, atol=2e-5)
