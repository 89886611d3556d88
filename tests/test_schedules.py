"""Tests of qdiff_lib.schedules: invariants of every schedule, the published formulas, the tailored schedule
against its defining log-SNR density (scipy), and the training-timestep distributions."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from qdiff_lib.schedules import (
    SCHEDULES,
    TIMESTEP_DISTRIBUTIONS,
    alphas_cumprod_from_betas,
    get_beta_schedule,
    log_snr,
    tailored_beta_schedule,
    timestep_weights,
)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 10, 50, 1000])
def test_schedule_invariants(name, T):
    betas = get_beta_schedule(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert bool(((betas > 0) & (betas < 1)).all())
    ac = alphas_cumprod_from_betas(betas)
    assert bool(((ac > 0) & (ac < 1)).all())
    assert bool((ac.diff() < 0).all())
    assert bool((log_snr(betas).diff() < 0).all())


def test_linear_and_cosine_match_their_papers():
    np.testing.assert_allclose(get_beta_schedule("linear", 1000).numpy(), np.linspace(1e-4, 0.02, 1000))
    # Nichol & Dhariwal (2021), eq. 17, written independently in numpy
    T, s = 1000, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 1e-4, 0.999)
    np.testing.assert_allclose(get_beta_schedule("cosine", T).numpy(), betas, rtol=1e-12)


def test_unknown_schedule():
    with pytest.raises(ValueError, match=r"unknown beta schedule 'quad'; allowed: \['cosine', 'linear', 'sigmoid', "
                                         r"'tailored'\]"):
        get_beta_schedule("quad", 10)
    with pytest.raises(ValueError, match="timesteps must be a positive integer"):
        get_beta_schedule("tailored", 0)


@pytest.mark.parametrize("T", [50, 1000])
def test_tailored_follows_its_logsnr_density(T):
    lo, hi, mean, std, floor = -12.0, 10.0, 0.0, 1.5, 0.2
    lam = log_snr(tailored_beta_schedule(T)).numpy()
    # F(lambda_t) = 1 - (t + 1) / T with F the CDF of the truncated normal + uniform mixture (scipy)
    normal = stats.truncnorm((lo - mean) / std, (hi - mean) / std, loc=mean, scale=std)
    cdf = (1 - floor) * normal.cdf(lam) + floor * (lam - lo) / (hi - lo)
    np.testing.assert_allclose(cdf, 1 - np.arange(1, T + 1) / T, atol=1e-9)
    assert lam[-1] == pytest.approx(lo, abs=1e-9)


def test_tailored_uniform_floor_is_linear_in_logsnr():
    T = 100
    lam = log_snr(get_beta_schedule("tailored", T, floor=1.0, logsnr_min=-8.0, logsnr_max=6.0)).numpy()
    np.testing.assert_allclose(lam, 6.0 - 14.0 * np.arange(1, T + 1) / T, atol=1e-9)


def test_tailored_spends_more_steps_mid_logsnr_than_cosine():
    fraction = {
        n: float((log_snr(get_beta_schedule(n, 1000)).abs() < 3).double().mean()) for n in ("cosine", "tailored")
    }
    assert fraction["tailored"] > fraction["cosine"] + 0.05, fraction
    # end SNR small enough that x_T is noise: abar_T = sigmoid(-12)
    assert float(alphas_cumprod_from_betas(get_beta_schedule("tailored", 1000))[-1]) == pytest.approx(
        1 / (1 + math.exp(12)), rel=1e-9
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"logsnr_min": 5.0, "logsnr_max": 5.0}, "need logsnr_min < logsnr_max"),
        ({"logsnr_std": 0.0}, "logsnr_std must be positive"),
        ({"floor": 1.5}, r"floor must be in \[0, 1\]"),
    ],
)
def test_tailored_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tailored_beta_schedule(100, **kwargs)


@pytest.mark.parametrize("name", TIMESTEP_DISTRIBUTIONS)
@pytest.mark.parametrize("T", [1, 10, 1000])
def test_timestep_weights_are_probabilities(name, T):
    w = timestep_weights(name, T)
    assert w.shape == (T,) and w.dtype == torch.float64
    assert bool((w >= 0).all()) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    t = torch.multinomial(w, 64, replacement=True, generator=g)
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) < T


def test_uniform_weights():
    np.testing.assert_allclose(timestep_weights("uniform", 8).numpy(), np.full(8, 1 / 8))


@pytest.mark.parametrize("schedule", ["cosine", "tailored"])
def test_logsnr_gaussian_weights_are_normal_masses(schedule):
    T, mean, std = 1000, 1.0, 2.4
    betas = get_beta_schedule(schedule, T)
    lam = log_snr(betas).numpy()
    w = timestep_weights("logsnr_gaussian", T, schedule=betas, logsnr_mean=mean, logsnr_std=std).numpy()
    edges = np.concatenate([[np.inf], lam[:-1], [-np.inf]])
    expected = stats.norm.cdf(edges[:-1], mean, std) - stats.norm.cdf(edges[1:], mean, std)
    np.testing.assert_allclose(w, expected, atol=1e-12)
    # the training log-SNR then has the requested mean and standard deviation (up to discretisation)
    drawn_mean = float(w @ lam)
    drawn_std = math.sqrt(float(w @ (lam - drawn_mean) ** 2))
    assert drawn_mean == pytest.approx(mean, abs=0.05) and drawn_std == pytest.approx(std, abs=0.05)
    np.testing.assert_allclose(w, timestep_weights("logsnr_gaussian", T, schedule=schedule), atol=1e-15)


def test_timestep_weights_errors():
    with pytest.raises(ValueError, match=r"unknown timestep distribution 'edm'; allowed: \['uniform', "
                                         r"'logsnr_gaussian'\]"):
        timestep_weights("edm", 10)
    with pytest.raises(ValueError, match=r"expected betas of shape \(10,\), got \(9,\)"):
        timestep_weights("logsnr_gaussian", 10, schedule=get_beta_schedule("cosine", 9))
    with pytest.raises(ValueError, match="logsnr_std must be positive"):
        timestep_weights("logsnr_gaussian", 10, logsnr_std=-1.0)
