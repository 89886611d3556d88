"""The Gaussian diffusion process (DDPM, Ho et al. 2020) and its DDIM sampler (Song et al. 2021).

The process has no learnable parameters. It is built from a beta schedule (``qdiff_lib.schedules``), computes
its coefficients in float64 and keeps them as float32 tensors. Notation (``ab`` = ``alphas_cumprod``)::

    forward (q_sample):   x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps                                      (1)
    x_0 from epsilon:     x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t), clamped to [-1, 1]        (2)
    DDPM posterior:       mu = c0_t x0_hat + ct_t x_t,
                          c0_t = beta_t sqrt(ab_{t-1}) / (1 - ab_t), ct_t = (1 - ab_{t-1}) sqrt(alpha_t) / (1 - ab_t),
                          var_t = beta_t (1 - ab_{t-1}) / (1 - ab_t)  ("fixed small"), x_{t-1} = mu + sqrt(var_t) z  (3)
    DDIM (t -> s < t):    x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps' + sigma z,
                          sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s)                  (4)

with ``ab_{-1} = 1``. The model predicts epsilon (the paper's parameterisation). The paper's official code clamps
``x0_hat`` to [-1, 1] in the reverse step (2); when it is clamped, the DDIM step uses the epsilon re-derived
from the clamped ``x0_hat``, ``eps' = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)`` (as lucidrains'
denoising-diffusion-pytorch), which makes DDIM with ``eta = 1`` over all T steps the same map as DDPM (3).

The noise is pluggable: any object with ``sample(shape, generator=None, t=None)`` (``qdiff_lib.noise``) supplies
``x_T`` and the reverse-step noise ``z``; the default is :class:`~qdiff_lib.noise.GaussianNoise`. Every random
draw takes the ``generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from qdiff_lib._checks import check_choice
from qdiff_lib.noise import GaussianNoise, NoiseSource
from qdiff_lib.schedules import get_beta_schedule

__all__ = ["SAMPLERS", "Diffusion", "StepOutput", "ddim_timesteps"]

SAMPLERS = ("ddpm", "ddim")
Sampler = Literal["ddpm", "ddim"]

#: A denoiser: ``model(x_t (B, C, H, W), t (B,) long) -> eps_hat (B, C, H, W)``.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class StepOutput:
    """One reverse step: ``prev_sample`` (``x_{t-1}`` or ``x_s``) and ``pred_x0`` (``x0_hat``), both (B, C, H, W)."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


def ddim_timesteps(num_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """The ``steps`` pairs ``(t, s)`` visited by DDIM, from ``(T-1, .)`` down to ``(., -1)``.

    The grid is ``round(linspace(-1, T - 1, steps + 1))``, strictly increasing for ``steps <= T``; ``s = -1``
    stands for ``ab_{-1} = 1``, so the last step returns ``x0_hat``. With ``steps == T`` it is every timestep.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be an integer in 1..{num_timesteps}, got {steps!r}")
    grid = torch.linspace(-1, num_timesteps - 1, steps + 1, dtype=torch.float64).round().long().tolist()
    return [(grid[i], grid[i - 1]) for i in range(steps, 0, -1)]


class Diffusion:
    """DDPM forward process and reverse steps for a beta schedule; no learnable parameters.

    Args:
        betas: ``(T,)`` betas (any float dtype; coefficients are computed in float64, stored as float32).
        clip_x0: clamp ``x0_hat`` to [-1, 1] in the reverse steps, as the paper (eq. 2 above).
        device: where the coefficient tensors live (see :meth:`to`).
    """

    def __init__(self, betas: torch.Tensor, clip_x0: bool = True, device: torch.device | str = "cpu"):
        betas = torch.as_tensor(betas).detach().to("cpu", torch.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas: expected (T,) with T >= 1, got {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie in (0, 1)")
        self.num_timesteps = len(betas)
        self.clip_x0 = clip_x0
        alphas = 1.0 - betas
        ab = torch.cumprod(alphas, dim=0)
        ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
        self._f64 = {
            "betas": betas,
            "alphas_cumprod": ab,
            "alphas_cumprod_prev": ab_prev,
            "alphas_cumprod_ext": torch.cat([torch.ones(1, dtype=torch.float64), ab]),  # index s + 1, s in -1..T-1
            "sqrt_alphas_cumprod": ab.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ab).sqrt(),
            "posterior_variance": betas * (1.0 - ab_prev) / (1.0 - ab),
            "posterior_mean_coef_x0": betas * ab_prev.sqrt() / (1.0 - ab),
            "posterior_mean_coef_xt": (1.0 - ab_prev) * alphas.sqrt() / (1.0 - ab),
        }
        self.device = torch.device(device)
        for name, value in self._f64.items():
            setattr(self, name, value.to(self.device, torch.float32))

    @classmethod
    def from_schedule(cls, name: str, timesteps: int, **kwargs) -> Diffusion:
        """``Diffusion(get_beta_schedule(name, timesteps))``."""
        return cls(get_beta_schedule(name, timesteps), **kwargs)

    def to(self, device: torch.device | str) -> Diffusion:
        """This process with its coefficients on ``device`` (a new object; ``self`` is unchanged)."""
        return Diffusion(self._f64["betas"], clip_x0=self.clip_x0, device=device)

    # ------------------------------------------------------------------------------------------- helpers
    def _at(self, coef: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``coef[t]`` shaped ``(B, 1, 1, 1)`` for broadcasting against ``x`` (B, C, H, W)."""
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected ({x.shape[0]},), got {tuple(t.shape)}")
        if t.dtype != torch.long:
            raise ValueError(f"t must be a LongTensor of timesteps, got dtype {t.dtype}")
        if bool(((t < 0) | (t >= self.num_timesteps)).any()):
            raise ValueError(f"t must lie in 0..{self.num_timesteps - 1}")
        return coef.to(x.device)[t.to(x.device)].view(-1, *([1] * (x.ndim - 1)))

    def _at_prev(self, t_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``ab_s`` (B, 1, 1, 1) for previous timesteps ``s`` in -1..T-1, with ``ab_{-1} = 1``."""
        if bool(((t_prev < -1) | (t_prev >= self.num_timesteps)).any()):
            raise ValueError(f"previous timesteps must lie in -1..{self.num_timesteps - 1}")
        return self.alphas_cumprod_ext.to(x.device)[(t_prev + 1).to(x.device)].view(-1, *([1] * (x.ndim - 1)))

    @staticmethod
    def _noise(noise_source: NoiseSource | None, shape, generator, t, like: torch.Tensor) -> torch.Tensor:
        source = noise_source if noise_source is not None else GaussianNoise(device=like.device)
        z = source.sample(tuple(shape), generator=generator, t=t)
        return z.to(like.device, like.dtype)

    # ------------------------------------------------------------------------------------------- forward
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q_sample``, eq. (1): ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise``; all (B, C, H, W), ``t`` (B,)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise: expected {tuple(x0.shape)}, got {tuple(noise.shape)}")
        signal = self._at(self.sqrt_alphas_cumprod, t, x0)
        return signal * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    q_sample = add_noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Eq. (2) without the clamp: ``(x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t)``."""
        return (x_t - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / self._at(
            self.sqrt_alphas_cumprod, t, x_t
        )

    def _pred_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.predict_x0(x_t, t, eps)
        return x0.clamp(-1.0, 1.0) if self.clip_x0 else x0

    def posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x0)``, eq. (3): ``(B, C, H, W)`` and ``(B, 1, 1, 1)``."""
        mean = self._at(self.posterior_mean_coef_x0, t, x_t) * x0 + self._at(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t)

    # ------------------------------------------------------------------------------------------- reverse
    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        x_t: torch.Tensor,
        generator: torch.Generator | None = None,
        noise_source: NoiseSource | None = None,
    ) -> StepOutput:
        """One DDPM reverse step ``x_t -> x_{t-1}``, eq. (3), from the predicted noise ``model_output``.

        ``t`` (B,) long; no noise is added where ``t == 0`` (the output there is ``x0_hat``). The noise ``z`` is
        drawn from ``noise_source`` (default Gaussian) with ``generator`` and ``t``.
        """
        x0 = self._pred_x0(x_t, t, model_output)
        mean, var = self.posterior_mean_variance(x0, x_t, t)
        z = self._noise(noise_source, x_t.shape, generator, t, x_t)
        nonzero = (t > 0).to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1))).to(x_t.device)
        return StepOutput(prev_sample=mean + nonzero * var.sqrt() * z, pred_x0=x0)

    def ddim_step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor,
        x_t: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise_source: NoiseSource | None = None,
    ) -> StepOutput:
        """One DDIM step ``x_t -> x_s``, eq. (4), with ``s = t_prev < t`` (``-1`` for the final step).

        ``eta = 0`` is deterministic (no draw is made); ``eta = 1`` with ``t_prev = t - 1`` is the DDPM step.
        """
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if bool((t_prev >= t).any()):
            raise ValueError("DDIM needs t_prev < t")
        x0 = self._pred_x0(x_t, t, model_output)
        ab_t = self._at(self.alphas_cumprod, t, x_t)
        ab_s = self._at_prev(t_prev, x_t)
        eps = (x_t - ab_t.sqrt() * x0) / (1.0 - ab_t).sqrt() if self.clip_x0 else model_output
        sigma = eta * ((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)).clamp(min=0.0).sqrt()
        prev = ab_s.sqrt() * x0 + (1.0 - ab_s - sigma**2).clamp(min=0.0).sqrt() * eps
        if eta > 0:
            prev = prev + sigma * self._noise(noise_source, x_t.shape, generator, t, x_t)
        return StepOutput(prev_sample=prev, pred_x0=x0)

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        shape: tuple[int, int, int, int],
        sampler: Sampler = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise_source: NoiseSource | None = None,
        progress: bool = False,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw samples ``(B, C, H, W)`` in [-1, 1] (clamped) by the reverse process.

        Args:
            model: ``model(x_t, t) -> eps_hat`` (put it in eval mode yourself if it matters).
            shape: ``(B, C, H, W)``.
            sampler: ``"ddpm"`` (all T ancestral steps, eq. 3) or ``"ddim"`` (eq. 4 on :func:`ddim_timesteps`).
            steps: DDPM: None or T; DDIM: number of steps, 1..T (default 50, capped at T).
            eta: DDIM stochasticity (0: deterministic given ``x_T``).
            generator: the source of every draw (``x_T`` and the step noise).
            noise_source: draws ``x_T`` (with ``t = T - 1``) and the step noise; default Gaussian.
            progress: show a tqdm bar.
            device: where to run (default: this process's device).
        """
        check_choice("sampler", sampler, SAMPLERS)
        if len(shape) != 4:
            raise ValueError(f"shape: expected (B, C, H, W), got {tuple(shape)}")
        T = self.num_timesteps
        if sampler == "ddpm":
            if steps not in (None, T):
                raise ValueError(f"DDPM runs all T={T} steps; got steps={steps} (use sampler='ddim' for fewer)")
            pairs = [(t, t - 1) for t in range(T - 1, -1, -1)]
        else:
            pairs = ddim_timesteps(T, min(50, T) if steps is None else steps)
        proc = self if device is None else self.to(device)
        dev = proc.device
        B = shape[0]
        t_first = torch.full((B,), T - 1, dtype=torch.long, device=dev)
        x = self._noise(noise_source, shape, generator, t_first, torch.empty(0, device=dev))
        for t_int, s_int in tqdm(pairs, desc=f"{sampler} sampling", disable=not progress, leave=False):
            t = torch.full((B,), t_int, dtype=torch.long, device=dev)
            eps = model(x, t)
            if sampler == "ddpm":
                x = proc.step(eps, t, x, generator=generator, noise_source=noise_source).prev_sample
            else:
                s = torch.full((B,), s_int, dtype=torch.long, device=dev)
                x = proc.ddim_step(eps, t, s, x, eta=eta, generator=generator, noise_source=noise_source).prev_sample
        return x.clamp(-1.0, 1.0)

    def __repr__(self) -> str:
        return f"Diffusion(T={self.num_timesteps}, clip_x0={self.clip_x0}, device={self.device})"
