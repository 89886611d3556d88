"""``python -m qdiff_lib calibrate``: the floor and the ceiling of every class the studies use, one small JSON per
class under ``results/calibration/`` (:data:`~qdiff_lib.metrics.scale.CALIBRATION_DIR`), which
:mod:`qdiff_lib.metrics.scale` reads to put KID on a normalised scale.

The classes and their sizes come from the grids (:func:`calibration_cases`): every (dataset, label) of every study of
:data:`qdiff_lib.grids.STUDIES` at the full profile, at the largest ``n_samples`` and ``n_ref`` its runs use
(MNIST: the mnist studies' 500 samples and 800 reference images; MedMNIST: ``medmnist16``'s, larger than
``medmnist``'s 40), drawn from the pool the runs' reference comes from: the test split for MNIST, every held-out image
of the class for MedMNIST (``medmnist16``'s runs: the training images a seed-0 run does not train on, plus the val
and test splits; :func:`qdiff_lib.data.held_out_pool`). :func:`~qdiff_lib.metrics.metric_floor_ceiling` then clamps
the sizes to that pool (the reference at most half of it; MNIST digit 5 has 892 test images, so 446 and 446); KID is
unbiased, so its floor and ceiling do not depend on these sizes, while FID's and precision's do (the file records the
sizes used). :data:`DRAWS` redraws with seed :data:`SEED` by default.

Floor and ceiling are measured in the feature space of the classifier that scores the runs: a class whose runs
use a classifier trained with augmentation (the run option ``classifier_augment``; ``medmnist16`` uses
:data:`qdiff_lib.classifier_choice.ADOPTED_AUGMENT`) gets a file for each classifier its runs use,
``<dataset>-l<label>+<augment>.json`` beside the default ``<dataset>-l<label>.json``
(:func:`~qdiff_lib.metrics.calibration_path`), at the same sizes. Without ``--classifier-augment`` the command
computes every file the studies need; ``--classifier-augment A`` only those of classifier ``A``.

Each file (:func:`calibration_record`) holds what :func:`~qdiff_lib.metrics.metric_floor_ceiling` returns (floor and
ceiling summaries of every metric, the nearest class, the sizes, ``kid_by_class``), the settings asked for
(``requested``), the studies that use the class with this classifier, the classifier
(:func:`qdiff_lib.classifier.classifier_record`: cache file, weights checksum, augmentation, test accuracy) and data
file, and the provenance of the number:
``command``, ``git_commit``, ``git_dirty``, ``versions``, ``numerics`` (:func:`qdiff_lib.experiment.provenance`) and
``seconds``. Files are written atomically; an existing file is kept unless ``--force``, so an interrupted command
resumes where it stopped. :func:`recheck` recomputes a file from its own settings and lists what differs (with the
same pinned numerics and thread count nothing does). The options are parsed in :mod:`qdiff_lib.cli` (so that the
other commands need not import the metrics); :func:`main` runs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qdiff_lib import data
from qdiff_lib._checks import counted
from qdiff_lib._io import atomic_write
from qdiff_lib.classifier import classifier_record, weights_sha256
from qdiff_lib.metrics.calibration import metric_floor_ceiling
from qdiff_lib.metrics.scale import (
    CALIBRATE_COMMAND,
    DEFAULT_AUGMENT,
    calibrate_command,
    calibration_path,
    record_augment,
)

__all__ = ["DRAWS", "SEED", "COMPARED", "calibration_cases", "calibration_files", "select_cases", "data_file",
           "calibration_record", "write_record", "recheck", "main"]

#: Redraws of every sample per class (the metrics chapter's full profile uses as many), and their seed.
DRAWS = 10
SEED = 0
#: The entries of a file that a recomputation must reproduce exactly (:func:`recheck`).
COMPARED = ("n_samples", "n_reference", "draws", "ceiling_rule", "ceiling_label", "ceiling_source", "floor",
            "ceiling", "kid_by_class", "classifier_test_accuracy")


def calibration_cases(profile: str = "full") -> dict[tuple[str, int], dict[str, Any]]:
    """``{(dataset, label): {"n_samples", "n_reference", "studies", "augments", "reference_pool", "n_train"}}`` for
    every class of every study of :data:`qdiff_lib.grids.STUDIES` under ``profile``: the largest sample and reference
    sizes of its runs (whatever their classifier, so that a class's files share their sizes), the studies that train
    on it, ``augments``: ``{classifier augmentation: the studies whose runs of the class use it}``, the default
    (``none``) first, and where the floor and ceiling are drawn from: ``reference_pool`` ``"held_out"`` with those
    runs' ``n_train`` when any run of the class draws its reference from every held-out image (``medmnist16``),
    else ``"test"`` and 0. One pool per class, so that every file of a class shares it (a class whose held-out runs
    train on different numbers of images raises ValueError). Sorted by dataset, then label."""
    from qdiff_lib.grids import STUDIES, study_runs

    cases: dict[tuple[str, int], dict[str, Any]] = {}
    for study in STUDIES:
        for o in study_runs(study, profile):
            c = cases.setdefault((o.dataset, int(o.label)), {"n_samples": 0, "n_reference": 0, "studies": [],
                                                             "augments": {}, "reference_pool": "test",
                                                             "n_train": 0})
            c["n_samples"], c["n_reference"] = max(c["n_samples"], o.n_samples), max(c["n_reference"], o.n_ref)
            if o.reference_pool == "held_out":
                if c["reference_pool"] == "held_out" and c["n_train"] != o.n_train:
                    raise ValueError(f"{o.dataset} label {o.label}: runs drawing their reference from the held-out "
                                     f"pool train on {c['n_train']} and {o.n_train} images; one pool per class")
                c["reference_pool"], c["n_train"] = "held_out", int(o.n_train)
            if study not in c["studies"]:
                c["studies"].append(study)
            users = c["augments"].setdefault(o.classifier_augment, [])
            if study not in users:
                users.append(study)
    for c in cases.values():
        c["augments"] = dict(sorted(c["augments"].items(), key=lambda kv: (kv[0] != DEFAULT_AUGMENT, kv[0])))
    return dict(sorted(cases.items()))


def calibration_files(cases: dict, chosen: Sequence[tuple[str, int]], augment: str | None = None
                      ) -> list[tuple[str, int, str]]:
    """The files ``(dataset, label, augment)`` of the classes ``chosen`` (keys of :func:`calibration_cases`): every
    classifier their runs use (``augment`` None), or only the classifier trained with ``augment``."""
    return [(ds, lab, aug) for ds, lab in chosen
            for aug in (cases[(ds, lab)]["augments"] if augment is None else [augment])]


def select_cases(cases: dict, dataset: str | None = None, label: int | None = None) -> list[tuple[str, int]]:
    """The classes of ``cases`` with this ``dataset`` and ``label`` (None: any); ``ValueError`` naming the allowed
    values when a value matches none."""
    datasets = sorted({ds for ds, _ in cases})
    if dataset is not None and dataset not in datasets:
        raise ValueError(f"unknown dataset {dataset!r}: no study uses it; allowed: {datasets}")
    chosen = [c for c in cases if dataset in (None, c[0]) and label in (None, c[1])]
    if not chosen:
        allowed = sorted({lab for ds, lab in cases if dataset in (None, ds)})
        raise ValueError(f"label {label!r} is not a class the studies use{f' in {dataset}' if dataset else ''}; "
                         f"allowed: {allowed}")
    return chosen


def data_file(dataset: str) -> str | None:
    """The name of the file ``dataset``'s images are read from on this machine (the offline PathMNIST subset where
    it stands in for the full file), or None when there is none."""
    where = data.available_datasets()[data.dataset_info(dataset).name]
    return None if where.startswith("missing") else Path(where).name


def _computed(dataset: str, label: int, requested: dict[str, Any], classifier) -> dict[str, Any]:
    """What :func:`~qdiff_lib.metrics.metric_floor_ceiling` returns, in JSON's own terms (string keys)."""
    result = metric_floor_ceiling(dataset, label, classifier=classifier, classifier_augment=classifier.recipe.augment,
                                  **requested)
    result["kid_by_class"] = {str(c): v for c, v in result["kid_by_class"].items()}
    # through JSON and back, so that a fresh result compares equal to a stored one (NaN is refused: not JSON)
    return json.loads(json.dumps(result, allow_nan=False))


def calibration_record(dataset: str, label: int, n_samples: int, n_reference: int, draws: int = DRAWS,
                       seed: int = SEED, studies: Sequence[str] = (), command: str | None = None,
                       classifier=None, stamp: dict[str, Any] | None = None,
                       classifier_augment: str = DEFAULT_AUGMENT, reference_pool: str = "test",
                       n_train: int = 0) -> dict[str, Any]:
    """The content of a calibration file: :func:`~qdiff_lib.metrics.metric_floor_ceiling` of the class with the
    settings (kept under ``requested``; ``reference_pool`` and ``n_train`` only for the ``"held_out"`` pool),
    measured with ``classifier`` (default: the cached classifier trained with
    ``classifier_augment``), plus the classifier (:func:`qdiff_lib.classifier.classifier_record`, with its
    augmentation), the data file, ``studies``, ``command`` (default: the command that writes this one file), the
    provenance (``stamp``, default: taken now; a command writing several files takes it once, before its own writes
    dirty the working tree) and the time taken."""
    from qdiff_lib.classifier import get_classifier
    from qdiff_lib.experiment import provenance

    clf = classifier if classifier is not None else get_classifier(dataset, progress=False, augment=classifier_augment)
    if clf.recipe.augment != classifier_augment:
        raise ValueError(f"the classifier given was trained with augmentation {clf.recipe.augment!r}, not "
                         f"{classifier_augment!r}")
    requested = {"n_samples": int(n_samples), "n_reference": int(n_reference), "draws": int(draws),
                 "seed": int(seed), "ceiling": "nearest"}
    if reference_pool != "test":  # the test pool is the default of metric_floor_ceiling: earlier files omit it
        requested.update(reference_pool=reference_pool, n_train=int(n_train))
    start = time.perf_counter()
    result = _computed(dataset, label, requested, clf)
    seconds = time.perf_counter() - start
    return {"dataset": data.dataset_info(dataset).name, "label": int(label), "requested": requested,
            "studies": list(studies), **result, "classifier": classifier_record(clf),
            "data_file": data_file(dataset),
            "command": command or calibrate_command(dataset, label, augment=classifier_augment),
            **(stamp if stamp is not None else provenance()),
            "seconds": round(seconds, 2)}


def write_record(record: dict[str, Any], root: str | os.PathLike | None = None) -> Path:
    """Write ``record`` atomically to its :func:`~qdiff_lib.metrics.calibration_path` under ``root`` (named by its
    class and its classifier's augmentation)."""
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    path = calibration_path(record["dataset"], record["label"], root, record_augment(record))
    return atomic_write(path, lambda f: f.write(text.encode()))


def recheck(record: dict[str, Any], classifier=None) -> list[str]:
    """Recompute a stored calibration ``record`` from its own ``requested`` settings, with the torch thread count
    it records (``numerics.torch_threads``), and return the entries of :data:`COMPARED` that differ (``[]``:
    reproduced exactly), plus ``"classifier"`` when the classifier's weights are not those the file was computed
    with (:func:`qdiff_lib.classifier.weights_sha256`)."""
    from qdiff_lib.classifier import get_classifier

    clf = (classifier if classifier is not None
           else get_classifier(record["dataset"], progress=False, augment=record_augment(record)))
    threads = torch.get_num_threads()
    torch.set_num_threads(int(record.get("numerics", {}).get("torch_threads") or 1))  # as the file was computed
    try:
        fresh = _computed(record["dataset"], record["label"], record["requested"], clf)
    finally:
        torch.set_num_threads(threads)
    differ = [k for k in COMPARED if fresh.get(k) != record.get(k)]
    stored = record.get("classifier", {}).get("sha256")
    if stored is not None and stored != weights_sha256(clf):
        differ.append("classifier")  # not the same weights: every metric may differ for that reason alone
    return differ


def main(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Entry point of ``python -m qdiff_lib calibrate``: compute the missing files (all with ``--force``) of the
    selected classes. Returns 1 when a class failed (each failure printed with its class), else 0."""
    from tqdm.auto import tqdm

    from qdiff_lib.classifier import get_classifier

    fail = parser.error if parser is not None else (lambda msg: (_ for _ in ()).throw(SystemExit(msg)))
    draws = DRAWS if args.draws is None else args.draws
    seed = SEED if args.seed is None else args.seed
    if draws < 2:
        fail(f"--draws must be an integer >= 2 (a spread needs two redraws), got {draws}")
    cases = calibration_cases()
    try:
        chosen = select_cases(cases, args.dataset, args.label)
    except ValueError as error:
        fail(str(error))
    root = args.out
    augment = getattr(args, "classifier_augment", None)
    files = calibration_files(cases, chosen, augment)

    def name(ds: str, lab: int, aug: str) -> str:
        return f"{ds} label {lab}" + ("" if aug == DEFAULT_AUGMENT else f" (classifier {aug})")

    if args.list:
        for ds, lab, aug in files:
            c = cases[(ds, lab)]
            done = "done" if calibration_path(ds, lab, root, aug).exists() else "missing"
            users = c["augments"].get(aug) or ["no study"]
            pool = "" if c["reference_pool"] == "test" else f" from the held-out pool (n_train {c['n_train']})"
            print(f"{name(ds, lab, aug)}: {c['n_samples']} samples, {c['n_reference']} reference{pool} "
                  f"({', '.join(users)}): {done}")
        return 0
    todo = [f for f in files if args.force or not calibration_path(*f[:2], root, f[2]).exists()]
    print(f"{counted(len(files), 'file')} selected, {len(files) - len(todo)} already calibrated (kept; --force "
          f"recomputes), {len(todo)} to compute with {draws} redraws")
    invoked = " ".join([CALIBRATE_COMMAND, *sys.argv[2:]]) if sys.argv[1:2] == ["calibrate"] else None
    from qdiff_lib.experiment import provenance

    stamp = provenance()  # once, before this command's own writes dirty the working tree
    classifiers, failures = {}, []
    bar = tqdm(todo, desc="calibrate", unit="class", disable=args.no_progress)
    for ds, lab, aug in bar:
        bar.set_postfix_str(f"{ds} {lab}" + ("" if aug == DEFAULT_AUGMENT else f" {aug}"))
        try:
            if (ds, aug) not in classifiers:
                classifiers[(ds, aug)] = get_classifier(ds, progress=False, augment=aug)
            c = cases[(ds, lab)]
            record = calibration_record(ds, lab, c["n_samples"], c["n_reference"], draws, seed,
                                        c["augments"].get(aug, []), invoked, classifiers[(ds, aug)], stamp,
                                        classifier_augment=aug, reference_pool=c["reference_pool"],
                                        n_train=c["n_train"])
            path = write_record(record, root)
        except Exception as error:  # report, go on with the other classes
            failures.append((ds, lab, aug, error))
            bar.write(f"{name(ds, lab, aug)} failed: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        kid = (record["floor"]["kid"]["mean"], record["ceiling"]["kid"]["mean"])
        bar.write(f"wrote {path}: KID floor {kid[0]:.4g}, ceiling {kid[1]:.4g} (class {record['ceiling_label']}), "
                  f"{record['seconds']:.0f} s")
    bar.close()
    return 1 if failures else 0
