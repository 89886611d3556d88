"""Studies: named grids of runs, profiles, resumable execution and compact result files.

A *run* is one :class:`qdiff_lib.experiment.RunOptions` (train one model, sample, score). A *study* is a named grid of
runs (``mnist``, ``medmnist``, ``scaling``, ``noise_schedules``) built for a *profile*:

* ``ci``: small budgets, so that every chapter executes in CI;
* ``full``: the study behind the verdicts (2000 optimiser steps, 3 seeds, 500 samples per configuration).

:func:`run_study` executes the runs, several at once on local worker processes (``--workers N``, default: one
per core, one torch thread each) or on a running Dask cluster (``--scheduler ADDRESS``); see
:mod:`qdiff_lib.parallel`. Each finished run writes, at once and atomically, a small JSON summary
``results/<profile>/<study>/<key>.json`` (options, metrics, a down-sampled loss curve, timings, versions, commit,
the command that produced it, and a preview of its first samples quantised to 8 bits, so that the book can show
what each committed model draws); a run whose summary exists is never recomputed, and an interrupted run resumes
from its training checkpoint under ``runs/`` (outside git). A run that fails is reported with its error and the
others go on; the command then exits with status 1. The files do not depend on where a run was computed: every run
is seeded from its options and runs with the same numerics and torch threads. ``python -m qdiff_lib study
--profile full`` (``make study``) runs every study of the profile.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qdiff_lib import REPO_ROOT, experiment, numerics
from qdiff_lib._checks import check_choice
from qdiff_lib._io import atomic_write
from qdiff_lib.experiment import KEY_NEUTRAL, RESULT_NAME, SAMPLES_NAME, RunOptions, positive_int
from qdiff_lib.parallel import Executor, TaskFailure, default_workers

__all__ = [
    "ARMS",
    "PROFILES",
    "STUDIES",
    "Profile",
    "arm_options",
    "arm_of",
    "study_runs",
    "run_key",
    "run_one",
    "run_study",
    "StudyFailed",
    "encode_preview",
    "decode_preview",
    "load_previews",
    "load_results",
    "results_dir",
    "recompute_cost_s",
    "is_pinned",
    "recheck_candidate",
    "recheck_mode",
    "recheck_differences",
]

#: The arms compared throughout the book: name -> the model options that define it. All gated arms share the U-Net,
#: the squeeze and up layers and their seeds, and differ only in the middle of the gate (or in what is frozen).
ARMS: dict[str, dict[str, Any]] = {
    "none": {"bottleneck": "none"},  # the official classical baseline: no bottleneck module (unmatched)
    "se": {"bottleneck": "se"},  # squeeze-and-excitation gate, classical nonlinearity tanh (matched control)
    "se_frozen": {"bottleneck": "se_frozen"},  # what the official quantum arm effectively trained
    "quantum_paper": {"bottleneck": "quantum", "ansatz": "paper"},  # the official circuit (zero gradient)
    "quantum_rzry": {"bottleneck": "quantum", "ansatz": "rzry"},  # the authors' later fix
    # Controls that separate "quantum" from "a cosine-shaped gate" (the circuit with no entangler and no weights is
    # a product of cosines of the angles):
    "se_cos": {"bottleneck": "se", "nonlinearity": "cos"},
    "quantum_rzry_frozen": {"bottleneck": "quantum", "ansatz": "rzry", "freeze_circuit": True},  # weights fixed
    "quantum_rzry_separable": {"bottleneck": "quantum", "ansatz": "rzry_separable"},  # no entangler
    "quantum_paper_released": {"bottleneck": "quantum", "ansatz": "paper", "freeze_squeeze": True},
    "fourier": {"bottleneck": "fourier"},  # classical surrogate of the rzry layer (qdiff_lib.surrogate)
}
#: The arms of the first MNIST study (8 qubits), whose grid must not change.
MNIST_V1_ARMS = ("none", "se", "se_frozen", "quantum_paper", "quantum_rzry")
#: The arms of the 16-qubit MNIST study (``none`` has no gate and no width: its 8-qubit runs pair with these).
MNIST16_ARMS = ("se", "se_cos", "quantum_paper", "quantum_rzry", "quantum_rzry_frozen", "quantum_rzry_separable",
                "fourier")
#: The circuit width of the paper (and of the ``mnist16`` study's full profile).
PAPER_N_QUBITS = 16


@dataclass(frozen=True)
class Profile:
    """Budgets of a profile. ``n_qubits`` is the circuit width used by every gated arm."""

    name: str
    steps: int
    seeds: tuple[int, ...]
    n_samples: int
    n_ref: int
    n_qubits: int
    sample_steps: int
    digits: tuple[int, ...]
    scaling_n: tuple[int, ...]


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", steps=150, seeds=(0,), n_samples=64, n_ref=200, n_qubits=8, sample_steps=20,
                  digits=(3,), scaling_n=(10, 100)),
    # n_ref=800: every MNIST digit has at least 892 test images. 16 qubits cost ~10x more per step than 8 on a
    # CPU (see the performance chapter); the full profile uses 8
    # so that a CPU can finish it, and the circuit-design chapter checks the 16-qubit circuit on its own.
    "full": Profile("full", steps=2000, seeds=(0, 1, 2), n_samples=500, n_ref=800, n_qubits=8, sample_steps=50,
                    digits=tuple(range(10)), scaling_n=(10, 25, 50, 100, 250, 1000)),
}


def profile(name: str) -> Profile:
    check_choice("profile", name, PROFILES)
    return PROFILES[name]


def arm_options(arm: str, **overrides: Any) -> RunOptions:
    """RunOptions for ``arm`` (a key of :data:`ARMS`) with ``overrides`` (any RunOptions field)."""
    check_choice("arm", arm, ARMS)
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown run option(s) {unknown}; allowed: {sorted(fields)}")
    return RunOptions(**{**ARMS[arm], **overrides})


def _budget(p: Profile) -> dict[str, Any]:
    return dict(steps=p.steps, n_samples=p.n_samples, n_ref=p.n_ref, n_qubits=p.n_qubits, sample_steps=p.sample_steps,
                sampler="ddim")


def _mnist(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=d, n_train=64, seed=s, **_budget(p))
            for d in p.digits for arm in MNIST_V1_ARMS for s in p.seeds]


def _mnist16(p: Profile) -> list:
    """The MNIST study at the paper's width, with every control (the ci profile keeps its own small width)."""
    width = PAPER_N_QUBITS if p.name == "full" else p.n_qubits
    # Seeds outermost: a partly computed study holds every (digit, arm) pair of its first seeds, so that each
    # comparison can already be read over all ten digits.
    return [arm_options(arm, dataset="mnist", label=d, n_train=64, seed=s, **{**_budget(p), "n_qubits": width})
            for s in p.seeds for d in p.digits for arm in MNIST16_ARMS]


#: (dataset, label) pairs of the MedMNIST study: PathMNIST as the paper (label 1, "background", the easiest
#: class) and a harder one (label 8, colorectal adenocarcinoma epithelium), RetinaMNIST, BreastMNIST,
#: PneumoniaMNIST.
MEDMNIST_CASES = (("pathmnist", 1), ("pathmnist", 8), ("retinamnist", 0), ("breastmnist", 1), ("pneumoniamnist", 1))


def _medmnist(p: Profile) -> list:
    cases = MEDMNIST_CASES if p.name == "full" else MEDMNIST_CASES[:1]
    # PathMNIST classes 1 and 8 have 119 images each in the 1000-image subset, 55 after the 64 training images;
    # every case uses the same 40 so that their KIDs carry comparable sampling noise.
    n_ref = min(p.n_ref, 40)
    arms = ("none", "se", "quantum_rzry")
    return [arm_options(arm, dataset=ds, label=lab, n_train=64, seed=s, **{**_budget(p), "n_ref": n_ref})
            for ds, lab in cases for arm in arms for s in p.seeds]


def _scaling(p: Profile) -> list:
    return [arm_options(arm, dataset="mnist", label=3, n_train=n, seed=s, **_budget(p))
            for n in p.scaling_n for arm in ("none", "se", "quantum_rzry") for s in p.seeds]


def _noise_schedules(p: Profile) -> list:
    combos = [(sched, noise) for sched in ("cosine", "tailored") for noise in ("gaussian", "quantum")]
    return [arm_options("quantum_rzry", dataset="mnist", label=3, n_train=64, seed=s, schedule=sched, noise=noise,
                        **_budget(p))
            for sched, noise in combos for s in p.seeds]


#: study name -> function(profile) -> list of RunOptions.
STUDIES = {"mnist": _mnist, "medmnist": _medmnist, "scaling": _scaling, "noise_schedules": _noise_schedules,
           "mnist16": _mnist16}


def study_runs(study: str, profile_name: str = "ci") -> list:
    """The RunOptions of ``study`` under ``profile_name``."""
    check_choice("study", study, STUDIES)
    return STUDIES[study](profile(profile_name))


def _arm_signature(values: dict[str, Any]) -> tuple:
    """What makes an arm: the bottleneck, and only the options that matter for it."""
    b = values["bottleneck"]
    return (
        b,
        values.get("ansatz", "rzry") if b == "quantum" else None,
        values.get("nonlinearity", "tanh") if b in ("se", "se_frozen") else None,
        bool(values.get("freeze_squeeze", False)) and b != "se_frozen",
        bool(values.get("freeze_circuit", False)),
    )


def arm_of(options) -> str:
    """The name in :data:`ARMS` of a run's options (a RunOptions or its dict), or a descriptive name if none fits."""
    values = options if isinstance(options, dict) else dataclasses.asdict(options)
    defaults = dataclasses.asdict(RunOptions())
    signature = _arm_signature(values)
    for name, spec in ARMS.items():
        if _arm_signature({**defaults, **spec}) == signature:
            return name
    b, ansatz, nonlinearity, freeze_squeeze, freeze_circuit = signature
    return "_".join(str(x) for x in (b, ansatz, nonlinearity, freeze_squeeze and "squeeze_frozen",
                                     freeze_circuit and "frozen") if x)


def run_key(options) -> str:
    """A readable, stable name for a run: dataset, label, n, arm, seed, and a hash of every option.

    Options added after the first study are left out of the hash while they have their neutral value
    (:data:`qdiff_lib.experiment.KEY_NEUTRAL`), so that earlier runs keep their names.
    """
    values = dataclasses.asdict(options)
    for name, neutral in KEY_NEUTRAL.items():
        if values.get(name) == neutral:
            values.pop(name)
    payload = json.dumps(values, sort_keys=True, default=str)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return f"{options.dataset}-l{options.label}-n{options.n_train}-{arm_of(options)}-s{options.seed}-{digest}"


def results_dir(profile_name: str, study: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<profile>/<study>``; root defaults to the repository's ``results/``."""
    return Path(root if root is not None else REPO_ROOT / "results") / profile_name / study


def _downsample(values: list[float], points: int = 100) -> list[list[float]]:
    """[[step, mean loss over the window ending at step], ...], at most ``points`` windows."""
    n = len(values)
    if n == 0:
        return []
    width = max(1, -(-n // points))
    out = []
    for start in range(0, n, width):
        window = values[start : start + width]
        out.append([start + len(window), sum(window) / len(window)])
    return out


def _summary(record: dict[str, Any], command: str) -> dict[str, Any]:
    return {
        "options": record["config"]["options"],
        "quantum_backend": record["config"].get("quantum_backend"),
        "metrics": record["metrics"],
        "metrics_version": record.get("metrics_version"),
        "samples": record.get("samples"),
        "loss_curve": _downsample(record["loss_history"]),
        "final_loss": record["loss_history"][-1],
        "n_parameters": record["n_parameters"],
        "n_reference": record["n_reference"],
        "timings": record["timings"],
        "device": record["device"],
        "torch_threads": torch.get_num_threads(),
        "versions": record["versions"],
        "numerics": record.get("numerics"),
        "git_commit": record["git_commit"],
        "git_dirty": record.get("git_dirty"),
        "command": command,
    }


#: Samples kept (quantised to uint8) in each summary, for the sample grids of the chapters.
PREVIEW_N = 16


def encode_preview(samples: np.ndarray | torch.Tensor, n: int = PREVIEW_N) -> dict[str, Any]:
    """The first ``n`` samples ``(N, C, H, W)`` in [-1, 1] as uint8 (``round((x + 1) * 127.5)``, clipped), base64.

    The quantisation error is at most 1/255 of the [-1, 1] range; :func:`decode_preview` inverts it.
    """
    from qdiff_lib.data import to_uint8

    x = torch.as_tensor(np.asarray(samples[:n], dtype=np.float32))
    if x.dim() != 4:
        raise ValueError(f"samples: expected (N, C, H, W), got {tuple(x.shape)}")
    q = np.ascontiguousarray(to_uint8(x).transpose(0, 3, 1, 2))  # back to (N, C, H, W)
    return {"shape": list(q.shape), "encoding": "uint8 round((x + 1) * 127.5), base64",
            "data": base64.b64encode(q.tobytes()).decode("ascii")}


def decode_preview(preview: dict[str, Any]) -> torch.Tensor:
    """The samples of :func:`encode_preview` as float32 ``(N, C, H, W)`` in [-1, 1]."""
    raw = np.frombuffer(base64.b64decode(preview["data"]), dtype=np.uint8)
    return torch.from_numpy(raw.reshape(preview["shape"]).astype(np.float32) / 127.5 - 1.0)


def _with_preview(summary: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``summary`` plus the preview of ``run_dir``'s samples, when they exist and it has none yet."""
    samples = run_dir / SAMPLES_NAME
    if "preview" in summary or not samples.exists():
        return summary
    with np.load(samples) as f:
        return {**summary, "preview": encode_preview(f["samples"])}


def _write_summary(path: Path, summary: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(summary, indent=1, allow_nan=False).encode()))


def run_one(options, out_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None,
            progress: bool = False, command: str = "") -> dict[str, Any]:
    """Run ``options`` unless ``out_dir/<key>.json`` exists; return the summary (also written there).

    Training state lives in ``runs_root/<key>`` (default ``<repo>/runs``, ignored by git), so an interrupted run
    resumes from its checkpoint.
    """
    key = run_key(options)
    summary_path = Path(out_dir) / f"{key}.json"
    run_dir = Path(runs_root if runs_root is not None else REPO_ROOT / "runs") / key
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        with_preview = _with_preview(summary, run_dir)  # summaries written before previews existed
        if with_preview is not summary:
            _write_summary(summary_path, with_preview)
        return with_preview
    result_path = run_dir / RESULT_NAME
    if result_path.exists():
        record = json.loads(result_path.read_text())
        if record["config"]["options"] != json.loads(json.dumps(dataclasses.asdict(options))):
            record = experiment.run(options, run_dir, force=True, progress=progress)
    else:
        record = experiment.run(options, run_dir, force=False, progress=progress)
    summary = _with_preview(_summary(record, command), run_dir)
    _write_summary(summary_path, summary)
    return summary


def parse_filters(items: Iterable[str] | None) -> dict[str, Any]:
    """``["label=3", "bottleneck=se"]`` -> ``{"label": 3, "bottleneck": "se"}`` (values read as JSON if they are)."""
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"bad filter {item!r}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def select(runs: list, filters: dict[str, Any]) -> list:
    """The runs whose options equal every ``filters`` value."""
    return [o for o in runs if all(getattr(o, k) == v for k, v in filters.items())]


class StudyFailed(RuntimeError):
    """Some runs of a study failed (the others finished); ``failures`` lists each run's key and error."""

    def __init__(self, study: str, failures: list[TaskFailure]):
        self.study = study
        self.failures = failures
        super().__init__(f"{len(failures)} run(s) of study {study!r} failed:\n" + "\n".join(f"  {f}" for f in failures))


def _run_task(options: RunOptions, out_dir: Path, runs_root: Path, command: str, threads: int, pinned: bool) -> None:
    """One run of a study, in whichever process computes it (this one or a Dask worker): :func:`run_one` with
    ``threads`` torch threads, after checking that the process runs the pinned numerics when ``pinned``."""
    if pinned and (problems := numerics.check()):
        raise RuntimeError(
            "this worker does not run the pinned numerics (" + "; ".join(problems) + "): start Dask workers with "
            "`--preload qdiff_lib` and export " + " ".join(f"{k}={v}" for k, v in numerics.PINNED_ENV.items())
        )
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_one(options, out_dir, runs_root=runs_root, progress=False, command=command)
    finally:
        torch.set_num_threads(before)


def run_study(study: str, profile_name: str = "ci", root: str | os.PathLike | None = None,
              runs_root: str | os.PathLike | None = None, progress: bool = True, limit: int | None = None,
              filters: dict[str, Any] | None = None, workers: int = 1, scheduler: str | None = None,
              threads: int | None = None, executor: Executor | None = None) -> pd.DataFrame:
    """Run every configuration of ``study`` (skipping finished ones) and return :func:`load_results`.

    ``limit`` stops after that many runs have been computed in this call (None: all); ``filters`` keeps only the
    runs whose options match (e.g. ``{"label": 3}``). The runs are computed by ``executor``, or by an
    :class:`~qdiff_lib.parallel.Executor` with ``workers`` local processes or on the Dask cluster at ``scheduler``,
    each with ``threads`` torch threads (default: this process's count). Each finished run writes its summary at
    once. A run that raises does not stop the others: when all have finished, :class:`StudyFailed` names the
    failed ones with their errors.
    """
    runs = select(study_runs(study, profile_name), filters or {})
    out = results_dir(profile_name, study, root).resolve()
    runs_root = Path(runs_root if runs_root is not None else REPO_ROOT / "runs").resolve()
    command = f"python -m qdiff_lib study --profile {profile_name} --study {study}" + "".join(
        f" --filter {k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (filters or {}).items())
    pending = [o for o in runs if not (out / f"{run_key(o)}.json").exists()]
    threads = torch.get_num_threads() if threads is None else threads
    pinned = not numerics.check()
    tasks = {run_key(o): (o, out, runs_root, command, threads, pinned) for o in pending[:limit]}
    with Executor(workers, scheduler) if executor is None else contextlib.nullcontext(executor) as running:
        failures = running.run(_run_task, tasks, progress, desc=f"{study} ({profile_name})")
    if failures:
        raise StudyFailed(study, failures)
    return load_results(profile_name, study, root)


def recompute_cost_s(summary: dict[str, Any]) -> float | None:
    """Seconds that recomputing ``summary``'s run from scratch takes, estimated from its recorded timings.

    ``timings.train_s`` is the wall time of the last call only, so for a run resumed from a checkpoint it counts just
    the resumed steps; the per-step time times the run's steps, plus sampling and metrics, holds for both. None when
    the file has no real per-step time (its last call found training finished and only sampled, or an epochs
    budget): such a file says nothing about the cost of training.
    """
    t = summary["timings"]
    steps = summary["options"]["steps"]
    if t.get("per_step_s") is None or steps is None:
        return None
    return float(t["per_step_s"] * steps + t.get("sample_s", 0.0) + t.get("metrics_s", 0.0))


def is_pinned(summary: dict[str, Any]) -> bool:
    """True when ``summary``'s run ran under the pinned numerics (:mod:`qdiff_lib.numerics`) on the CPU, so that it
    reproduces bit for bit on any x86-64 CPU with AVX2. Runs committed before the pinning carry no ``numerics``."""
    state = summary.get("numerics") or {}
    return summary.get("device") == "cpu" and state.get("mode") == "pinned" and bool(state.get("exact"))


def recheck_candidate(summaries: dict[Any, dict[str, Any]]) -> Any | None:
    """The key of the committed run that the CI re-check recomputes: the cheapest (:func:`recompute_cost_s`) of
    the pinned runs (:func:`is_pinned`) with a real per-step time, ties broken by key; None if there is none."""
    costs = {k: recompute_cost_s(s) for k, s in summaries.items() if is_pinned(s)}
    costs = {k: c for k, c in costs.items() if c is not None}
    return min(costs, key=lambda k: (costs[k], str(k))) if costs else None


#: How the re-check compares: ``exact`` (every number equal: a pinned run recomputed by a pinned process on an
#: x86-64 CPU with AVX2) or ``tolerance`` (any other platform: ARM, a CPU without AVX2, a GPU, native numerics).
RECHECK_MODES = ("exact", "tolerance")
#: Tolerance mode: each metric with a standard error must agree within this many combined standard errors ...
RECHECK_Z = 4.0
#: ... and the final training loss (a mean over the last steps' noisy losses) within this relative difference.
RECHECK_FINAL_LOSS_RTOL = 0.10


def recheck_mode(summary: dict[str, Any]) -> str:
    """``exact`` when ``summary`` is pinned and this process runs the pinned numerics, else ``tolerance``."""
    return "exact" if is_pinned(summary) and not numerics.check() else "tolerance"


def _numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """``{"kid.mean": 0.1, ...}``: every number in a nested dict (booleans and None excluded)."""
    if isinstance(obj, dict):
        out: dict[str, float] = {}
        for key, value in obj.items():
            out.update(_numeric_leaves(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix[:-1]: float(obj)}
    return {}


def recheck_differences(ref: dict[str, Any], got: dict[str, Any], mode: str) -> list[str]:
    """What differs between a committed summary ``ref`` and its recomputation ``got`` (empty: they agree).

    ``exact``: the parameter counts, the loss curve, the final loss, every number of the metrics and the sample
    preview must be equal. ``tolerance``: where other kernels round differently, a 2000-step run drifts onto
    another trajectory, so the recomputation is compared as another draw of the same run: equal parameter counts,
    the final loss within :data:`RECHECK_FINAL_LOSS_RTOL`, and every metric that carries a standard error
    (``mean``, ``se``) within :data:`RECHECK_Z` combined standard errors; metrics without one are not compared.
    """
    check_choice("re-check mode", mode, RECHECK_MODES)
    problems = []
    if got["n_parameters"] != ref["n_parameters"] or got["n_reference"] != ref["n_reference"]:
        problems.append(f"parameter or reference counts differ: {got['n_parameters']}, {got['n_reference']} "
                        f"!= {ref['n_parameters']}, {ref['n_reference']}")
    if mode == "exact":
        curve, committed = got["loss_curve"], ref["loss_curve"]
        if curve != committed:
            first = next((i for i, (a, b) in enumerate(zip(curve, committed, strict=False)) if a != b), None)
            if first is None:  # one is the beginning of the other
                problems.append(f"loss curve has {len(curve)} windows, the committed one {len(committed)}")
            else:
                problems.append(f"loss curve differs from window {first}: {curve[first]} != {committed[first]}")
        if got["final_loss"] != ref["final_loss"]:
            problems.append(f"final loss {got['final_loss']!r} != {ref['final_loss']!r}")
        want, have = _numeric_leaves(ref["metrics"]), _numeric_leaves(got["metrics"])
        if set(want) != set(have):
            problems.append(f"metrics differ in their entries: {sorted(set(want) ^ set(have))}")
        problems += [f"metric {k}: {have[k]!r} != {want[k]!r}" for k in sorted(set(want) & set(have))
                     if have[k] != want[k]]
        if (got.get("preview") or {}).get("data") != (ref.get("preview") or {}).get("data"):
            problems.append("sample preview differs")
        return problems
    rel = abs(got["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"])
    if not rel <= RECHECK_FINAL_LOSS_RTOL:
        problems.append(f"final loss {got['final_loss']:.5g} vs {ref['final_loss']:.5g}: relative difference "
                        f"{rel:.3g} > {RECHECK_FINAL_LOSS_RTOL}")
    for name, value in ref["metrics"].items():
        if not (isinstance(value, dict) and "se" in value and "mean" in value):
            continue
        other = got["metrics"].get(name)
        if not (isinstance(other, dict) and "mean" in other and "se" in other):
            problems.append(f"metric {name} missing from the recomputation")
            continue
        z = abs(other["mean"] - value["mean"]) / max(math.hypot(other["se"], value["se"]), 1e-300)
        if not z <= RECHECK_Z:
            problems.append(f"metric {name}: {other['mean']:.5g} vs {value['mean']:.5g} is {z:.2g} combined "
                            f"standard errors apart (> {RECHECK_Z})")
    return problems


def _flatten(summary: dict[str, Any]) -> dict[str, Any]:
    o = summary["options"]
    row = {
        "dataset": o["dataset"], "label": o["label"], "n_train": o["n_train"], "seed": o["seed"],
        "arm": arm_of(o),
        "schedule": o["schedule"], "noise": o["noise"], "steps": o["steps"], "n_qubits": o["n_qubits"],
        "n_samples": o["n_samples"], "final_loss": summary["final_loss"],
        "train_s": summary["timings"]["train_s"], "device": summary["device"], "pinned": is_pinned(summary),
    }
    for name, value in summary["metrics"].items():
        if name in row:  # bookkeeping entries of the metrics (seed, n_train...) never overwrite the run's options
            continue
        if isinstance(value, dict) and "mean" in value:
            row[name] = value["mean"]
            if "se" in value:
                row[f"{name}_se"] = value["se"]
        elif isinstance(value, (int, float)):
            row[name] = value
    return row


def load_results(profile_name: str, study: str, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per finished run of ``study`` under ``profile_name`` (empty DataFrame when none)."""
    folder = results_dir(profile_name, study, root)
    rows = [{"key": p.stem, **_flatten(json.loads(p.read_text()))} for p in sorted(folder.glob("*.json"))]
    return pd.DataFrame(rows)


def load_previews(profile_name: str, study: str, root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """``{run key: preview samples (N, C, H, W) in [-1, 1]}`` for the finished runs of ``study`` that have one."""
    folder = results_dir(profile_name, study, root)
    out = {}
    for p in sorted(folder.glob("*.json")):
        summary = json.loads(p.read_text())
        if "preview" in summary:
            out[p.stem] = decode_preview(summary["preview"])
    return out


def add_arguments(p) -> None:
    """Options of ``python -m qdiff_lib study``."""
    p.add_argument("--profile", choices=list(PROFILES), default="full",
                   help="budgets: ci (small) or full (the study behind the verdicts) (default: %(default)s)")
    p.add_argument("--study", dest="studies", action="append", choices=list(STUDIES),
                   help="a study to run; repeat for several (default: all, in the order "
                        + ", ".join(STUDIES) + ")")
    p.add_argument("--limit", type=int, default=None,
                   help="stop after computing this many new runs (default: no limit); finished runs are never "
                        "recomputed")
    p.add_argument("--results-root", type=Path, default=None,
                   help="where summaries go (default: <repo>/results): <root>/<profile>/<study>/<key>.json")
    p.add_argument("--runs-root", type=Path, default=None,
                   help="training checkpoints and samples, outside git (default: <repo>/runs)")
    p.add_argument("--filter", dest="filters", action="append", metavar="KEY=VALUE",
                   help="keep only the runs whose option KEY equals VALUE, e.g. --filter label=3; repeatable")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="runs computed at once by local worker processes, each with --threads torch threads "
                            f"(default: the number of cores, {default_workers()} here; 1: in this process)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="submit the runs to the running Dask cluster whose scheduler listens at ADDRESS, e.g. "
                            "tcp://10.0.0.5:8786 (its workers must share the results and runs folders)")
    p.add_argument("--list", action="store_true", help="list the runs and whether each is done, then exit")
    p.add_argument("--rescore", action="store_true",
                   help="train nothing: recompute the metrics of finished runs from their kept samples (under "
                        "--runs-root, checked against the sha256 in each summary) whose metrics are older than "
                        "the library's; write them into the summaries (see qdiff_lib.rescore)")
    p.add_argument("--force-rescore", action="store_true",
                   help="with --rescore: also rescore runs whose metrics are current")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def main(args, parser=None) -> int:
    """Entry point of ``python -m qdiff_lib study``: run each requested study, then print what is done.

    Returns 1 when a run failed (each failure is printed with its key and error; the other runs finished), else 0.
    """
    studies = args.studies or list(STUDIES)
    if args.limit is not None and args.limit < 0:
        (parser.error if parser else SystemExit)(f"--limit must be >= 0, got {args.limit}")
    try:
        filters = parse_filters(args.filters)
    except ValueError as error:
        if parser is None:
            raise
        parser.error(str(error))
    remaining = args.limit
    workers = args.workers or default_workers()
    failed = 0
    with Executor(workers, args.scheduler) as executor:
        for name in studies:
            runs = select(study_runs(name, args.profile), filters)
            out = results_dir(args.profile, name, args.results_root)
            done = sum((out / f"{run_key(o)}.json").exists() for o in runs)
            print(f"{name} ({args.profile}): {done}/{len(runs)} runs done, summaries in {out}", flush=True)
            if args.list:
                for o in runs:
                    print(f"  {'done   ' if (out / f'{run_key(o)}.json').exists() else 'pending'} {run_key(o)}")
            if args.list or remaining == 0 or done == len(runs):
                continue
            todo = len(runs) - done if remaining is None else min(len(runs) - done, remaining)
            print(f"{name} ({args.profile}): computing {todo} run(s) {executor.where(todo)}, {args.threads} torch "
                  "thread(s) each", flush=True)
            try:
                run_study(name, args.profile, root=args.results_root, runs_root=args.runs_root,
                          progress=not args.no_progress, limit=remaining, filters=filters, threads=args.threads,
                          executor=executor)
            except ConnectionError as error:  # --scheduler names no running scheduler
                if parser is None:
                    raise
                parser.error(str(error))
            except StudyFailed as error:
                failed += len(error.failures)
                for failure in error.failures:
                    print(f"{name} ({args.profile}): run {failure.name} failed: {failure.error}", file=sys.stderr,
                          flush=True)
            now = sum((out / f"{run_key(o)}.json").exists() for o in runs)
            if remaining is not None:
                remaining -= now - done
            print(f"{name} ({args.profile}): {now}/{len(runs)} runs done", flush=True)
    if failed:
        print(f"{failed} run(s) failed (listed above); the others are done. Fix the cause and rerun the same "
              "command: finished runs are skipped.", file=sys.stderr)
    return 1 if failed else 0
