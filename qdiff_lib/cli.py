"""Command line: ``python -m qdiff_lib run ...`` trains one model, samples from it and scores the samples.

``run`` writes, into ``--out DIR``:

* ``result.json``: ``config`` (every option, the training config and the model's settings), ``loss_history``
  (one loss per optimiser step), ``metrics`` (``qdiff_lib.metrics.evaluate``; ``{}`` with ``--no-metrics``),
  ``versions`` (of every package that produces a number), ``numerics`` (:func:`qdiff_lib.numerics.state`: the
  pinned kernels, torch's threads, the CPU), ``git_commit``, ``git_dirty``, ``timings`` (seconds), ``device``,
  ``n_parameters``, ``train``;
* ``samples.npz``: key ``samples``, float32 ``(n_samples, C, 28, 28)`` in [-1, 1], drawn from the EMA model;
* ``checkpoints/checkpoint.pt``: the training checkpoint. Re-running an interrupted command with the same
  options resumes from it.

Both result files are written atomically (a temporary file, then a rename). An existing ``result.json`` is never
overwritten without ``--force`` (which also discards the old checkpoint). Every option is validated, and the data
are loaded, before any training starts; a bad value stops the command with a message listing the allowed ones.

The same run is available from Python as :func:`run` with a :class:`RunOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdiff_lib import REPO_ROOT, __version__, numerics, schedules
from qdiff_lib._io import atomic_write
from qdiff_lib._memory import release_memory
from qdiff_lib.diffusion import SAMPLERS, Diffusion
from qdiff_lib.noise import NOISE_SOURCES, make_noise_source
from qdiff_lib.train import NonFiniteError, TrainConfig, checkpoint_mismatch, resolve_device, train
from qdiff_lib.unet import ANGLE_SCALINGS, BOTTLENECKS, GATES, NONLINEARITIES, UNet, count_parameters

__all__ = ["RunOptions", "KEY_NEUTRAL", "run", "build_parser", "main", "sampling_seed"]

RESULT_NAME = "result.json"
SAMPLES_NAME = "samples.npz"
CHECKPOINT_DIR = "checkpoints"


def sampling_seed(seed: int) -> int:
    """The seed of the sampling generator, derived from the run's ``seed`` (independent of the training stream)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


#: Options added after the first study, with the value under which a run key leaves them out (see
#: :func:`qdiff_lib.study.run_key`): a run that does not use them keeps the name it had before they existed.
KEY_NEUTRAL: dict[str, Any] = {"freeze_squeeze": False, "freeze_circuit": False, "quantum_backend": "auto"}


@dataclass
class RunOptions:
    """One run of the command line (field ``x_y`` is option ``--x-y``); see ``python -m qdiff_lib run --help``."""

    dataset: str = "mnist"
    label: int = 1
    n_train: int = 100
    n_ref: int = 1000
    bottleneck: str = "quantum"
    ansatz: str = "rzry"
    n_qubits: int = 16
    n_layers: int = 3
    gate: str = "product"
    nonlinearity: str = "tanh"
    angle_scaling: str = "none"
    schedule: str = "cosine"
    timesteps: int = 1000
    noise: str = "gaussian"
    noise_kwargs: dict[str, Any] = field(default_factory=dict)
    timestep_distribution: str = "uniform"
    steps: int | None = 2000
    epochs: float | None = None
    batch_size: int = 64
    lr: float = 3e-4
    ema_decay: float = 0.999
    ema_warmup: bool = True
    checkpoint_every: int = 500
    n_samples: int = 64
    sampler: str = "ddim"
    sample_steps: int | None = None
    eta: float = 0.0
    seed: int = 0
    device: str = "auto"
    metrics: bool = True
    # Added after the first study: a run key leaves each out while it has the value below (KEY_NEUTRAL), so the
    # files of earlier runs keep their names.
    freeze_squeeze: bool = False
    freeze_circuit: bool = False
    quantum_backend: str = "auto"

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, ema_decay=self.ema_decay,
            ema_warmup=self.ema_warmup,
            schedule=self.schedule, timesteps=self.timesteps, noise=self.noise, noise_kwargs=dict(self.noise_kwargs),
            timestep_distribution=self.timestep_distribution, checkpoint_every=self.checkpoint_every,
            seed=self.seed, device=self.device,
        )

    def model_kwargs(self, in_channels: int) -> dict[str, Any]:
        return dict(
            in_channels=in_channels, bottleneck=self.bottleneck, n_qubits=self.n_qubits, n_layers=self.n_layers,
            ansatz=self.ansatz, gate=self.gate, nonlinearity=self.nonlinearity, angle_scaling=self.angle_scaling,
            seed=self.seed, freeze_squeeze=self.freeze_squeeze, freeze_circuit=self.freeze_circuit,
            quantum_backend=self.quantum_backend,
        )

    def validate(self) -> None:
        """Raise ValueError (listing the allowed values) for any bad option; loads nothing but dataset metadata."""
        from qdiff_lib import data

        info = data.dataset_info(self.dataset)
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not 0 <= self.label < info.n_classes:
            raise ValueError(f"label {self.label!r} is not a class of {self.dataset}; allowed: 0..{info.n_classes - 1}")
        for name in ("n_train", "n_ref", "n_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; allowed: {list(SAMPLERS)}")
        if self.sampler == "ddim" and self.sample_steps is not None and not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f"sample-steps must lie in 1..{self.timesteps} (the timesteps), got {self.sample_steps}")
        if self.sampler == "ddpm" and self.sample_steps not in (None, self.timesteps):
            raise ValueError(
                f"the ddpm sampler runs all {self.timesteps} timesteps; got sample-steps {self.sample_steps} "
                "(use --sampler ddim for fewer)"
            )
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        self.train_config()  # validates the training settings
        UNet(**self.model_kwargs(info.n_channels))  # validates the model settings (cheap to build)
        try:  # validates the noise options
            make_noise_source(self.noise, timesteps=self.timesteps, **self.noise_kwargs)
        except TypeError as error:  # an unknown keyword
            raise ValueError(f"bad --noise-kwargs for noise {self.noise!r}: {error}") from None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


#: Every package whose code produces a number of a run (training, sampling, metrics), recorded in its result.
NUMERIC_PACKAGES = ("torch", "torchmetrics", "scipy", "numpy", "pennylane", "medmnist", "scikit-learn")


def _versions() -> dict[str, str | None]:
    """Python, qdiff_lib and every package of :data:`NUMERIC_PACKAGES` (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "qdiff_lib": __version__}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__  # the build tag too (e.g. 2.13.0+cpu)
    return out


@torch.no_grad()
def _draw_samples(model: nn.Module, options: RunOptions, in_channels: int, device: torch.device, progress: bool,
                  batch: int = 256) -> torch.Tensor:
    diffusion = Diffusion.from_schedule(options.schedule, options.timesteps).to(device)
    noise_source = make_noise_source(options.noise, timesteps=options.timesteps, **options.noise_kwargs)
    generator = torch.Generator().manual_seed(sampling_seed(options.seed))
    model.eval()
    chunks = []
    for start in range(0, options.n_samples, batch):
        b = min(batch, options.n_samples - start)
        chunks.append(
            diffusion.sample(
                model, (b, in_channels, 28, 28), sampler=options.sampler, steps=options.sample_steps, eta=options.eta,
                generator=generator, noise_source=noise_source, progress=progress,
            ).cpu()
        )
        release_memory()  # see qdiff_lib._memory: freed activations of the batch go back to the OS
    return torch.cat(chunks)


@dataclass
class _Prepared:
    out: Path
    device: torch.device
    in_channels: int
    images: torch.Tensor
    reference: torch.Tensor
    t0: float


def _prepare(options: RunOptions, out: str | os.PathLike, force: bool) -> _Prepared:
    """Every check, and the data, before any work: raises FileExistsError, ValueError or FileNotFoundError."""
    from qdiff_lib import data

    t0 = time.perf_counter()
    out = Path(out)
    if (out / RESULT_NAME).exists() and not force:
        raise FileExistsError(f"{out / RESULT_NAME} exists; pass --force (force=True) to overwrite it")
    options.validate()
    device = resolve_device(options.device)
    images, reference = data.few_shot_split(options.dataset, options.label, options.n_train, options.n_ref, options.seed)
    mismatch = None if force else checkpoint_mismatch(out / CHECKPOINT_DIR, images, options.train_config())
    if mismatch:
        raise ValueError(
            f"the checkpoint in {out / CHECKPOINT_DIR} {mismatch}; pass --force to discard it, or use another --out"
        )
    return _Prepared(out, device, data.dataset_info(options.dataset).n_channels, images, reference, t0)


def run(
    options: RunOptions,
    out: str | os.PathLike,
    force: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Validate, load the data, train, sample, score; write ``result.json`` and ``samples.npz`` into ``out``.

    Returns the content of ``result.json``. Raises FileExistsError if ``out/result.json`` exists and not
    ``force``; ValueError for bad options (before any training). ``command`` is recorded as given.
    """
    return _execute(_prepare(options, out, force), options, force, progress, command)


def _execute(
    prep: _Prepared, options: RunOptions, force: bool, progress: bool, command: list[str] | None
) -> dict[str, Any]:
    out, device, images, reference = prep.out, prep.device, prep.images, prep.reference
    out.mkdir(parents=True, exist_ok=True)
    if force:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    model_kwargs = options.model_kwargs(prep.in_channels)
    model = UNet(**model_kwargs)
    n_parameters = {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True)}
    # the simulator that "auto" chose (None for arms without a circuit)
    backends = {getattr(m, "resolved_backend", None) for m in model.modules()} - {None}
    result = train(model, images, options.train_config(), checkpoint_dir=out / CHECKPOINT_DIR, progress=progress)

    t_sample = time.perf_counter()
    samples = _draw_samples(result.ema_model, options, prep.in_channels, device, progress)
    sample_s = time.perf_counter() - t_sample

    t_metrics = time.perf_counter()
    metrics: dict[str, Any] = {}
    if options.metrics:
        from qdiff_lib.metrics import evaluate

        metrics = evaluate(samples, options.dataset, options.label, images, reference=reference, seed=options.seed,
                           device=device)
    metrics_s = time.perf_counter() - t_metrics

    summary = result.summary()
    summary.pop("timings")  # recorded below, with the sampling and metrics times
    record = {
        "config": {
            "options": dataclasses.asdict(options),
            "train": summary.pop("config"),
            "model": model_kwargs,
            "quantum_backend": next(iter(backends)) if backends else None,
            "sampling_seed": sampling_seed(options.seed),
        },
        "loss_history": summary.pop("loss_history"),
        "metrics": metrics,
        "train": summary,
        "n_parameters": n_parameters,
        "n_reference": len(reference),
        "device": str(device),
        "versions": _versions(),
        "numerics": numerics.state(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if (status := _git("status", "--porcelain")) is None else bool(status),
        "timings": {
            "train_s": result.timings["train_s"],
            "per_step_s": result.timings["per_step_s"],
            "sample_s": sample_s,
            "metrics_s": metrics_s,
            "total_s": time.perf_counter() - prep.t0,
        },
        "command": command,
    }
    array = samples.numpy().astype(np.float32)
    atomic_write(out / SAMPLES_NAME, lambda f: np.savez(f, samples=array))
    text = json.dumps(record, indent=1, allow_nan=False)
    atomic_write(out / RESULT_NAME, lambda f: f.write(text.encode()))
    return record


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    from qdiff_lib.data import DATASETS
    from qdiff_lib.quantum import ANSATZE
    from qdiff_lib.quantum import BACKENDS as QUANTUM_BACKENDS

    d = RunOptions()
    data_group = p.add_argument_group("data")
    data_group.add_argument("--dataset", choices=DATASETS, default=d.dataset, help="dataset (default: %(default)s)")
    data_group.add_argument("--label", type=int, default=d.label,
                            help="the one class trained on, 0..n_classes-1 (default: %(default)s)")
    data_group.add_argument("--n-train", type=int, default=d.n_train,
                            help="training images, drawn from the class with --seed (default: %(default)s)")
    data_group.add_argument("--n-ref", type=int, default=d.n_ref,
                            help="held-out real images of the class for the metrics (default: %(default)s)")

    model = p.add_argument_group("model")
    model.add_argument("--bottleneck", choices=BOTTLENECKS, default=d.bottleneck,
                       help="bottleneck: none (official baseline), se, se_frozen, quantum, fourier (classical surrogate "
                            "of the circuit) (default: %(default)s)")
    model.add_argument("--ansatz", choices=ANSATZE, default=d.ansatz, help="circuit ansatz (default: %(default)s)")
    model.add_argument("--n-qubits", type=int, default=d.n_qubits,
                       help="qubits, and the squeezed width of every gated arm (default: %(default)s)")
    model.add_argument("--n-layers", type=int, default=d.n_layers, help="circuit layers (default: %(default)s)")
    model.add_argument("--gate", choices=GATES, default=d.gate,
                       help="product: h*g as the official code; sigmoid: h*sigmoid(g) (default: %(default)s)")
    model.add_argument("--nonlinearity", choices=NONLINEARITIES, default=d.nonlinearity,
                       help="middle of the se and se_frozen arms (default: %(default)s)")
    model.add_argument("--angle-scaling", choices=ANGLE_SCALINGS, default=d.angle_scaling,
                       help="map from the squeeze output to RY angles (default: %(default)s)")
    model.add_argument("--freeze-squeeze", action="store_true",
                       help="freeze the gate's squeeze layer at its initialisation (any gated bottleneck; with "
                            "--bottleneck quantum --ansatz paper: the paper's model as its released code trained it)")
    model.add_argument("--freeze-circuit", action="store_true",
                       help="freeze the circuit's weights at their initialisation (--bottleneck quantum only)")
    model.add_argument("--quantum-backend", choices=QUANTUM_BACKENDS, default=d.quantum_backend,
                       help="simulator of the circuit: auto picks the cheapest exact one (default: %(default)s)")

    diffusion = p.add_argument_group("diffusion")
    diffusion.add_argument("--schedule", choices=sorted(schedules.SCHEDULES), default=d.schedule,
                           help="beta schedule (default: %(default)s)")
    diffusion.add_argument("--timesteps", type=int, default=d.timesteps, help="T (default: %(default)s)")
    diffusion.add_argument("--noise", choices=NOISE_SOURCES, default=d.noise,
                           help="noise source, for training and sampling (default: %(default)s)")
    diffusion.add_argument("--noise-kwargs", type=json.loads, default={},
                           help='options of the noise source as JSON, e.g. \'{"n_qubits": 8}\' (default: none)')
    diffusion.add_argument("--timestep-distribution", choices=schedules.TIMESTEP_DISTRIBUTIONS,
                           default=d.timestep_distribution, help="training timesteps (default: %(default)s)")

    training = p.add_argument_group("training")
    budget = training.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=d.steps, help="optimiser steps (default: %(default)s)")
    budget.add_argument("--epochs", type=float, default=None,
                        help="budget in epochs instead: steps = ceil(epochs * n_train / batch_size)")
    training.add_argument("--batch-size", type=int, default=d.batch_size,
                          help="images per optimiser step, drawn with replacement (default: %(default)s)")
    training.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    training.add_argument("--ema-decay", type=float, default=d.ema_decay,
                          help="decay of the weights' moving average, sampled from (default: %(default)s)")
    training.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false",
                          help="use the EMA decay from the first step (default: warm-up, "
                               "decay min(ema_decay, (1+step)/(10+step)))")
    training.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                          help="checkpoint every K steps, 0: only at the end (default: %(default)s)")
    training.add_argument("--seed", type=int, default=d.seed,
                          help="seeds the data draw, the model, training and sampling (default: %(default)s)")
    training.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")

    sampling = p.add_argument_group("sampling and metrics")
    sampling.add_argument("--n-samples", type=int, default=d.n_samples,
                          help="images generated from the EMA model (default: %(default)s)")
    sampling.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                          help="ddim (few deterministic steps) or ddpm (all T ancestral steps) (default: %(default)s)")
    sampling.add_argument("--sample-steps", type=int, default=None,
                          help="DDIM steps, 1..timesteps (default: 50, or T if smaller); ddpm always runs T")
    sampling.add_argument("--eta", type=float, default=d.eta, help="DDIM stochasticity (default: %(default)s)")
    sampling.add_argument("--no-metrics", dest="metrics", action="store_false",
                          help="skip qdiff_lib.metrics.evaluate (result.json gets metrics = {})")

    output = p.add_argument_group("output")
    add_threads_argument(output)
    output.add_argument("--out", required=True, type=Path, help="output folder DIR")
    output.add_argument("--force", action="store_true", help="overwrite DIR/result.json and discard its checkpoint")
    output.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_threads_argument(group) -> None:
    """``--threads N``: torch's intra-op threads; part of the numerics (a run reproduces with the same count)."""
    group.add_argument(
        "--threads", type=_positive_int, default=1,
        help="torch threads of the run (default: %(default)s). The bits of a run depend on it: committed results "
             "use 1; more threads are faster but reproduce only with the same count",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qdiff_lib",
        description="Experiments of the companion to arXiv:2504.00034 (quantum-bottleneck diffusion).",
        epilog=f"CPU numerics are pinned to AVX2 kernels so that results reproduce on every x86-64 CPU; set "
               f"{numerics.SWITCH}=native for the CPU's fastest kernels (see qdiff_lib.numerics).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = sub.add_parser(
        "run", help="train one model, sample from it, score the samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(run_parser)
    from qdiff_lib import study

    study_parser = sub.add_parser(
        "study", help="run (or resume) the studies behind the book's chapters",
        description=study.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    study.add_arguments(study_parser)
    add_threads_argument(study_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        numerics.mode()
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    for problem in numerics.check():
        print(f"{parser.prog}: numerics not pinned: {problem}", file=sys.stderr)
    if args.command == "study":
        from qdiff_lib import study

        return study.main(args, parser)
    values = vars(args)
    out, force, progress = values.pop("out"), values.pop("force"), not values.pop("no_progress")
    values.pop("command")
    values.pop("threads")
    if values["epochs"] is not None:
        values["steps"] = None
    if not isinstance(values["noise_kwargs"], dict):
        parser.error(f"--noise-kwargs must be a JSON object, got {values['noise_kwargs']!r}")
    options = RunOptions(**values)
    try:
        prepared = _prepare(options, out, force)
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        parser.error(str(error))
    command = ["python", "-m", "qdiff_lib", *(sys.argv[1:] if argv is None else argv)]
    try:
        record = _execute(prepared, options, force, progress, command)
    except NonFiniteError as error:
        print(f"{parser.prog} run: training diverged: {error}", file=sys.stderr)
        return 1
    except MemoryError as error:  # the simulators refuse before allocating, with the size in readable units
        print(f"{parser.prog} run: not enough memory: {error}", file=sys.stderr)
        return 1
    print(f"wrote {Path(out) / RESULT_NAME} and {Path(out) / SAMPLES_NAME} "
          f"({len(record['loss_history'])} steps, final loss {record['loss_history'][-1]:.4g})")
    return 0
