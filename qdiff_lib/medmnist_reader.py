"""How the MedMNIST chapter reads a MedMNIST study: per-case paired comparisons, the colour/greyscale pools, the cases
beyond their ceiling, and the data behind the chapter's sentences.

Two studies are read with the same functions (:data:`STUDIES`): ``medmnist`` (the first edition, 8 qubits, arms
``none``, ``se``, ``quantum_rzry``, 40 test images of reference per run) and ``medmnist16`` (the paper's width, arms
``none``, ``se``, ``se_cos``, ``quantum_rzry``, held-out reference pools up to
:data:`qdiff_lib.grids.MEDMNIST_REFERENCE_CAP`, the classifier recipe adopted per dataset). A frame holds the runs of
one study: :func:`study_frame` refuses a run whose key is not in the study's grid, so runs of the two studies (scored
by different classifiers and reference sets) are never paired with each other, and every pair is checked once more
by :func:`qdiff_lib.stats.paired_by` (:data:`qdiff_lib.stats.MUST_MATCH`).

A *case* is a (dataset, class) of :data:`qdiff_lib.grids.MEDMNIST_CASES`, named ``"<dataset> <label>"``. The runs of
two arms pair by (case, seed); a pool (``"all colour"``, ``"all greyscale"``, :data:`POOLS`) takes the pairs of every
case of that kind. Every comparison is made in raw KID and in the normalised KID of the case's calibration
(:func:`qdiff_lib.metrics.add_normalised_kid`: 0 at the floor, 1 at the ceiling, with the calibration of the
classifier that scored the run). Tests: ``tests/test_medmnist_reader.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import pandas as pd

from qdiff_lib._checks import check_choice
from qdiff_lib.data import dataset_info
from qdiff_lib.grids import ARMS, PROFILES, arm_of, run_key, study_runs
from qdiff_lib.metrics import add_normalised_kid, join_normalised
from qdiff_lib.paired_tables import comparison_table
from qdiff_lib.stats import VERDICTS, verdict
from qdiff_lib.verdicts import claim_verdict, compare_arms

__all__ = ["STUDIES", "COMPARISONS", "POOLS", "TABLE_METRICS", "SIDES", "case_name", "is_colour", "grid_keys",
           "study_frame", "study_status", "paired_groups", "case_tables", "paired_rows", "side_words", "arm_means",
           "ceiling_sides", "beyond_ceiling", "pooled_rows", "rows_by_side", "favouring", "excluded_rows",
           "pooled_comparison", "pool_weights", "relative_kid_se"]

#: The MedMNIST studies this module reads.
STUDIES = ("medmnist", "medmnist16")
#: The comparisons of each study, first arm minus second, paired by (case, seed).
COMPARISONS: dict[str, tuple[tuple[str, str], ...]] = {
    "medmnist": (("quantum_rzry", "se"), ("quantum_rzry", "none"), ("se", "none")),
    "medmnist16": (("quantum_rzry", "se"), ("se_cos", "se"), ("quantum_rzry", "se_cos"), ("quantum_rzry", "none")),
}
#: The pools of :func:`paired_groups`: the pairs of every colour case, and of every greyscale case.
POOLS = ("all colour", "all greyscale")
#: The metrics of :func:`case_tables`: raw KID, normalised KID, class consistency.
TABLE_METRICS = ("kid", "kid_norm", "class_consistency")
#: Where a case's arms lie against its ceiling (:func:`ceiling_sides`).
SIDES = ("below the ceiling", "beyond the ceiling", "on both sides of the ceiling")
#: The columns :func:`study_frame` needs.
REQUIRED = ("key", "dataset", "label", "arm", "seed", "kid")
#: The pairing keys of every comparison.
PAIR_ON = ("case", "seed")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: no column(s) {missing}; allowed: {list(frame.columns)}")


def case_name(dataset: str, label: int) -> str:
    """The name of a case in every table: ``"<dataset> <label>"`` (e.g. ``"pathmnist 1"``)."""
    return f"{dataset} {label}"


def is_colour(dataset: str) -> bool:
    """Whether ``dataset``'s images have three channels (ValueError naming the valid datasets otherwise)."""
    return dataset_info(dataset).n_channels == 3


def grid_keys(study: str) -> set[str]:
    """The run keys of ``study`` (one of :data:`STUDIES`) in every profile: the runs a frame of it may hold."""
    check_choice("study", study, STUDIES)
    return {run_key(o) for p in PROFILES for o in study_runs(study, p)}


def study_frame(frame: pd.DataFrame, study: str, *, table: pd.DataFrame | None = None,
                root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The runs of ``study`` (:func:`qdiff_lib.study.load_results`) ready to compare: a copy with ``case``
    (:func:`case_name`), ``colour`` (:func:`is_colour`), ``kid_norm`` and ``kid_norm_se``
    (:func:`qdiff_lib.metrics.add_normalised_kid`: ``table``, a calibration table of the runs' one classifier, or
    None to read each run's own calibration under ``root``, default ``results/calibration``).

    ``frame`` needs the columns :data:`REQUIRED`; every ``key`` must be a run of ``study``'s grid (:func:`grid_keys`),
    so that a frame never mixes two studies (ValueError naming the foreign keys). An empty frame gives an empty one
    with the added columns.
    """
    check_choice("study", study, STUDIES)
    if not len(frame):
        return pd.DataFrame(columns=[*REQUIRED, "case", "colour", "kid_norm"])
    _check_columns(frame, REQUIRED, "study_frame")
    foreign = sorted(set(frame["key"]) - grid_keys(study))
    if foreign:
        other = [s for s in STUDIES if s != study and set(foreign) <= grid_keys(s)]
        raise ValueError(f"study_frame: {len(foreign)} run(s) are not runs of {study!r} (e.g. {foreign[0]!r})"
                         + (f"; they are runs of {other[0]!r}" if other else "")
                         + f"; allowed: the run keys of study {study!r} (qdiff_lib.grids.study_runs)")
    out = frame.assign(case=frame["dataset"] + " " + frame["label"].astype(str),
                       colour=frame["dataset"].map(is_colour))
    return add_normalised_kid(out, table, root=root)


def study_status(frame: pd.DataFrame, study: str, profile_name: str = "full") -> dict:
    """What a frame of ``study`` covers: ``n_runs``, ``n_planned`` (the grid of ``profile_name``), ``n_cases``
    (planned), ``arms`` (planned, grid order), ``seeds`` (planned), ``cases_present``, ``arms_present``,
    ``seeds_present`` (sorted) and ``complete`` (every planned run present)."""
    check_choice("study", study, STUDIES)
    check_choice("profile", profile_name, PROFILES)
    plan = study_runs(study, profile_name)
    columns = ["dataset", "label", "arm", "seed", "key"]
    present = frame if len(frame) else pd.DataFrame(columns=columns)
    _check_columns(present, columns, "study_status")
    arms = list(dict.fromkeys(arm_of(o) for o in plan))
    return {"n_runs": len(present), "n_planned": len(plan),
            "n_cases": len({(o.dataset, o.label) for o in plan}), "arms": arms,
            "seeds": sorted({o.seed for o in plan}),
            "cases_present": sorted({case_name(d, lab)
                                     for d, lab in zip(present["dataset"], present["label"], strict=True)}),
            "arms_present": [a for a in arms if a in set(present["arm"])],
            "seeds_present": sorted({int(s) for s in present["seed"]}),
            "complete": {run_key(o) for o in plan} <= set(present["key"])}


def paired_groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``[(group, runs)]``: each case of ``frame`` (a :func:`study_frame`), in sorted order, then the pools
    :data:`POOLS` (every colour case, every greyscale case; a pool without runs is an empty frame)."""
    _check_columns(frame, ("case", "colour"), "paired_groups")
    colour = frame["colour"].astype(bool)
    return [*((case, g) for case, g in frame.groupby("case")), (POOLS[0], frame[colour]), (POOLS[1], frame[~colour])]


def case_tables(frame: pd.DataFrame, comparisons: Sequence[tuple[str, str]],
                metrics: Sequence[str] = TABLE_METRICS) -> dict[str, dict[str, pd.DataFrame]]:
    """``{group: {metric: table}}`` for every group of :func:`paired_groups`: the paired table
    (:func:`qdiff_lib.paired_tables.comparison_table`, no Holm correction) of each comparison ``(a, b)`` (``a - b``,
    paired by (case, seed)) in each of ``metrics``. A comparison whose arms are not both in a group is left out of
    its tables. ValueError for an arm not in :data:`qdiff_lib.grids.ARMS` or a metric not in ``frame``."""
    for pair in comparisons:
        if len(pair) != 2:
            raise ValueError(f"case_tables: a comparison is a pair of arms, got {pair!r}")
        for arm in pair:
            check_choice("arm", arm, ARMS)
    _check_columns(frame, metrics, "case_tables")
    return {group: {m: comparison_table(g, comparisons, m, PAIR_ON, holm=False) for m in metrics}
            for group, g in paired_groups(frame)}


def paired_rows(tables: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """The chapter's table of paired comparisons from :func:`case_tables` (metrics ``kid``, ``kid_norm`` and
    ``class_consistency``): one row per group and comparison with at least 2 pairs; columns ``case``,
    ``comparison``, ``pairs``, ``KID difference``, ``normalised KID difference`` (beside it by
    :func:`qdiff_lib.metrics.join_normalised`), ``KID lower in`` and ``class consistency difference``."""
    rows = []
    for group, t in tables.items():
        missing = [m for m in TABLE_METRICS if m not in t]
        if missing:
            raise ValueError(f"paired_rows: the tables of {group!r} lack {missing}; allowed: tables of "
                             f"{list(TABLE_METRICS)} (case_tables)")
        kid = join_normalised(t["kid"], t["kid_norm"])
        rows += [{"case": group, "comparison": name, "pairs": r["pairs"], "KID difference": r["95% CI"],
                  "normalised KID difference": r["normalised 95% CI"], "KID lower in": r["proposed lower"],
                  "class consistency difference": t["class_consistency"].loc[name, "95% CI"]}
                 for name, r in kid.iterrows() if r["pairs"] >= 2]
    return pd.DataFrame(rows, columns=["case", "comparison", "pairs", "KID difference", "normalised KID difference",
                                       "KID lower in", "class consistency difference"])


def side_words(row: Mapping, first: str = "the circuit") -> str:
    """Where a difference's 95% interval lies (:func:`qdiff_lib.stats.verdict`; lower KID is better), in words
    naming the first arm as ``first``: ``"lies below 0 (<first> better)"``, ``"lies above 0 (<first> worse)"`` or
    ``"contains 0"``."""
    return {VERDICTS[0]: f"lies below 0 ({first} better)", VERDICTS[1]: f"lies above 0 ({first} worse)",
            VERDICTS[2]: "contains 0"}[verdict(row)]


def arm_means(frame: pd.DataFrame, metric: str = "kid_norm") -> pd.DataFrame:
    """The mean of ``metric`` over seeds, one row per case, one column per arm (sorted)."""
    _check_columns(frame, ("case", "arm", metric), "arm_means")
    return frame.groupby(["case", "arm"])[metric].mean().unstack()


def ceiling_sides(frame: pd.DataFrame) -> pd.DataFrame:
    """Where each case's arms lie against its ceiling (normalised KID 1), from the arms' mean ``kid_norm``: one row
    per case with ``lowest`` and ``highest`` (the smallest and largest arm mean) and ``side``, one of :data:`SIDES`:
    below the ceiling when every arm's mean is below 1, beyond it when every one is above 1, else on both sides."""
    means = arm_means(frame)
    out = pd.DataFrame({"lowest": means.min(axis=1), "highest": means.max(axis=1)})
    out["side"] = [SIDES[0] if hi < 1 else SIDES[1] if lo > 1 else SIDES[2]
                   for lo, hi in zip(out["lowest"], out["highest"], strict=True)]
    return out


def beyond_ceiling(frame: pd.DataFrame) -> dict:
    """The cases in which every arm lies beyond the ceiling (:func:`ceiling_sides`): no arm learned the class there,
    and a comparison there compares failures. Returns ``cases`` (their names), ``n_cases`` (cases with runs),
    ``runs_low``/``runs_high`` (the range of their runs' ``kid_norm``), ``all_runs_beyond`` (every one of those runs
    above 1) and ``means_low``/``means_high`` (the range of their arms' means); the ranges NaN without such a case."""
    sides = ceiling_sides(frame)
    beyond = sides[sides["side"] == SIDES[1]]
    runs = frame.loc[frame["case"].isin(beyond.index), "kid_norm"]
    nan = float("nan")
    return {"cases": list(beyond.index), "n_cases": len(sides),
            "runs_low": float(runs.min()) if len(runs) else nan, "runs_high": float(runs.max()) if len(runs) else nan,
            "all_runs_beyond": bool(len(runs) and (runs > 1).all()),
            "means_low": float(beyond["lowest"].min()) if len(beyond) else nan,
            "means_high": float(beyond["highest"].max()) if len(beyond) else nan}


def _rows(tables: Mapping[str, Mapping[str, pd.DataFrame]], comparison: str) -> dict[str, tuple[pd.Series, pd.Series]]:
    """``{group: (raw row, normalised row)}`` of ``comparison`` (``"a - b"``) wherever it has at least 2 pairs."""
    if not isinstance(comparison, str) or " - " not in comparison:
        raise ValueError(f"comparison must read 'a - b', got {comparison!r}")
    return {group: (t["kid"].loc[comparison], t["kid_norm"].loc[comparison]) for group, t in tables.items()
            if comparison in t["kid"].index and t["kid"].loc[comparison, "pairs"] >= 2}


def pooled_rows(tables: Mapping[str, Mapping[str, pd.DataFrame]], comparison: str) -> dict[str, tuple]:
    """``{pool: (raw row, normalised row)}``: ``comparison`` (``"a - b"``) in the pools of :func:`case_tables`
    (:data:`POOLS`) that have at least 2 pairs of it; each row is a :func:`~qdiff_lib.paired_tables.comparison_table`
    row (``pairs``, ``95% CI``, ``ci_low``, ``ci_high``, ``proposed lower``...)."""
    return {g: r for g, r in _rows(tables, comparison).items() if g in POOLS}


def rows_by_side(tables: Mapping[str, Mapping[str, pd.DataFrame]], comparison: str) -> dict[str, list]:
    """The cases (not the pools) of ``comparison`` grouped by where its raw KID interval lies:
    ``{verdict: [(case, raw row), ...]}`` with the verdicts of :func:`qdiff_lib.stats.verdict`, in the order in which
    they first occur over the cases."""
    out: dict[str, list] = {}
    for group, (raw, _) in _rows(tables, comparison).items():
        if group not in POOLS:
            out.setdefault(verdict(raw), []).append((group, raw))
    return out


def favouring(tables: Mapping[str, Mapping[str, pd.DataFrame]], comparison: str) -> list[str]:
    """The groups (cases and pools) in which an interval of ``comparison``, raw or normalised, lies below 0 (the
    first arm's KID lower)."""
    return [g for g, (raw, norm) in _rows(tables, comparison).items() if VERDICTS[0] in (verdict(raw), verdict(norm))]


def excluded_rows(tables: Mapping[str, Mapping[str, pd.DataFrame]], skip: Sequence[str] = ()) -> list[tuple]:
    """``[(group, comparison, raw row, normalised row)]``: every row with at least 2 pairs, except the comparisons
    ``skip``, whose KID interval, raw or normalised, excludes 0; in table order."""
    out = []
    for group, t in tables.items():
        raw, norm = t["kid"], t["kid_norm"]
        out += [(group, name, raw.loc[name], norm.loc[name]) for name in raw.index
                if name not in skip and raw.loc[name, "pairs"] >= 2
                and (verdict(raw.loc[name]) != VERDICTS[2] or verdict(norm.loc[name]) != VERDICTS[2])]
    return out


def pooled_comparison(frame: pd.DataFrame, a: str, b: str) -> dict:
    """``a - b`` over every (case, seed) pair of ``frame``: ``raw`` and ``norm``, the
    :func:`qdiff_lib.verdicts.compare_arms` results on ``kid`` and ``kid_norm``; ``verdict_raw``, ``verdict_norm``
    (basis t) and ``verdict_sign`` (the share of pairs in which ``a`` is lower, on raw KID) of
    :func:`qdiff_lib.verdicts.claim_verdict`; ``cases`` (sorted) and ``several_datasets`` (the pool spans more than
    one dataset, so raw KID mixes scales)."""
    for arm in (a, b):
        check_choice("arm", arm, ARMS)
    _check_columns(frame, ("case", "seed", "dataset", "kid", "kid_norm"), "pooled_comparison")
    c = compare_arms(frame, a, b, "kid", PAIR_ON)
    cn = compare_arms(frame, a, b, "kid_norm", PAIR_ON)
    return {"raw": c, "norm": cn, "verdict_raw": claim_verdict(c), "verdict_norm": claim_verdict(cn),
            "verdict_sign": claim_verdict(c, basis="sign"), "cases": sorted(set(frame["case"])),
            "several_datasets": frame["dataset"].nunique() > 1}


def pool_weights(frame: pd.DataFrame, a: str, b: str) -> dict:
    """Which cases carry a normalised pool of ``a - b``: ``sizes``, the mean over seeds of ``|kid_norm_a -
    kid_norm_b|`` per case, largest first; ``top_are_furthest``: the two largest come from the two cases whose runs
    lie furthest from their class (largest mean ``kid_norm``). ``sizes`` is empty when one arm is absent."""
    for arm in (a, b):
        check_choice("arm", arm, ARMS)
    _check_columns(frame, ("case", "seed", "arm", "kid_norm"), "pool_weights")
    wide = frame.pivot_table(index=["case", "seed"], columns="arm", values="kid_norm")
    if not {a, b} <= set(wide.columns):
        return {"sizes": pd.Series(dtype=float), "top_are_furthest": False}
    sizes = (wide[a] - wide[b]).abs().groupby(level="case").mean().sort_values(ascending=False)
    furthest = set(frame.groupby("case")["kid_norm"].mean().nlargest(2).index)
    return {"sizes": sizes, "top_are_furthest": len(sizes) >= 2 and furthest == set(sizes.index[:2])}


def relative_kid_se(frame: pd.DataFrame, by: str | None = "case") -> pd.Series | float:
    """How much of each KID is sampling noise: the median of ``kid_se / |kid|``, per value of ``by`` (a Series), or
    over every run (``by`` None, a float)."""
    _check_columns(frame, ("kid", "kid_se", *([by] if by else [])), "relative_kid_se")
    rel = frame["kid_se"] / frame["kid"].abs()
    return float(rel.median()) if by is None else rel.groupby(frame[by]).median()
