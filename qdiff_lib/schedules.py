"""Noise (beta) schedules for DDPM, as pure functions computed in float64.

Each function maps a number of timesteps ``T`` to a float64 tensor ``betas`` of shape ``(T,)``;
``alphas_cumprod = cumprod(1 - betas)``. The diffusion process (``qdiff_lib.diffusion``) stores them as
float32 buffers. The model knows nothing of schedules.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "sigmoid_beta_schedule",
    "get_beta_schedule",
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


#: name -> schedule function ``f(timesteps) -> betas (T,) float64``.
SCHEDULES = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def get_beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """Betas ``(timesteps,)`` in float64 for the schedule ``name`` (one of :data:`SCHEDULES`)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; allowed: {sorted(SCHEDULES)}")
    return SCHEDULES[name](timesteps)


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
