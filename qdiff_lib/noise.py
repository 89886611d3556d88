"""Noise sources for the diffusion process.

A noise source draws the epsilon of DDPM: the forward noise (the training target) and the reverse-step noise.
Every source has the same interface::

    source.sample(shape, generator=None, t=None) -> torch.Tensor   # float32, the given shape

``t`` (a LongTensor ``(B,)`` of timesteps, ``shape[0] == B``) is used only by sources whose law depends on
the timestep (the hybrid mixture); others ignore it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["NoiseSource", "GaussianNoise"]


@runtime_checkable
class NoiseSource(Protocol):
    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class GaussianNoise:
    """Standard normal noise, ``torch.randn`` with the given generator (DDPM's assumption)."""

    name = "gaussian"

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype

    def sample(self, shape, generator=None, t=None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=self.dtype)

    def __repr__(self) -> str:
        return "GaussianNoise()"
