"""Rescoring: the metrics of finished runs recomputed from their kept samples, without retraining.

Every run keeps its samples (``samples.npz`` in its run folder under ``runs/``, outside git) and its summary records
their shape and sha256 (:func:`qdiff_lib.experiment.samples_record`) and the version of the metrics that scored
them (:data:`qdiff_lib.metrics.METRICS_VERSION`). When the metrics change, ``python -m qdiff_lib study --rescore``
(:func:`rescore_study`) loads each finished run's samples, checks them against the checksum, recomputes
:func:`qdiff_lib.metrics.evaluate` against the same training and reference images (redrawn from the run's options,
as :func:`qdiff_lib.data.few_shot_split` is deterministic) with the classifier its options name
(``classifier_augment``; summaries written before the option existed: the default classifier), and writes the new
``metrics``, ``metrics_version``, ``n_reference`` and a ``rescored`` record (commit, versions, numerics, time,
command) into the summary, and into the run folder's ``result.json``. Everything a run's training produced (options,
loss curve, final loss, timings, preview, the commit that trained it) stays as it was.

A run whose samples are not on this machine (the study computed elsewhere, or committed before samples were kept)
cannot be rescored: it is reported by name with the reason, the others are rescored, and the command exits with
status 1. Each summary is replaced atomically, so an interrupted rescore leaves every file either old or new; run
the same command again and only the runs still out of date are computed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qdiff_lib import REPO_ROOT, data
from qdiff_lib._checks import counted
from qdiff_lib._io import atomic_write
from qdiff_lib.experiment import RESULT_NAME, SAMPLES_NAME, RunOptions, metrics_version, provenance, samples_sha256
from qdiff_lib.study import STUDIES, filters_of, results_dir, run_key, select, study_runs

__all__ = ["SamplesUnavailable", "RescoreReport", "load_samples", "needs_rescore", "rescore_summary",
           "rescore_study", "main"]


class SamplesUnavailable(RuntimeError):
    """A run's samples cannot be used: missing, unrecorded, or not the samples its summary describes."""


def load_samples(run_dir: str | os.PathLike, record: dict[str, Any] | None) -> np.ndarray:
    """The samples in ``run_dir``, after checking them against ``record`` (a summary's ``samples`` entry).

    Raises :class:`SamplesUnavailable` when the summary records no checksum, the file is missing, or its shape or
    sha256 differs from the record (the samples of another run, or of an earlier computation of this one).
    """
    path = Path(run_dir) / (record or {}).get("file", SAMPLES_NAME)
    if not record or "sha256" not in record:
        raise SamplesUnavailable("its summary records no samples checksum (written before runs kept their "
                                 "samples); recompute the run to rescore it")
    if not path.exists():
        raise SamplesUnavailable(f"its samples are not on this machine ({path} does not exist); pass --runs-root "
                                 "where the study was computed")
    with np.load(path) as f:
        samples = np.asarray(f["samples"], dtype=np.float32)
    if list(samples.shape) != list(record["shape"]):
        raise SamplesUnavailable(f"{path} holds samples of shape {list(samples.shape)}, the summary records "
                                 f"{record['shape']}")
    digest = samples_sha256(samples)
    if digest != record["sha256"]:
        raise SamplesUnavailable(f"{path} has sha256 {digest[:16]}..., the summary records "
                                 f"{record['sha256'][:16]}...: these are not the samples that were scored")
    return samples


def needs_rescore(summary: dict[str, Any], force: bool = False) -> bool:
    """True when ``summary``'s metrics are older than :data:`qdiff_lib.metrics.METRICS_VERSION` (or ``force``).

    Runs computed without metrics (``options.metrics`` false) are never rescored."""
    if not summary["options"].get("metrics", True):
        return False
    return force or (summary.get("metrics_version") or 0) < metrics_version()


def rescore_summary(summary: dict[str, Any], run_dir: str | os.PathLike, device: str | torch.device = "cpu",
                    command: str = "", stamp: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary`` with its metrics recomputed from the samples in ``run_dir`` (see the module docstring).

    ``stamp``: the provenance to record (default: :func:`~qdiff_lib.experiment.provenance` now). A command that
    rescores many runs takes it once before writing any, since its own writes make the working tree dirty."""
    from qdiff_lib.metrics import evaluate

    options = RunOptions(**summary["options"])
    samples = load_samples(run_dir, summary.get("samples"))
    t0 = time.perf_counter()
    images, reference = data.few_shot_split(options.dataset, options.label, options.n_train, options.n_ref,
                                            options.seed, pool=options.reference_pool)

    def score(array: np.ndarray) -> dict[str, Any]:
        return evaluate(torch.from_numpy(array), options.dataset, options.label, images, reference=reference,
                        seed=options.seed, device=device, classifier_augment=options.classifier_augment)

    metrics = score(samples)
    intermediate = {step: score(load_samples(run_dir, record)) for step, record in
                    (summary.get("samples_at") or {}).items()}
    return {
        **summary,
        "metrics": metrics,
        **({"metrics_at": intermediate} if intermediate else {}),
        "metrics_version": metrics_version(),
        "n_reference": len(reference),
        "rescored": {**(stamp if stamp is not None else provenance()),
                     "previous_metrics_version": summary.get("metrics_version"),
                     "metrics_s": time.perf_counter() - t0, "command": command},
    }


def _write_json(path: Path, content: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(content, indent=1, allow_nan=False).encode()))


@dataclass
class RescoreReport:
    """What :func:`rescore_study` did, by run key."""

    rescored: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)  # already scored by the current metrics
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason


def rescore_study(study: str, profile_name: str = "full", root: str | os.PathLike | None = None,
                  runs_root: str | os.PathLike | None = None, filters: dict[str, Any] | None = None,
                  force: bool = False, progress: bool = True, device: str | torch.device = "cpu",
                  command: str = "") -> RescoreReport:
    """Rescore every finished run of ``study`` (those whose summary exists) that :func:`needs_rescore`."""
    out = results_dir(profile_name, study, root)
    runs_root = Path(runs_root if runs_root is not None else REPO_ROOT / "runs")
    report = RescoreReport()
    stamp = provenance()  # once, before this command's own writes dirty the working tree
    todo = []
    for options in select(study_runs(study, profile_name), filters or {}):
        key = run_key(options)
        path = out / f"{key}.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        (todo.append((key, path, summary)) if needs_rescore(summary, force) else report.current.append(key))
    for key, path, summary in tqdm(todo, desc=f"rescore {study} ({profile_name})", disable=not progress):
        run_dir = runs_root / key
        try:
            new = rescore_summary(summary, run_dir, device=device, command=command, stamp=stamp)
        except SamplesUnavailable as error:
            report.failed[key] = str(error)
            continue
        _write_json(path, new)
        result_path = run_dir / RESULT_NAME
        if result_path.exists():
            record = json.loads(result_path.read_text())
            record.update({k: new[k] for k in ("metrics", "metrics_at", "metrics_version", "n_reference", "rescored")
                           if k in new})
            _write_json(result_path, record)
        report.rescored.append(key)
    return report


def main(args, parser=None) -> int:
    """``python -m qdiff_lib study --rescore``: rescore each requested study; 1 if a run could not be rescored."""
    filters = filters_of(args, parser)
    command = "python -m qdiff_lib " + " ".join(sys.argv[1:])
    failed = 0
    for name in args.studies or list(STUDIES):
        report = rescore_study(name, args.profile, root=args.results_root, runs_root=args.runs_root,
                               filters=filters, force=args.force_rescore, progress=not args.no_progress,
                               command=command)
        print(f"{name} ({args.profile}): {counted(len(report.rescored), 'run')} rescored, {len(report.current)} "
              f"already current, {len(report.failed)} could not be rescored", flush=True)
        for key, reason in report.failed.items():
            print(f"  {key}: {reason}", file=sys.stderr, flush=True)
        failed += len(report.failed)
    return 1 if failed else 0
