"""The normalised KID of the experiment chapters: each class's floor and ceiling, computed once per class by
``python -m qdiff_lib calibrate`` (:mod:`qdiff_lib.metrics.calibrate`) into ``results/calibration/``
(:data:`CALIBRATION_DIR`), read back here and applied to run summaries and to paired differences. Part of
:mod:`qdiff_lib.metrics`, which exports the public names.

The score is :func:`~qdiff_lib.metrics.normalised_score` with KID's floor and ceiling of the run's class (the metrics
chapter justifies it): 0 where a fresh sample of real images of the class falls, 1 where real images of the
nearest other class fall.

* **One run** (:func:`add_normalised_kid`, :func:`normalised_kid`): ``kid_norm = (kid - floor_c) / (ceiling_c -
  floor_c)`` for its class ``c``, and ``kid_norm_se = kid_se / |ceiling_c - floor_c|``. The floor and the ceiling
  are the means over the calibration's redraws and are treated as constants; their own spread is in the file
  (``kid_ceiling_std`` of :func:`calibration_table`).
* **A paired difference** of two arms on the same class: ``kid_norm_a - kid_norm_b = (kid_a - kid_b) / (ceiling_c -
  floor_c)``. The floor cancels: the difference is the KID difference in units of the class's distance from real
  images to its nearest wrong class (:func:`normalised_difference`).
* **Pooling over classes** (our choice): the paired tables take the plain mean of the pairs' normalised differences,
  each pair weighing the same, exactly as the raw tables do (:func:`qdiff_lib.paired_tables.comparison_table` on the
  column ``kid_norm``); :func:`join_normalised` sets the two tables side by side. In raw KID a class with a wide
  scale (one whose wrong-class KID is large) dominates the mean; in normalised units every pair counts by its share
  of its own class's scale. The sign of every pair is unchanged, but the pooled mean, its interval and its tests can
  differ from the raw ones: they answer "by what share of the way from real images to the wrong class does the
  first arm move the samples, on average over the pairs".

A class without a calibration file raises :class:`MissingCalibration`, naming the command that computes it.

**The classifier.** Floor and ceiling are measured in the feature space of the classifier that scores the runs, so a
run scored by a classifier trained with augmentation (its option ``classifier_augment``,
:data:`qdiff_lib.classifier_choice.ADOPTED_AUGMENT`) needs a calibration file computed with that classifier:
``<dataset>-l<label>+<augment>.json`` beside the default ``<dataset>-l<label>.json`` (:func:`calibration_path`;
``python -m qdiff_lib calibrate --classifier-augment <augment>``). A table (:func:`calibration_table`) holds the
files of one classifier (column ``classifier_augment``); :func:`add_normalised_kid` and :func:`normalised_kid` take
each run's classifier from its ``classifier_augment`` (a column of the frame, or the summary's options; absent:
``none``, the classifier of every run scored before the option existed) and refuse a table of another classifier.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from qdiff_lib import REPO_ROOT
from qdiff_lib._checks import check_choice
from qdiff_lib.metrics.calibration import normalised_score

__all__ = ["CALIBRATION_DIR", "CALIBRATE_COMMAND", "MissingCalibration", "calibration_path", "calibrate_command",
           "record_augment", "load_calibration", "calibration_table", "kid_scale", "add_normalised_kid",
           "normalised_kid", "normalised_difference", "join_normalised"]

#: Where ``python -m qdiff_lib calibrate`` writes one file per class, ``<dataset>-l<label>.json`` (and
#: ``<dataset>-l<label>+<augment>.json`` for a classifier trained with augmentation).
CALIBRATION_DIR = REPO_ROOT / "results" / "calibration"
#: The command that computes the files.
CALIBRATE_COMMAND = "python -m qdiff_lib calibrate"
#: The classifier of every run scored before runs could choose one: no training-time augmentation.
DEFAULT_AUGMENT = "none"


class MissingCalibration(FileNotFoundError):
    """A class has no calibration file; the message names the command that computes it."""


def _check_augment(augment: str) -> str:
    from qdiff_lib.classifier import AUGMENTATIONS

    check_choice("classifier augmentation", augment, AUGMENTATIONS)
    return augment


def calibration_path(dataset: str, label: int, root: str | os.PathLike | None = None,
                     augment: str = DEFAULT_AUGMENT) -> Path:
    """The calibration file of class ``label`` of ``dataset`` measured with the classifier trained with
    ``augment``: ``<root>/<dataset>-l<label>.json`` for the default classifier (no augmentation), else
    ``<root>/<dataset>-l<label>+<augment>.json`` (e.g. ``retinamnist-l0+flips.json``)."""
    suffix = "" if _check_augment(augment) == DEFAULT_AUGMENT else f"+{augment}"
    return Path(CALIBRATION_DIR if root is None else root) / f"{dataset}-l{int(label)}{suffix}.json"


def calibrate_command(dataset: str, label: int, root: str | os.PathLike | None = None,
                      augment: str = DEFAULT_AUGMENT) -> str:
    """The command line that writes :func:`calibration_path` of this class and classifier."""
    out = "" if root is None or Path(root).resolve() == CALIBRATION_DIR.resolve() else f" --out {root}"
    aug = "" if _check_augment(augment) == DEFAULT_AUGMENT else f" --classifier-augment {augment}"
    return f"{CALIBRATE_COMMAND} --dataset {dataset} --label {int(label)}{aug}{out}"


def record_augment(record: dict) -> str:
    """The training augmentation of the classifier a calibration record was measured with (files written before
    the augmentation was recorded: the default classifier, ``none``)."""
    return (record.get("classifier") or {}).get("augment", DEFAULT_AUGMENT)


def _missing(cases: Sequence[tuple], root) -> MissingCalibration:
    """``cases``: ``(dataset, label)`` (the default classifier) or ``(dataset, label, augment)``."""
    where = Path(CALIBRATION_DIR if root is None else root)
    cases = [(c[0], int(c[1]), c[2] if len(c) > 2 else DEFAULT_AUGMENT) for c in cases]
    listed = "; ".join(calibrate_command(ds, lab, root, aug) for ds, lab, aug in cases)
    named = ", ".join(f"{ds} label {lab}" + ("" if aug == DEFAULT_AUGMENT else f" (classifier {aug})")
                      for ds, lab, aug in cases)
    return MissingCalibration(f"no calibration file for {named} in {where}; compute it with: {listed} (or "
                              f"{CALIBRATE_COMMAND} for every class)")


def load_calibration(dataset: str, label: int, root: str | os.PathLike | None = None,
                     augment: str = DEFAULT_AUGMENT) -> dict:
    """The calibration record of a class measured with the classifier trained with ``augment``, as ``python -m
    qdiff_lib calibrate`` wrote it.

    Its keys are those of :func:`~qdiff_lib.metrics.metric_floor_ceiling` (``floor`` and ``ceiling``: ``{metric:
    {"mean", "std", "q05", "q95", "draws"}}``, ``kid_by_class`` with string keys, the sizes and the nearest class)
    plus the command's (``requested``, ``studies``, ``classifier``, ``command``, ``git_commit``, ``numerics``...).
    Raises :class:`MissingCalibration` naming the command when the file does not exist, and ``ValueError`` when it
    belongs to another class or another classifier.
    """
    path = calibration_path(dataset, label, root, augment)
    if not path.exists():
        raise _missing([(dataset, int(label), augment)], root)
    record = json.loads(path.read_text())
    if (record.get("dataset"), record.get("label"), record_augment(record)) != (dataset, int(label), augment):
        raise ValueError(f"{path} holds {record.get('dataset')} label {record.get('label')} (classifier "
                         f"{record_augment(record)}), not {dataset} label {label} (classifier {augment})")
    return record


def _row(record: dict) -> dict:
    row = {"dataset": record["dataset"], "label": record["label"], "classifier_augment": record_augment(record),
           "n_samples": record["n_samples"],
           "n_reference": record["n_reference"], "draws": record["draws"], "ceiling_label": record["ceiling_label"]}
    for m in record["floor"]:
        row[f"{m}_floor"], row[f"{m}_ceiling"] = record["floor"][m]["mean"], record["ceiling"][m]["mean"]
    row["kid_floor_std"], row["kid_ceiling_std"] = record["floor"]["kid"]["std"], record["ceiling"]["kid"]["std"]
    row["kid_scale"] = row["kid_ceiling"] - row["kid_floor"]
    return row


def calibration_table(root: str | os.PathLike | None = None,
                      cases: Sequence[tuple[str, int]] | None = None,
                      augment: str = DEFAULT_AUGMENT) -> pd.DataFrame:
    """One row per calibrated class, indexed by ``(dataset, label)``, for the classifier trained with ``augment``
    (default: the default classifier, the files ``<dataset>-l<label>.json``).

    ``cases``: these classes (every one must have its file, else :class:`MissingCalibration` lists the missing ones
    with their commands); None: every file of that classifier under ``root`` (default :data:`CALIBRATION_DIR`).
    Columns: ``classifier_augment``, ``n_samples``, ``n_reference``, ``draws``, ``ceiling_label``,
    ``<metric>_floor`` and ``<metric>_ceiling`` (means over the redraws) for every metric of the files,
    ``kid_floor_std``, ``kid_ceiling_std`` (their spread over redraws) and ``kid_scale`` (ceiling - floor).
    """
    folder = Path(CALIBRATION_DIR if root is None else root)
    _check_augment(augment)
    if cases is None:
        records = [r for r in (json.loads(p.read_text()) for p in sorted(folder.glob("*-l*.json")))
                   if record_augment(r) == augment]
    else:
        cases = [(ds, int(lab)) for ds, lab in cases]
        missing = [(*c, augment) for c in cases if not calibration_path(*c, root, augment).exists()]
        if missing:
            raise _missing(missing, root)
        records = [load_calibration(ds, lab, root, augment) for ds, lab in cases]
    rows = [_row(r) for r in records]
    columns = ["dataset", "label", "classifier_augment", "n_samples", "n_reference", "draws", "ceiling_label",
               "kid_floor", "kid_ceiling", "kid_floor_std", "kid_ceiling_std", "kid_scale"]
    table = pd.DataFrame(rows, columns=list(dict.fromkeys(columns + [k for r in rows for k in r])))
    return table.set_index(["dataset", "label"]).sort_index()


def _table_augment(table: pd.DataFrame) -> str:
    """The classifier of a :func:`calibration_table` (a table without the column: the default one)."""
    if "classifier_augment" not in table or not len(table):
        return DEFAULT_AUGMENT
    values = set(table["classifier_augment"])
    if len(values) != 1:
        raise ValueError(f"the calibration table mixes classifiers {sorted(values)}; build one per classifier")
    return values.pop()


def kid_scale(table: pd.DataFrame, dataset: str, label: int, root: str | os.PathLike | None = None
              ) -> tuple[float, float]:
    """KID's ``(floor, ceiling)`` of a class from a :func:`calibration_table` (MissingCalibration if absent)."""
    key = (dataset, int(label))
    if key not in table.index:
        raise _missing([(*key, _table_augment(table))], root)
    row = table.loc[key]
    return float(row["kid_floor"]), float(row["kid_ceiling"])


def add_normalised_kid(frame: pd.DataFrame, table: pd.DataFrame | None = None, *,
                       root: str | os.PathLike | None = None, dataset: str = "dataset", label: str = "label",
                       metric: str = "kid", augment: str = "classifier_augment") -> pd.DataFrame:
    """``frame`` (one row per run, e.g. :func:`qdiff_lib.study.load_results`) with the columns ``kid_norm`` (KID on
    its class's scale) and, where ``frame`` has ``kid_se``, ``kid_norm_se``; a copy, the input is left as it is.

    ``dataset`` and ``label``: the columns naming each run's class (``label="digit"`` after a rename); ``augment``:
    the column naming the classifier that scored each run (absent, or empty in a row: ``none``, the default
    classifier); ``table``: a :func:`calibration_table` of that classifier (None: read from ``root`` for the
    classes and classifiers of ``frame``; a table of another classifier than a run's raises ``ValueError``). A class
    without calibration raises :class:`MissingCalibration` listing every missing class and the command for each.
    ``metric`` names the raw column (``kid``), so that the same scale can be applied to a KID under another name.
    """
    out = frame.copy()
    norm, norm_se = f"{metric}_norm", f"{metric}_norm_se"
    if not len(out):
        out[norm] = pd.Series(dtype=float)
        return out
    for col in (dataset, label, metric):
        if col not in out:
            raise ValueError(f"add_normalised_kid: no column {col!r}; allowed: {list(out.columns)}")
    augments = (out[augment].fillna(DEFAULT_AUGMENT).astype(str) if augment in out
                else pd.Series(DEFAULT_AUGMENT, index=out.index))
    keys = [(str(ds), int(lab), aug) for ds, lab, aug in zip(out[dataset], out[label], augments, strict=True)]
    cases = sorted(set(keys))
    if table is None:
        tables = {aug: calibration_table(root, [c[:2] for c in cases if c[2] == aug], aug)
                  for aug in sorted({c[2] for c in cases})}
    else:
        given = _table_augment(table)
        other = sorted({c[2] for c in cases} - {given})
        if other:
            raise ValueError(f"add_normalised_kid: the table holds the calibration of the classifier with augmentation "
                             f"{given!r}, but runs of the frame were scored by classifiers trained with {other}; pass "
                             "table=None (each run's own calibration) or calibration_table(augment=...)")
        tables = {given: table}
    missing = [c for c in cases if c[:2] not in tables[c[2]].index]
    if missing:
        raise _missing(missing, root)
    scales = {c: kid_scale(tables[c[2]], *c[:2]) for c in cases}
    floor = np.array([scales[k][0] for k in keys])
    ceiling = np.array([scales[k][1] for k in keys])
    out[norm] = normalised_score(out[metric].to_numpy(dtype=float), floor, ceiling)
    if f"{metric}_se" in out:
        out[norm_se] = out[f"{metric}_se"].to_numpy(dtype=float) / np.abs(ceiling - floor)
    return out


def normalised_kid(summary: dict, table: pd.DataFrame | None = None,
                   root: str | os.PathLike | None = None) -> dict:
    """A run summary's KID on its class's scale: ``{"mean", "se", "floor", "ceiling"}`` (``se`` None when the
    summary has none). ``summary`` is a run summary or ``result.json`` (its ``options`` name the class and the
    classifier, ``classifier_augment``; its ``metrics["kid"]`` holds ``mean`` and ``se``); ``table`` as for
    :func:`add_normalised_kid`."""
    o, kid = summary.get("options") or summary["config"]["options"], summary["metrics"]["kid"]
    case, aug = (o["dataset"], int(o["label"])), o.get("classifier_augment", DEFAULT_AUGMENT)
    if table is None:
        table = calibration_table(root, [case], aug)
    elif _table_augment(table) != aug:
        raise ValueError(f"normalised_kid: the run was scored by the classifier with augmentation {aug!r}, the table "
                         f"holds the calibration of {_table_augment(table)!r}")
    floor, ceiling = kid_scale(table, *case, root=root)
    se = kid.get("se")
    return {"mean": normalised_score(kid["mean"], floor, ceiling),
            "se": None if se is None else float(se) / abs(ceiling - floor), "floor": floor, "ceiling": ceiling}


def normalised_difference(difference, table: pd.DataFrame, dataset: str, label: int):
    """A paired KID difference (``kid_a - kid_b``, same class; scalar or array) on that class's scale:
    ``difference / (ceiling - floor)``. Equal to ``kid_norm_a - kid_norm_b``: the floor cancels."""
    floor, ceiling = kid_scale(table, dataset, label)
    out = np.asarray(difference, dtype=float) / (ceiling - floor)
    return float(out) if out.ndim == 0 else out


#: Columns of a paired table that :func:`join_normalised` takes from the normalised one.
NORMALISED_COLUMNS = ("mean diff", "ci_low", "ci_high", "95% CI", "t p", "Holm p")


def join_normalised(raw: pd.DataFrame, normalised: pd.DataFrame,
                    columns: Sequence[str] = NORMALISED_COLUMNS, prefix: str = "normalised ") -> pd.DataFrame:
    """``raw`` (a paired table on ``kid``, e.g. :func:`~qdiff_lib.paired_tables.comparison_table`) with the
    ``columns`` of ``normalised`` (the same table on ``kid_norm``) added, prefixed with ``prefix``.

    Both must hold the same comparisons with the same pair counts (the normalised column exists wherever KID does);
    anything else raises ``ValueError`` naming the differing rows. Columns absent from ``normalised`` are skipped.
    """
    if list(raw.index) != list(normalised.index):
        raise ValueError(f"join_normalised: the tables hold different comparisons: {list(raw.index)} and "
                         f"{list(normalised.index)}")
    if "pairs" in raw and "pairs" in normalised:
        differ = raw.index[raw["pairs"].to_numpy() != normalised["pairs"].to_numpy()].tolist()
        if differ:
            raise ValueError(f"join_normalised: different pair counts in {differ} (a run without calibration?)")
    keep = [c for c in columns if c in normalised]
    return raw.join(normalised[keep].add_prefix(prefix))
