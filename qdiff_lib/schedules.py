"""Noise (beta) schedules for DDPM, as pure functions computed in float64.

Each function maps a number of timesteps ``T`` to a float64 tensor ``betas`` of shape ``(T,)``;
``alphas_cumprod = cumprod(1 - betas)``. The diffusion process (``qdiff_lib.diffusion``) stores them as
float32 buffers. The model knows nothing of schedules.
"""

from __future__ import annotations

import math

import torch

from qdiff_lib._checks import check_choice

__all__ = [
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "sigmoid_beta_schedule",
    "tailored_beta_schedule",
    "get_beta_schedule",
    "timestep_weights",
    "TIMESTEP_DISTRIBUTIONS",
    "SCHEDULES",
    "alphas_cumprod_from_betas",
    "log_snr",
]

BETA_MIN, BETA_MAX = 1e-4, 0.999  # the paper's clip for the cosine schedule


def linear_beta_schedule(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas linear from 1e-4 to 0.02 at T=1000, rescaled by 1000/T for other T."""
    _check_timesteps(timesteps)
    scale = 1000.0 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64).clamp(max=BETA_MAX)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): alphas_cumprod = cos^2((t/T + s)/(1 + s) * pi/2), normalised.

    Betas are clipped to [1e-4, 0.999], as in the paper's official code.
    """
    _check_timesteps(timesteps)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(BETA_MIN, BETA_MAX)


def sigmoid_beta_schedule(
    timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """Jabri et al. (2022), sigmoid schedule on alphas_cumprod (as lucidrains' denoising-diffusion-pytorch)."""
    _check_timesteps(timesteps)
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    f = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, BETA_MAX)


def tailored_beta_schedule(
    timesteps: int,
    logsnr_min: float = -12.0,
    logsnr_max: float = 10.0,
    logsnr_mean: float = 0.0,
    logsnr_std: float = 1.5,
    floor: float = 0.2,
) -> torch.Tensor:
    """Our "tailored" schedule for the few-shot regime, defined by where the T steps sit in log-SNR.

    The paper names "a tailored noise scheduling mechanism ... applying different noise levels strategically
    across time steps" without a definition; this reading is ours. Write ``lambda = log(abar / (1 - abar))``.
    A schedule is a decreasing map from ``u = t/T`` to ``lambda``; the fraction of the steps spent in a log-SNR
    interval is the mass there of the density ``p(lambda) = -du/dlambda``. The cosine schedule's density is
    ``1 / (2 pi cosh(lambda / 2))`` (standard deviation pi, exponential tails). Here

        p(lambda) = (1 - floor) * N(lambda; logsnr_mean, logsnr_std^2) / Z + floor / (logsnr_max - logsnr_min)

    on ``[logsnr_min, logsnr_max]`` (``Z`` the normal mass inside the interval), and ``lambda(u) = F^{-1}(1 - u)`` with
    ``F`` its CDF. Rationale: with fewer than ~100 images, steps at high log-SNR (faint noise) teach the denoiser the
    fine detail of a few memorisable images and steps at very low log-SNR (almost pure noise) have a near-trivial
    target; the structure of a digit is decided at intermediate log-SNR, so the Gaussian part puts more of the steps
    there than cosine does (std 1.5, about half of cosine's pi), and the uniform floor keeps every log-SNR reached with
    a bounded step. ``logsnr_min = -12`` makes ``abar_T = sigmoid(-12) ~ 6e-6``, so ``x_T`` is noise;
    ``logsnr_max = 10`` gives a first beta of about 5e-5 at T = 1000.

    ``alphas_cumprod[i] = sigmoid(lambda((i + 1) / T))`` for ``i = 0 .. T-1`` (so ``alphas_cumprod[-1] =
    sigmoid(logsnr_min)``), inverted by bisection in float64; betas clipped to at most 0.999 (as the others).
    """
    _check_timesteps(timesteps)
    if not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min!r} and {logsnr_max!r}")
    if not logsnr_std > 0:
        raise ValueError(f"logsnr_std must be positive, got {logsnr_std!r}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    normal = torch.distributions.Normal(
        torch.tensor(logsnr_mean, dtype=torch.float64), torch.tensor(logsnr_std, dtype=torch.float64)
    )
    lo, hi = torch.tensor(logsnr_min, dtype=torch.float64), torch.tensor(logsnr_max, dtype=torch.float64)
    c_lo, c_hi = normal.cdf(lo), normal.cdf(hi)

    def cdf(lam: torch.Tensor) -> torch.Tensor:
        return (1 - floor) * (normal.cdf(lam) - c_lo) / (c_hi - c_lo) + floor * (lam - lo) / (hi - lo)

    target = 1.0 - torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps  # F(lambda_t) = 1 - u_t
    left, right = lo.expand_as(target).clone(), hi.expand_as(target).clone()
    for _ in range(100):  # bisection: the interval shrinks to below float64 resolution
        mid = (left + right) / 2
        below = cdf(mid) < target
        left, right = torch.where(below, mid, left), torch.where(below, right, mid)
    lam = (left + right) / 2
    alphas_cumprod = torch.sigmoid(lam)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    return (1 - alphas_cumprod / previous).clamp(max=BETA_MAX)


#: name -> schedule function ``f(timesteps) -> betas (T,) float64``.
SCHEDULES = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
    "tailored": tailored_beta_schedule,
}

#: Distributions of the training timestep t (see :func:`timestep_weights`); ``"uniform"`` is DDPM's.
TIMESTEP_DISTRIBUTIONS = ("uniform", "logsnr_gaussian")


def get_beta_schedule(name: str, timesteps: int, **kwargs: float) -> torch.Tensor:
    """Betas ``(timesteps,)`` in float64 for the schedule ``name`` (one of :data:`SCHEDULES`).

    ``kwargs`` are the schedule's shape parameters (e.g. ``floor`` of :func:`tailored_beta_schedule`).
    """
    check_choice("beta schedule", name, sorted(SCHEDULES))
    return SCHEDULES[name](timesteps, **kwargs)


def timestep_weights(
    name: str,
    timesteps: int,
    schedule: str | torch.Tensor = "cosine",
    logsnr_mean: float = 1.0,
    logsnr_std: float = 2.4,
) -> torch.Tensor:
    """Probabilities ``(timesteps,)`` (float64, summing to 1) of the training timestep t.

    The training loop draws ``t = torch.multinomial(timestep_weights(name, T), B, replacement=True,
    generator=g)``.

    * ``"uniform"``: ``1 / T`` each (DDPM).
    * ``"logsnr_gaussian"``: the training log-SNR is distributed as ``N(logsnr_mean, logsnr_std^2)`` whatever
      the schedule: step ``t`` gets the normal mass of the log-SNR interval it covers,
      ``Phi((lambda_{t-1} - m) / s) - Phi((lambda_t - m) / s)``, with ``lambda_{-1} = +inf`` and the last
      interval extended to ``-inf``. This is the log-normal noise-level sampling of Karras et al. (2022, EDM):
      their ``ln sigma ~ N(-1.2, 1.2^2)`` with data standard deviation 0.5 is
      ``lambda = 2 (ln 0.5 - ln sigma) ~ N(1.0, 2.4^2)``, the defaults here (the log-SNR counted against EDM's
      data standard deviation; counted as ``-2 ln sigma``, the same law is ``N(2.4, 2.4^2)``). It spends the
      training signal on the mid log-SNR steps, where the denoiser learns structure, rather than on the extremes.

    ``schedule`` is a schedule name (:data:`SCHEDULES`) or a betas tensor ``(timesteps,)``; only
    ``"logsnr_gaussian"`` uses it.
    """
    check_choice("timestep distribution", name, TIMESTEP_DISTRIBUTIONS)
    _check_timesteps(timesteps)
    if name == "uniform":
        return torch.full((timesteps,), 1.0 / timesteps, dtype=torch.float64)
    if not logsnr_std > 0:
        raise ValueError(f"logsnr_std must be positive, got {logsnr_std!r}")
    betas = get_beta_schedule(schedule, timesteps) if isinstance(schedule, str) else schedule.to(torch.float64)
    if betas.shape != (timesteps,):
        raise ValueError(f"expected betas of shape ({timesteps},), got {tuple(betas.shape)}")
    normal = torch.distributions.Normal(
        torch.tensor(logsnr_mean, dtype=torch.float64), torch.tensor(logsnr_std, dtype=torch.float64)
    )
    mass_above = normal.cdf(log_snr(betas)[:-1])  # Phi((lambda_t - m) / s), t = 0 .. T-2
    upper = torch.cat([torch.ones(1, dtype=torch.float64), mass_above])
    lower = torch.cat([mass_above, torch.zeros(1, dtype=torch.float64)])
    weights = upper - lower  # telescopes to a sum of exactly 1
    return weights / weights.sum()


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])``."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def log_snr(betas: torch.Tensor) -> torch.Tensor:
    """``log(alphas_cumprod / (1 - alphas_cumprod))`` for each timestep."""
    ac = alphas_cumprod_from_betas(betas)
    return torch.log(ac) - torch.log1p(-ac)


def _check_timesteps(timesteps: int) -> None:
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
