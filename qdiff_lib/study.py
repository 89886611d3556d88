"""Studies: named grids of runs, profiles, resumable execution and compact result files.

A *run* is one :class:`qdiff_lib.experiment.RunOptions` (train one model, sample, score). A *study* is a named grid of
runs built for a *profile* (``ci``: small budgets, so that every chapter executes in CI; ``full``: the study behind
the verdicts); the grids, arms and profiles are defined in :mod:`qdiff_lib.grids`, the CI re-check of committed runs
in :mod:`qdiff_lib.recheck` (their names are importable from here too).

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
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qdiff_lib import REPO_ROOT, experiment, numerics
from qdiff_lib._checks import counted
from qdiff_lib._io import atomic_write
from qdiff_lib.experiment import RESULT_NAME, SAMPLES_NAME, RunOptions, positive_int

# The grids and the re-check live in their own modules; their names stay importable from here.
from qdiff_lib.grids import (  # noqa: F401
    ARMS,
    MEDMNIST16_ARMS,
    MEDMNIST_CASES,
    MEDMNIST_REFERENCE_CAP,
    MNIST16_ARMS,
    MNIST_V1_ARMS,
    PAPER_N_QUBITS,
    PROFILES,
    RELEASED16_ARMS,
    SCALING16_ARMS,
    SCALING16_N,
    STUDIES,
    Profile,
    arm_of,
    arm_options,
    profile,
    run_key,
    scaling16_sizes,
    study_runs,
)
from qdiff_lib.parallel import Executor, TaskFailure, default_workers
from qdiff_lib.recheck import (  # noqa: F401
    RECHECK_FINAL_LOSS_RTOL,
    RECHECK_MODES,
    RECHECK_Z,
    is_pinned,
    recheck_candidate,
    recheck_differences,
    recheck_mode,
    recompute_cost_s,
    window_means,
)

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
    "parse_filters",
    "filters_of",
    "select",
    "encode_preview",
    "decode_preview",
    "load_previews",
    "load_results",
    "flatten_summary",
    "results_dir",
    "recompute_cost_s",
    "is_pinned",
    "recheck_candidate",
    "recheck_mode",
    "recheck_differences",
]
def results_dir(profile_name: str, study: str, root: str | os.PathLike | None = None) -> Path:
    """``<root>/<profile>/<study>``; root defaults to the repository's ``results/``."""
    return Path(root if root is not None else REPO_ROOT / "results") / profile_name / study


def _downsample(values: list[float], points: int = 100) -> list[list[float]]:
    """[[step, mean loss over the window ending at step], ...], at most ``points`` windows."""
    return window_means(values, max(1, -(-len(values) // points)))


def _summary(record: dict[str, Any], command: str) -> dict[str, Any]:
    return {
        "options": record["config"]["options"],
        "quantum_backend": record["config"].get("quantum_backend"),
        "metrics": record["metrics"],
        "metrics_version": record.get("metrics_version"),
        "samples": record.get("samples"),
        **{k: record[k] for k in ("metrics_at", "samples_at") if k in record},
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


def filters_of(args, parser=None) -> dict[str, Any]:
    """:func:`parse_filters` of the command line's ``--filter`` values; a bad one is a usage error of ``parser``."""
    try:
        return parse_filters(args.filters)
    except ValueError as error:
        if parser is None:
            raise
        parser.error(str(error))


def select(runs: list, filters: dict[str, Any]) -> list:
    """The runs whose options equal every ``filters`` value."""
    return [o for o in runs if all(getattr(o, k) == v for k, v in filters.items())]


class StudyFailed(RuntimeError):
    """Some runs of a study failed (the others finished); ``failures`` lists each run's key and error."""

    def __init__(self, study: str, failures: list[TaskFailure]):
        self.study = study
        self.failures = failures
        super().__init__(f"{counted(len(failures), 'run')} of study {study!r} failed:\n"
                         + "\n".join(f"  {f}" for f in failures))


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


def flatten_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """One row of :func:`load_results` from a study summary: the run's options (``arm`` named by
    :func:`~qdiff_lib.grids.arm_of`), its bookkeeping, and each metric's mean (``<name>_se`` beside it where
    recorded)."""
    o = summary["options"]
    row = {
        "dataset": o["dataset"], "label": o["label"], "n_train": o["n_train"], "seed": o["seed"],
        "arm": arm_of(o),
        "schedule": o["schedule"], "noise": o["noise"], "steps": o["steps"], "n_qubits": o["n_qubits"],
        "n_samples": o["n_samples"], "final_loss": summary["final_loss"],
        # the classifier whose feature space scored the run (absent from summaries written before the option)
        "classifier_augment": o.get("classifier_augment", "none"),
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
    rows = [{"key": p.stem, **flatten_summary(json.loads(p.read_text()))} for p in sorted(folder.glob("*.json"))]
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
    filters = filters_of(args, parser)
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
            print(f"{name} ({args.profile}): computing {counted(todo, 'run')} {executor.where(todo)}, "
                  f"{counted(args.threads, 'torch thread')} each", flush=True)
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
        print(f"{counted(failed, 'run')} failed (listed above); the others are done. Fix the cause and rerun the same "
              "command: finished runs are skipped.", file=sys.stderr)
    return 1 if failed else 0
