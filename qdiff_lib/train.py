"""Training of an epsilon-prediction denoiser (DDPM's simple loss), resumable and fault-aware.

The trainer knows nothing of circuits or datasets: it receives a model ``model(x_t, t) -> eps_hat`` and a tensor of
images ``(N, C, H, W)`` in [-1, 1]. Each optimiser step draws, from one seeded CPU ``torch.Generator``:

1. a batch of ``batch_size`` image indices, uniformly *with replacement* (so ``N < batch_size``, e.g. 10 images,
   is allowed; one epoch is ``N / batch_size`` steps, i.e. ``epochs = steps * batch_size / N``);
2. timesteps ``t`` (B,): uniform over ``0..T-1`` (``torch.randint``, DDPM) or from
   ``qdiff_lib.schedules.timestep_weights`` (``torch.multinomial``);
3. the noise ``eps`` from the noise source (Gaussian by default), given ``t``;

and minimises ``mean (model(x_t, t) - eps)^2`` with ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` (Ho et al. 2020,
eq. 14) by Adam (lr 3e-4), keeping an exponential moving average of the weights (decay 0.999), as the paper.
All draws are made on the CPU and moved to the device, so a run draws the same numbers on CPU and CUDA; on the
CPU the loss history is bit-identical for the same seed.

Checkpoints (``checkpoint_dir/checkpoint.pt``) hold the model, the EMA, the optimiser, the generator state (and that of
any submodule's ``.generator``, e.g. a quantum layer sampling shots), the step and the loss history; they are written
atomically (a temporary file, then ``os.replace``) every ``checkpoint_every`` steps and at the end. :func:`train`
resumes from the checkpoint it finds, and an interrupted run resumed gives the same result as an uninterrupted one. A
non-finite loss (or non-finite weights before a checkpoint) stops the run with :class:`NonFiniteError` naming the step;
the last good checkpoint stays on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from qdiff_lib import schedules
from qdiff_lib._checks import check_choice
from qdiff_lib._io import atomic_write
from qdiff_lib._memory import release_memory
from qdiff_lib.diffusion import Diffusion
from qdiff_lib.noise import NOISE_SOURCES, make_noise_source

__all__ = [
    "DEFAULT_STEPS",
    "CHECKPOINT_NAME",
    "TrainConfig",
    "TrainResult",
    "NonFiniteError",
    "train",
    "resolve_device",
    "load_checkpoint",
    "checkpoint_mismatch",
]

#: Optimiser steps when neither ``steps`` nor ``epochs`` is given (the authors' later fixed budget).
DEFAULT_STEPS = 2000
CHECKPOINT_NAME = "checkpoint.pt"
#: Optimiser steps between calls of :func:`qdiff_lib._memory.release_memory` (a few milliseconds each; no effect on
#: any number). At most the ci profile's steps, so that every ci run exercises it.
RELEASE_EVERY = 25


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass
class TrainConfig:
    """Training settings (the paper's values by default). Dataset-agnostic.

    Attributes:
        steps: optimiser steps (default :data:`DEFAULT_STEPS` when ``epochs`` is None too).
        epochs: budget in passes over the images instead (the paper: 30): ``steps = ceil(epochs * N / batch_size)``.
        batch_size: images per step (paper: 64), drawn with replacement.
        lr: Adam learning rate (paper: 3e-4).
        ema_decay: decay of the weights' exponential moving average (paper: 0.999).
        ema_warmup: our choice, the paper is silent: use ``min(ema_decay, (1 + step) / (10 + step))`` at optimiser
            step ``step`` (1-based), as diffusers' ``EMAModel``, so that the average forgets the random initial
            weights within a short budget. Without it, after ``s`` steps the EMA still holds ``ema_decay**s`` of
            them: 86% after 150 steps, 14% after 2000.
        schedule: beta schedule name (``qdiff_lib.schedules.SCHEDULES``; paper: cosine).
        timesteps: T (paper: 1000).
        noise: noise source name (``qdiff_lib.noise.NOISE_SOURCES``; ``"gaussian"``: DDPM).
        noise_kwargs: keyword arguments of ``qdiff_lib.noise.make_noise_source`` (not ``timesteps``).
        timestep_distribution: how training timesteps are drawn (``qdiff_lib.schedules.TIMESTEP_DISTRIBUTIONS``;
            ``"uniform"``: DDPM).
        checkpoint_every: write a checkpoint every this many steps (0: only at the end); needs a checkpoint_dir.
        seed: seed of the training generator (batches, timesteps, noise). The model's initial weights come from
            the model's own seed.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 3e-4
    ema_decay: float = 0.999
    ema_warmup: bool = True
    schedule: str = "cosine"
    timesteps: int = 1000
    noise: str = "gaussian"
    noise_kwargs: dict[str, Any] = field(default_factory=dict)
    timestep_distribution: str = "uniform"
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(f"give steps or epochs, not both (got steps={self.steps}, epochs={self.epochs})")
        if self.steps is not None:
            _check_positive_int("steps", self.steps)
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ValueError(f"epochs must be a positive number, got {self.epochs!r}")
        _check_positive_int("batch_size", self.batch_size)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not isinstance(self.ema_warmup, bool):
            raise ValueError(f"ema_warmup must be True or False, got {self.ema_warmup!r}")
        check_choice("beta schedule", self.schedule, sorted(schedules.SCHEDULES))
        _check_positive_int("timesteps", self.timesteps, minimum=2)
        check_choice("noise source", self.noise, NOISE_SOURCES)
        check_choice("timestep distribution", self.timestep_distribution, schedules.TIMESTEP_DISTRIBUTIONS)
        _check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        _check_positive_int("seed", self.seed, minimum=0)
        if not (self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:")):
            raise ValueError(f"unknown device {self.device!r}; allowed: ['auto', 'cpu', 'cuda', 'cuda:N']")

    def total_steps(self, n_images: int) -> int:
        """Optimiser steps for ``n_images`` training images."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * n_images / self.batch_size))
        return DEFAULT_STEPS if self.steps is None else self.steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NonFiniteError(FloatingPointError):
    """The loss (or the weights) became NaN or infinite; ``step`` is the optimiser step (1-based)."""

    def __init__(self, message: str, step: int, last_checkpoint_step: int | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint_step = last_checkpoint_step


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``loss_history[k]`` is the loss of step ``k + 1`` (the whole run, including steps before a resume);
    ``ema_model`` is the averaged model used for sampling; ``timings`` are wall-clock seconds of this call.
    """

    loss_history: list[float]
    model: nn.Module
    ema_model: nn.Module
    steps: int
    resumed_from: int
    device: str
    n_images: int
    timings: dict[str, float | None]
    config: TrainConfig

    def summary(self) -> dict[str, Any]:
        """JSON-ready fields (no models)."""
        return {
            "config": self.config.to_dict(),
            "loss_history": list(self.loss_history),
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "device": self.device,
            "n_images": self.n_images,
            "epochs": self.steps * self.config.batch_size / self.n_images,
            "timings": dict(self.timings),
        }


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a CUDA device that is absent raises ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; allowed here: ['auto', 'cpu']")
    return dev


def _fingerprint(images: torch.Tensor) -> str:
    data = images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(str(tuple(images.shape)).encode() + data).hexdigest()


def _resume_key(config: TrainConfig) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it (device and cadence may change)."""
    d = config.to_dict()
    d.pop("device")
    d.pop("checkpoint_every")
    return d


def load_checkpoint(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint in ``checkpoint_dir`` (a dict, tensors on the CPU), or None if there is none."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _module_generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Generators that submodules keep as ``.generator`` (e.g. a QuantumLayer's shot sampler), by module name."""
    return {
        name: module.generator
        for name, module in model.named_modules()
        if isinstance(getattr(module, "generator", None), torch.Generator)
    }


def _mismatch(state: dict[str, Any], fingerprint: str, config: TrainConfig) -> str | None:
    if state["resume_key"] != _resume_key(config):
        return f"was written with other settings: {state['resume_key']} != {_resume_key(config)}"
    if state["data_fingerprint"] != fingerprint:
        return "was written for other training images"
    return None


def checkpoint_mismatch(checkpoint_dir: str | os.PathLike, images: torch.Tensor, config: TrainConfig) -> str | None:
    """Why :func:`train` would refuse to resume the checkpoint in ``checkpoint_dir`` (None: it would resume, or
    start afresh when there is no checkpoint)."""
    state = load_checkpoint(checkpoint_dir)
    return None if state is None else _mismatch(state, _fingerprint(images), config)


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay used after optimiser step ``step`` (1-based): ``min(decay, (1 + step) / (10 + step))`` with warm-up."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def ema_initial_share(steps: int, decay: float, warmup: bool = True) -> float:
    """Weight of the initial parameters in the EMA after ``steps`` optimiser steps: ``prod_s ema_decay_at(s)``."""
    share = 1.0
    for step in range(1, steps + 1):
        share *= ema_decay_at(step, decay, warmup)
    return share


@torch.no_grad()  # else every update joins the autograd graph of p, and the EMA's graph grows every step
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
        if p.requires_grad:
            p_ema.mul_(decay).add_(p, alpha=1.0 - decay)
        else:  # a frozen weight stays bit-identical (the average of a constant, without rounding)
            p_ema.copy_(p)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def train(
    model: nn.Module,
    images: torch.Tensor,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, float, nn.Module], None] | None = None,
    snapshot_at: Collection[int] = (),
    on_snapshot: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train ``model`` (in place, moved to the device) to predict the noise added to ``images``.

    Args:
        model: ``model(x_t (B, C, H, W), t (B,) long) -> eps_hat (B, C, H, W)``.
        images: ``(N, C, H, W)`` training images in [-1, 1].
        config: the settings; its ``seed`` fixes every draw.
        checkpoint_dir: where ``checkpoint.pt`` is written and resumed from (None: no checkpoints).
        progress: show a tqdm bar.
        callback: ``callback(step, loss, model)`` after each step's update and checkpoint; an exception it
            raises stops training (the checkpoints already written stay).
        snapshot_at, on_snapshot: ``on_snapshot(step, ema_model)`` after the steps in ``snapshot_at`` (after their
            update and checkpoint: a checkpoint is written at each of these steps, so that a resumed run never
            needs one again). It must not change the EMA model or draw from the training generator (sampling
            with its own generator does neither), so that training goes on exactly as without it.

    Raises:
        NonFiniteError: the loss at some step, or the weights about to be checkpointed, are NaN or infinite.
        ValueError: bad images, or a checkpoint written for other settings or other images.
    """
    t_start = time.perf_counter()
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images: expected (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN or infinite values")
    n_images = images.shape[0]
    n_steps = config.total_steps(n_images)
    device = resolve_device(config.device)
    diffusion = Diffusion.from_schedule(config.schedule, config.timesteps).to(device)
    # the source's draws are made on the CPU with the training generator, then moved to the device
    noise_source = make_noise_source(config.noise, timesteps=config.timesteps, **config.noise_kwargs)
    if config.timestep_distribution == "uniform":
        t_weights = None
    else:
        t_weights = schedules.timestep_weights(config.timestep_distribution, config.timesteps, schedule=config.schedule)

    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    loss_history: list[float] = []
    start = 0
    fingerprint = _fingerprint(images)

    ckpt_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        state = load_checkpoint(checkpoint_dir)
        if state is not None:
            mismatch = _mismatch(state, fingerprint, config)
            if mismatch:
                raise ValueError(f"checkpoint {ckpt_path} {mismatch}; remove it or use another checkpoint_dir")
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            for name, g in _module_generators(model).items():
                g.set_state(state["module_generators"][name])
            if "noise_source" in state:
                noise_source.load_state_dict(state["noise_source"])
            loss_history = list(state["loss_history"])
            start = int(state["step"])
    last_ckpt = start if ckpt_path is not None and start > 0 else None

    def save(step: int) -> None:
        if not (_all_finite(model) and _all_finite(ema)):
            raise NonFiniteError(
                f"weights became NaN or infinite at step {step}; not checkpointed "
                f"(last good checkpoint: step {last_ckpt}, in {checkpoint_dir})",
                step, last_ckpt,
            )
        state = {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "module_generators": {name: g.get_state() for name, g in _module_generators(model).items()},
            "loss_history": loss_history,
            "resume_key": _resume_key(config),
            "data_fingerprint": fingerprint,
        }
        if hasattr(noise_source, "state_dict"):
            state["noise_source"] = noise_source.state_dict()
        atomic_write(ckpt_path, lambda f: torch.save(state, f))

    snapshots = frozenset(int(k) for k in snapshot_at)
    images_dev = images.to(device, torch.float32)
    B = config.batch_size
    shape = (B, *images.shape[1:])
    t_loop = time.perf_counter()
    with tqdm(total=n_steps, initial=start, desc="training", disable=not progress, leave=False) as bar:
        for step in range(start + 1, n_steps + 1):
            idx = torch.randint(n_images, (B,), generator=generator)
            if t_weights is None:
                t = torch.randint(config.timesteps, (B,), generator=generator)
            else:
                t = torch.multinomial(t_weights, B, replacement=True, generator=generator)
            noise = noise_source.sample(shape, generator=generator, t=t).to(device, torch.float32)
            t = t.to(device)
            x_t = diffusion.add_noise(images_dev[idx.to(device)], noise, t)
            loss = F.mse_loss(model(x_t, t), noise)
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteError(
                    f"loss is {value} at step {step}; training stopped "
                    f"(last good checkpoint: step {last_ckpt}"
                    + (f", in {checkpoint_dir})" if last_ckpt is not None else ")"),
                    step, last_ckpt,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _ema_update(ema, model, ema_decay_at(step, config.ema_decay, config.ema_warmup))
            loss_history.append(value)
            periodic = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
            if ckpt_path is not None and (step == n_steps or step in snapshots or periodic):
                save(step)
                last_ckpt = step
            if step % RELEASE_EVERY == 0:
                release_memory()  # else glibc keeps freed memory and a 2000-step run grows to ~10 GB
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if callback is not None:
                callback(step, value, model)
            if on_snapshot is not None and step in snapshots:
                on_snapshot(step, ema)
    t_end = time.perf_counter()
    steps_run = n_steps - start
    return TrainResult(
        loss_history=loss_history,
        model=model,
        ema_model=ema,
        steps=n_steps,
        resumed_from=start,
        device=str(device),
        n_images=n_images,
        timings={
            "train_s": t_end - t_start,
            "per_step_s": (t_end - t_loop) / steps_run if steps_run else None,
        },
        config=config,
    )
