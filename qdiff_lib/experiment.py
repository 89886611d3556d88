"""Experiments: one run of the model, from its options to its result files.

A *run* trains one model (:func:`qdiff_lib.train.train`), samples from it and scores the samples
(:func:`qdiff_lib.metrics.evaluate`). :class:`RunOptions` is the one definition of a run's options:

* the command line ``python -m qdiff_lib run`` is generated from its fields (:func:`add_run_arguments`): each
  field's ``metadata`` (see :func:`option`) holds the help text, the choices, the option group and, where it is not
  ``--x-y`` for field ``x_y``, the flag's spelling;
* the training settings (:meth:`RunOptions.train_config`) are the fields that :class:`~qdiff_lib.train.TrainConfig`
  shares with it;
* the run key of a study (:func:`qdiff_lib.study.run_key`) hashes them, leaving out the options marked
  ``key_neutral`` (:data:`KEY_NEUTRAL`) while they keep their default.

:func:`run` writes, into its output folder:

* ``result.json`` (:data:`RESULT_NAME`): ``config`` (every option, the training config and the model's settings,
  the simulator the circuit ran on, the sampling seed), ``loss_history`` (one loss per optimiser step),
  ``metrics`` (:func:`qdiff_lib.metrics.evaluate`; ``{}`` without metrics), ``train``, ``n_parameters``,
  ``metrics_version`` (:data:`qdiff_lib.metrics.METRICS_VERSION`), ``samples`` (file, shape and sha256 of the
  samples, :func:`samples_record`), ``n_reference``, ``device``, ``versions`` (of every package that produces a
  number), ``numerics`` (:func:`qdiff_lib.numerics.state`: the pinned kernels, torch's threads, the CPU),
  ``git_commit``, ``git_dirty``, ``timings`` (seconds) and ``command``;
* ``samples.npz`` (:data:`SAMPLES_NAME`): key ``samples``, float32 ``(n_samples, C, 28, 28)`` in [-1, 1], drawn
  from the EMA model;
* with ``score_at``: ``samples_step<k>.npz`` for each of its steps, their metrics in ``result.json``'s
  ``metrics_at`` and checksums in ``samples_at`` (kept meanwhile in :data:`SCORED_AT_NAME`);
* ``checkpoints/checkpoint.pt`` (under :data:`CHECKPOINT_DIR`): the training checkpoint. Running the same options
  into the same folder again resumes from it.

Both result files are written atomically (a temporary file, then a rename). An existing ``result.json`` is never
overwritten without ``force`` (which also discards the old checkpoint). Every option is validated, and the data are
loaded, before any training starts (:func:`prepare`); a bad value raises ValueError listing the allowed ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qdiff_lib import REPO_ROOT, __version__, data, numerics, schedules
from qdiff_lib._checks import check_choice
from qdiff_lib._io import atomic_write
from qdiff_lib._memory import release_memory
from qdiff_lib.diffusion import SAMPLERS, Diffusion
from qdiff_lib.noise import NOISE_SOURCES, make_noise_source
from qdiff_lib.train import TrainConfig, checkpoint_mismatch, resolve_device, train
from qdiff_lib.unet import ANGLE_SCALINGS, BOTTLENECKS, GATES, NONLINEARITIES, UNet, count_parameters

__all__ = [
    "RESULT_NAME",
    "SAMPLES_NAME",
    "CHECKPOINT_DIR",
    "KEY_NEUTRAL",
    "NUMERIC_PACKAGES",
    "RunOptions",
    "PreparedRun",
    "option",
    "sampling_seed",
    "provenance",
    "samples_sha256",
    "samples_record",
    "metrics_version",
    "prepare",
    "run",
    "training_losses",
    "add_run_arguments",
    "add_threads_argument",
    "options_from_args",
    "positive_int",
]

RESULT_NAME = "result.json"
SAMPLES_NAME = "samples.npz"
#: The scores at intermediate steps (``score_at``) of a run in progress, so that a resumed run keeps them.
SCORED_AT_NAME = "scored_at.json"
CHECKPOINT_DIR = "checkpoints"

#: Every package whose code produces a number of a run (training, sampling, metrics), recorded in its result.
NUMERIC_PACKAGES = ("torch", "torchmetrics", "scipy", "numpy", "pennylane", "medmnist", "scikit-learn")


def sampling_seed(seed: int) -> int:
    """The seed of the sampling generator, derived from the run's ``seed`` (independent of the training stream)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------------- the options


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    flag: str | None = None,
    show_default: bool = True,
    exclusive: str | None = None,
    example: str | None = None,
    key_neutral: bool = False,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A :class:`RunOptions` field with what its command-line option needs, in ``dataclasses.field(metadata=...)``.

    Args:
        help: the option's help text; `` (default: %(default)s)`` is appended unless it names its default itself,
            ``show_default`` is False, or the option is an on/off flag.
        group: the titled group of ``--help`` it is listed in.
        choices: the allowed values, or a function returning them (for lists whose module is slow to import).
        flag: the option's spelling when it is not ``--x-y`` for field ``x_y`` (an on/off field whose default is
            True is switched off by ``--no-x-y``).
        exclusive: options sharing this name are mutually exclusive.
        example: a valid value, quoted by the error message of a malformed one (JSON options).
        key_neutral: added after the first study: the run key leaves the option out while it has its default
            (:data:`KEY_NEUTRAL`), so that earlier runs keep their names.
    """
    metadata = {"help": help, "group": group, "choices": choices, "flag": flag, "show_default": show_default,
                "exclusive": exclusive, "example": example, "key_neutral": key_neutral}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def _datasets() -> tuple[str, ...]:
    return data.DATASETS  # read from medmnist on first use


def _ansatze() -> tuple[str, ...]:
    from qdiff_lib.quantum import ANSATZE  # imports PennyLane

    return ANSATZE


def _quantum_backends() -> tuple[str, ...]:
    from qdiff_lib.quantum import BACKENDS

    return BACKENDS


def _augmentations() -> tuple[str, ...]:
    from qdiff_lib.classifier import AUGMENTATIONS

    return AUGMENTATIONS


_DATA, _MODEL, _DIFFUSION, _TRAINING, _SAMPLING = "data", "model", "diffusion", "training", "sampling and metrics"


@dataclass
class RunOptions:
    """One run (field ``x_y`` is option ``--x-y`` of ``python -m qdiff_lib run``; see its ``--help``)."""

    dataset: str = option("mnist", group=_DATA, choices=_datasets, help="dataset")
    label: int = option(1, group=_DATA, help="the one class trained on, 0..n_classes-1")
    n_train: int = option(100, group=_DATA, help="training images, drawn from the class with --seed")
    n_ref: int = option(1000, group=_DATA, help="held-out real images of the class for the metrics (with "
                                                "--reference-pool held_out: at most this many)")
    reference_pool: str = option(
        "test", group=_DATA, choices=data.REFERENCE_POOLS, key_neutral=True,
        help="where the reference images come from: test (the test split) or held_out (every held-out image of "
             "the class: unused training images, val and test; see qdiff_lib.data.few_shot_split)")
    bottleneck: str = option(
        "quantum", group=_MODEL, choices=BOTTLENECKS,
        help="bottleneck: none (official baseline), se, se_frozen, quantum, fourier (classical surrogate of the "
             "circuit)")
    ansatz: str = option("rzry", group=_MODEL, choices=_ansatze, help="circuit ansatz")
    n_qubits: int = option(16, group=_MODEL, help="qubits, and the squeezed width of every gated arm")
    n_layers: int = option(3, group=_MODEL, help="circuit layers")
    gate: str = option("product", group=_MODEL, choices=GATES,
                       help="product: h*g as the official code; sigmoid: h*sigmoid(g)")
    nonlinearity: str = option("tanh", group=_MODEL, choices=NONLINEARITIES, help="middle of the se and se_frozen arms")
    angle_scaling: str = option("none", group=_MODEL, choices=ANGLE_SCALINGS,
                                help="map from the squeeze output to RY angles")
    schedule: str = option("cosine", group=_DIFFUSION, choices=sorted(schedules.SCHEDULES), help="beta schedule")
    timesteps: int = option(1000, group=_DIFFUSION, help="T")
    noise: str = option("gaussian", group=_DIFFUSION, choices=NOISE_SOURCES,
                        help="noise source, for training and sampling")
    noise_kwargs: dict[str, Any] = option(
        default_factory=dict, group=_DIFFUSION, example='{"n_qubits": 8}',
        help="options of the noise source as JSON, e.g. '{\"n_qubits\": 8}' (default: none)")
    timestep_distribution: str = option("uniform", group=_DIFFUSION, choices=schedules.TIMESTEP_DISTRIBUTIONS,
                                        help="training timesteps")
    steps: int | None = option(2000, group=_TRAINING, exclusive="budget", help="optimiser steps")
    epochs: float | None = option(None, group=_TRAINING, exclusive="budget", show_default=False,
                                  help="budget in epochs instead: steps = ceil(epochs * n_train / batch_size)")
    batch_size: int = option(64, group=_TRAINING, help="images per optimiser step, drawn with replacement")
    lr: float = option(3e-4, group=_TRAINING, help="Adam learning rate")
    ema_decay: float = option(0.999, group=_TRAINING, help="decay of the weights' moving average, sampled from")
    ema_warmup: bool = option(True, group=_TRAINING, flag="--no-ema-warmup",
                              help="use the EMA decay from the first step (default: warm-up, "
                                   "decay min(ema_decay, (1+step)/(10+step)))")
    checkpoint_every: int = option(500, group=_TRAINING, help="checkpoint every K steps, 0: only at the end")
    n_samples: int = option(64, group=_SAMPLING, help="images generated from the EMA model")
    sampler: str = option("ddim", group=_SAMPLING, choices=SAMPLERS,
                          help="ddim (few deterministic steps) or ddpm (all T ancestral steps)")
    sample_steps: int | None = option(
        None, group=_SAMPLING, help="DDIM steps, 1..timesteps (default: 50, or T if smaller); ddpm always runs T")
    eta: float = option(0.0, group=_SAMPLING, help="DDIM stochasticity")
    seed: int = option(0, group=_TRAINING, help="seeds the data draw, the model, training and sampling")
    device: str = option("auto", group=_TRAINING, help="auto, cpu, cuda or cuda:N")
    metrics: bool = option(True, group=_SAMPLING, flag="--no-metrics",
                           help="skip qdiff_lib.metrics.evaluate (result.json gets metrics = {})")
    # Added after the first study: a run key leaves each out while it has its default (KEY_NEUTRAL), so the files
    # of earlier runs keep their names.
    freeze_squeeze: bool = option(
        False, group=_MODEL, key_neutral=True,
        help="freeze the gate's squeeze layer at its initialisation (any gated bottleneck; with --bottleneck quantum "
             "--ansatz paper: the paper's model as its released code trained it)")
    freeze_circuit: bool = option(
        False, group=_MODEL, key_neutral=True,
        help="freeze the circuit's weights at their initialisation (--bottleneck quantum only)")
    quantum_backend: str = option("auto", group=_MODEL, choices=_quantum_backends, key_neutral=True,
                                  help="simulator of the circuit: auto picks the cheapest exact one")
    score_at: str = option(
        "", group=_SAMPLING, key_neutral=True, show_default=False,
        help="comma-separated optimiser steps before the last at which the EMA model is also sampled and scored, "
             "e.g. 1000,2000,5000: a convergence curve from one run (result.json: metrics_at, samples_at)")
    classifier_augment: str = option(
        "none", group=_SAMPLING, choices=_augmentations, key_neutral=True,
        help="training-time augmentation of the classifier whose features and predictions define every metric "
             "(qdiff_lib.classifier.AUGMENTATIONS; none: the classifier of every run scored before the option "
             "existed). The calibration of the normalised KID must use the same classifier: results/calibration/"
             "<dataset>-l<label>+<augment>.json. The studies choose qdiff_lib.classifier_choice.ADOPTED_AUGMENT where "
             "their runs were planned after it")

    def score_steps(self) -> tuple[int, ...]:
        """The steps of ``score_at``, sorted (ValueError for anything but positive integers)."""
        if not self.score_at.strip():
            return ()
        try:
            steps = sorted({int(k) for k in self.score_at.split(",")})
        except ValueError:
            raise ValueError(f"score-at must be comma-separated integers such as '1000,2000', got {self.score_at!r}"
                             ) from None
        if steps[0] < 1:
            raise ValueError(f"score-at steps must be >= 1, got {self.score_at!r}")
        return tuple(steps)

    def train_config(self) -> TrainConfig:
        """The training settings: every field of :class:`~qdiff_lib.train.TrainConfig`, taken from these options."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        values["noise_kwargs"] = dict(values["noise_kwargs"])
        return TrainConfig(**values)

    def model_kwargs(self, in_channels: int) -> dict[str, Any]:
        """Keyword arguments of :class:`~qdiff_lib.unet.UNet` (as recorded in ``result.json``)."""
        return dict(
            in_channels=in_channels, bottleneck=self.bottleneck, n_qubits=self.n_qubits, n_layers=self.n_layers,
            ansatz=self.ansatz, gate=self.gate, nonlinearity=self.nonlinearity, angle_scaling=self.angle_scaling,
            seed=self.seed, freeze_squeeze=self.freeze_squeeze, freeze_circuit=self.freeze_circuit,
            quantum_backend=self.quantum_backend,
        )

    def validate(self) -> None:
        """Raise ValueError (listing the allowed values) for any bad option; loads nothing but dataset metadata."""
        info = data.dataset_info(self.dataset)
        if isinstance(self.label, bool) or not isinstance(self.label, int) or not 0 <= self.label < info.n_classes:
            raise ValueError(f"label {self.label!r} is not a class of {self.dataset}; allowed: 0..{info.n_classes - 1}")
        for name in ("n_train", "n_ref", "n_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("classifier augmentation", self.classifier_augment, _augmentations())
        if self.sampler == "ddim" and self.sample_steps is not None and not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f"sample-steps must lie in 1..{self.timesteps} (the timesteps), got {self.sample_steps}")
        if self.sampler == "ddpm" and self.sample_steps not in (None, self.timesteps):
            raise ValueError(
                f"the ddpm sampler runs all {self.timesteps} timesteps; got sample-steps {self.sample_steps} "
                "(use --sampler ddim for fewer)"
            )
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        total = self.train_config().total_steps(self.n_train)  # validates the training settings
        if any(k >= total for k in self.score_steps()):
            raise ValueError(f"score-at steps must lie in 1..{total - 1} (the last step is always scored), got "
                             f"{self.score_at!r}")
        UNet(**self.model_kwargs(info.n_channels))  # validates the model settings (cheap to build)
        try:  # validates the noise options
            make_noise_source(self.noise, timesteps=self.timesteps, **self.noise_kwargs)
        except TypeError as error:  # an unknown keyword
            raise ValueError(f"bad --noise-kwargs for noise {self.noise!r}: {error}") from None


#: Options added after the first study, with the value under which a run key leaves them out (see
#: :func:`qdiff_lib.study.run_key`): a run that does not use them keeps the name it had before they existed.
KEY_NEUTRAL: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(RunOptions) if f.metadata["key_neutral"]}


# ----------------------------------------------------------------------------------------------- the command line


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_threads_argument(group) -> None:
    """``--threads N``: torch's intra-op threads; part of the numerics (a run reproduces with the same count)."""
    group.add_argument(
        "--threads", type=positive_int, default=1,
        help="torch threads of the run (default: %(default)s). The bits of a run depend on it: committed results "
             "use 1; more threads are faster but reproduce only with the same count",
    )


def _number(kind: type, expected: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _json_object(example: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected a JSON object such as '{example}', got {text!r} ({error})") \
                from None
        if not isinstance(value, dict):
            kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            kind = kinds.get(type(value), "a number")
            raise argparse.ArgumentTypeError(f"expected a JSON object such as '{example}', got {text!r} ({kind})")
        return value

    parse.__name__ = "JSON object"
    return parse


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None`` and ``int``; the annotation itself otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return inner
    return typing.get_origin(annotation) or annotation


_PARSERS: dict[Any, Callable[[dataclasses.Field], Callable[[str], Any]]] = {
    int: lambda f: _number(int, "an integer"),
    float: lambda f: _number(float, "a number"),
    str: lambda f: str,
    dict: lambda f: _json_object(f.metadata["example"]),
}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per :class:`RunOptions` field to ``parser``, in titled groups, as the fields' metadata say."""
    hints = typing.get_type_hints(RunOptions)
    fields = dataclasses.fields(RunOptions)
    order = list(dict.fromkeys(f.metadata["group"] for f in fields))  # groups in the order they first appear
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for f in sorted(fields, key=lambda f: order.index(f.metadata["group"])):  # stable: field order within a group
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        if meta["exclusive"]:
            group = exclusive.get(meta["exclusive"]) or exclusive.setdefault(
                meta["exclusive"], group.add_mutually_exclusive_group())
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = _value_type(hints[f.name])
        if kind is bool:
            flag = meta["flag"] or ("--no-" if default else "--") + f.name.replace("_", "-")
            group.add_argument(flag, dest=f.name, action="store_false" if default else "store_true",
                               help=meta["help"])
            continue
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        text = meta["help"]
        if meta["show_default"] and "(default" not in text:
            text += " (default: %(default)s)"
        group.add_argument(meta["flag"] or "--" + f.name.replace("_", "-"), dest=f.name, type=_PARSERS[kind](f),
                           default=default, choices=choices, help=text)


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of parsed arguments (other attributes of ``args`` are ignored)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions)}
    if values["epochs"] is not None:  # --epochs replaces the default --steps
        values["steps"] = None
    return RunOptions(**values)


# ----------------------------------------------------------------------------------------------- the run


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


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


def provenance() -> dict[str, Any]:
    """What produced a number: ``versions``, ``numerics``, ``git_commit`` and ``git_dirty`` (as in ``result.json``)."""
    status = _git("status", "--porcelain")
    return {"versions": _versions(), "numerics": numerics.state(), "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def samples_sha256(samples: np.ndarray) -> str:
    """sha256 of ``samples`` as C-contiguous little-endian float32 bytes (not of the ``.npz`` file, whose zip
    container may differ between numpy versions for the same array)."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").tobytes()).hexdigest()


def samples_record(samples: np.ndarray) -> dict[str, Any]:
    """What a result file says of its samples: the file (beside ``result.json``), shape and checksum."""
    return {"file": SAMPLES_NAME, "shape": list(samples.shape), "dtype": "float32", "sha256": samples_sha256(samples)}


def metrics_version() -> int:
    """The current :data:`qdiff_lib.metrics.METRICS_VERSION` (imported late: the metrics are heavy to import)."""
    from qdiff_lib.metrics import METRICS_VERSION

    return METRICS_VERSION


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
class PreparedRun:
    """A checked run with its data loaded (:func:`prepare`); :meth:`execute` does the work."""

    options: RunOptions
    out: Path
    force: bool
    device: torch.device
    in_channels: int
    images: torch.Tensor
    reference: torch.Tensor
    t0: float

    def score(self, samples: torch.Tensor) -> dict[str, Any]:
        """:func:`qdiff_lib.metrics.evaluate` of ``samples`` against this run's images (``{}`` without metrics)."""
        if not self.options.metrics:
            return {}
        from qdiff_lib.metrics import evaluate

        return evaluate(samples, self.options.dataset, self.options.label, self.images, reference=self.reference,
                        seed=self.options.seed, device=self.device, classifier_augment=self.options.classifier_augment)

    def execute(self, progress: bool = True, command: list[str] | None = None) -> dict[str, Any]:
        """Train, sample, score; write ``result.json`` and ``samples.npz``; return the content of ``result.json``."""
        options, out = self.options, self.out
        out.mkdir(parents=True, exist_ok=True)
        if self.force:
            shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        model_kwargs = options.model_kwargs(self.in_channels)
        model = UNet(**model_kwargs)
        n_parameters = {"total": count_parameters(model), "trainable": count_parameters(model, trainable_only=True)}
        # the simulator that "auto" chose (None for arms without a circuit)
        backends = {getattr(m, "resolved_backend", None) for m in model.modules()} - {None}
        # scores at intermediate steps (score_at), kept in a progress file so that a resumed run keeps them
        progress_path = out / SCORED_AT_NAME
        if self.force:
            progress_path.unlink(missing_ok=True)
        scored = json.loads(progress_path.read_text()) if progress_path.exists() else {"metrics_at": {},
                                                                                        "samples_at": {}}

        def on_snapshot(step: int, ema: nn.Module) -> None:
            snapshot = _draw_samples(ema, options, self.in_channels, self.device, progress=False)
            array = snapshot.numpy().astype(np.float32)
            name = f"samples_step{step}.npz"
            atomic_write(out / name, lambda f: np.savez(f, samples=array))
            scored["metrics_at"][str(step)] = self.score(snapshot)
            scored["samples_at"][str(step)] = {**samples_record(array), "file": name}
            text = json.dumps(scored, indent=1, allow_nan=False)
            atomic_write(progress_path, lambda f: f.write(text.encode()))

        pending = [k for k in options.score_steps() if str(k) not in scored["metrics_at"]]
        result = train(model, self.images, options.train_config(), checkpoint_dir=out / CHECKPOINT_DIR,
                       progress=progress, snapshot_at=pending, on_snapshot=on_snapshot)

        t_sample = time.perf_counter()
        samples = _draw_samples(result.ema_model, options, self.in_channels, self.device, progress)
        sample_s = time.perf_counter() - t_sample

        t_metrics = time.perf_counter()
        metrics = self.score(samples)
        metrics_s = time.perf_counter() - t_metrics

        array = samples.numpy().astype(np.float32)
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
            "metrics_version": metrics_version() if options.metrics else None,
            "samples": samples_record(array),
            **({"metrics_at": scored["metrics_at"], "samples_at": scored["samples_at"]} if options.score_at else {}),
            "train": summary,
            "n_parameters": n_parameters,
            "n_reference": len(self.reference),
            "device": str(self.device),
            **provenance(),  # versions, numerics, git_commit, git_dirty
            "timings": {
                "train_s": result.timings["train_s"],
                "per_step_s": result.timings["per_step_s"],
                "sample_s": sample_s,
                "metrics_s": metrics_s,
                "total_s": time.perf_counter() - self.t0,
            },
            "command": command,
        }
        atomic_write(out / SAMPLES_NAME, lambda f: np.savez(f, samples=array))
        text = json.dumps(record, indent=1, allow_nan=False)
        atomic_write(out / RESULT_NAME, lambda f: f.write(text.encode()))
        return record


def prepare(options: RunOptions, out: str | os.PathLike, force: bool = False) -> PreparedRun:
    """Every check, and the data, before any work: raises FileExistsError, ValueError or FileNotFoundError."""
    t0 = time.perf_counter()
    out = Path(out)
    if (out / RESULT_NAME).exists() and not force:
        raise FileExistsError(f"{out / RESULT_NAME} exists; pass --force (force=True) to overwrite it")
    options.validate()
    device = resolve_device(options.device)
    images, reference = data.few_shot_split(options.dataset, options.label, options.n_train, options.n_ref,
                                            options.seed, pool=options.reference_pool)
    mismatch = None if force else checkpoint_mismatch(out / CHECKPOINT_DIR, images, options.train_config())
    if mismatch:
        raise ValueError(
            f"the checkpoint in {out / CHECKPOINT_DIR} {mismatch}; pass --force to discard it, or use another --out"
        )
    return PreparedRun(options, out, force, device, data.dataset_info(options.dataset).n_channels, images, reference,
                       t0)


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
    return prepare(options, out, force).execute(progress, command)


class _PrefixDone(Exception):
    """Raised by :func:`training_losses`' callback to end training after the steps it needs."""


def training_losses(options: RunOptions, steps: int) -> list[float]:
    """The losses of the first ``steps`` optimiser steps of the run ``options``, as :func:`run` computes them.

    The same data, model and training loop as :func:`run`, stopped after ``steps`` steps, with no checkpoint,
    sampling or scoring: the CI's prefix re-check of committed runs (:mod:`qdiff_lib.recheck`). Raises ValueError
    for bad options, or ``steps`` outside 1..the run's steps.
    """
    options.validate()
    images, _ = data.few_shot_split(options.dataset, options.label, options.n_train, options.n_ref, options.seed,
                                    pool=options.reference_pool)
    config = options.train_config()
    total = config.total_steps(len(images))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
        raise ValueError(f"steps {steps!r}: expected an integer in 1..{total} (the run's steps)")
    model = UNet(**options.model_kwargs(data.dataset_info(options.dataset).n_channels))
    losses: list[float] = []

    def collect(step: int, loss: float, _model: nn.Module) -> None:
        losses.append(loss)
        if step >= steps:
            raise _PrefixDone

    try:
        train(model, images, config, checkpoint_dir=None, progress=False, callback=collect)
    except _PrefixDone:
        pass
    return losses
