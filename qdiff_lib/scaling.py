"""Reading a scaling study: the runs (with the MNIST study's runs at its N added as one more size), the paired
differences at each training-set size, where a difference appears or vanishes, the comparison pooled over every
(N, seed) pair, and the memorization score's floor at each size.

Two studies train one digit at several training-set sizes N (:data:`SCALING_STUDIES`): ``scaling``, the first
edition (8 qubits, arms ``none``, ``se``, ``quantum_rzry``), and ``scaling16``, the second (the paper's 16 qubits,
arms ``se``, ``se_cos``, ``quantum_rzry``, up to the full class). Each borrows the runs of an MNIST study
(:data:`BORROWS_FROM`) whose options are exactly those the scaling study would give at that study's N
(:func:`borrowed_keys`: every option, budget and width included, equal but N). The scaling chapter words and draws
what these functions decide; the comparisons rest on :func:`qdiff_lib.verdicts.compare_arms` and
:func:`qdiff_lib.paired_tables.comparisons_by_level`. Tested in ``tests/test_scaling_reader.py``. The claim about
sizes in the results chapter is decided by :mod:`qdiff_lib.claims`, not here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from qdiff_lib._checks import check_choice
from qdiff_lib.grids import SCALING16_ARMS, run_key
from qdiff_lib.paired_tables import comparisons_by_level
from qdiff_lib.stats import format_interval
from qdiff_lib.study import load_results, study_runs
from qdiff_lib.verdicts import compare_arms

__all__ = ["SCALING_STUDIES", "BORROWS_FROM", "STUDY_ARMS", "STUDY_COMPARISONS", "ScalingRuns", "borrowed_keys",
           "borrowed_runs", "load_scaling", "size_differences", "where_sentence", "pooled_row", "pooled_sentence",
           "pooled_rows", "pooled_table", "seeds_per_size", "mean_range", "memorization_floors", "floor_table",
           "floor_summary"]

#: The scaling studies this module reads.
SCALING_STUDIES = ("scaling", "scaling16")
#: scaling study -> the MNIST study whose runs at its own N (64 images) are added as one more size.
BORROWS_FROM = {"scaling": "mnist", "scaling16": "mnist16"}
#: scaling study -> its arms.
STUDY_ARMS = {"scaling": ("none", "se", "quantum_rzry"), "scaling16": SCALING16_ARMS}
#: scaling study -> its comparisons ``(a, b)``, each read as ``a - b`` (negative: ``a`` scores lower KID).
STUDY_COMPARISONS = {
    "scaling": (("quantum_rzry", "se"), ("quantum_rzry", "none")),
    "scaling16": (("quantum_rzry", "se"), ("se_cos", "se"), ("quantum_rzry", "se_cos")),
}
_DIFF_COLUMNS = ("n_train", "comparison", "pairs", "diff", "ci_low", "ci_high", "excludes 0")


def _check_study(study: str) -> None:
    check_choice("scaling study", study, SCALING_STUDIES)


def _need(frame: pd.DataFrame, columns: Iterable[str], who: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{who}: missing column(s) {missing}; the frame has: {list(frame.columns)}")


def borrowed_keys(study: str, profile: str = "full") -> set[str]:
    """The run keys (:func:`qdiff_lib.grids.run_key`) of :data:`BORROWS_FROM` ``[study]``'s planned runs that
    ``study`` would have planned itself at their N: each planned run of ``study`` with its ``n_train`` set to each N
    of the source's grid, kept where the source plans that run. A run of the source with another digit, arm, seed,
    width, budget or any other option differs in its key and is not borrowed."""
    _check_study(study)
    source = study_runs(BORROWS_FROM[study], profile)
    sizes = {o.n_train for o in source}
    wanted = {run_key(dataclasses.replace(o, n_train=n)) for o in study_runs(study, profile) for n in sizes}
    return wanted & {run_key(o) for o in source}


def borrowed_runs(source: pd.DataFrame, keys: Iterable[str], exclude: Iterable[str] = ()) -> pd.DataFrame:
    """The rows of ``source`` (one row per run, with a ``key`` column, as :func:`qdiff_lib.study.load_results` gives)
    whose key is in ``keys`` and not in ``exclude`` (the scaling study's own runs), in ``source``'s order."""
    if not len(source):
        return source.iloc[:0]
    _need(source, ["key"], "borrowed_runs")
    keys, exclude = set(keys), set(exclude)
    return source[source["key"].isin(keys - exclude)]


@dataclass(frozen=True)
class ScalingRuns:
    """What :func:`load_scaling` read: ``frame`` (the study's runs, then the borrowed ones, one row per run),
    ``n_planned``/``n_present`` (the study's own runs), ``n_borrowed``/``n_borrowable`` (borrowed runs present and
    planned), ``source`` (the study borrowed from), ``arms`` and ``comparisons``."""

    study: str
    frame: pd.DataFrame
    n_planned: int
    n_present: int
    n_borrowed: int
    n_borrowable: int
    source: str
    arms: tuple[str, ...]
    comparisons: tuple[tuple[str, str], ...]


def load_scaling(study: str, profile: str = "full", root: str | os.PathLike | None = None) -> ScalingRuns:
    """The committed runs of scaling study ``study`` under ``profile`` (from ``root``, default ``results/``) with
    :data:`BORROWS_FROM` ``[study]``'s runs of :func:`borrowed_keys` added as one more size. Without any run of
    ``study`` itself, ``frame`` is empty (a size borrowed alone is no scaling study) and ``n_borrowed`` still counts
    the borrowed runs present."""
    _check_study(study)
    own = load_results(profile, study, root)
    planned = study_runs(study, profile)
    keys = borrowed_keys(study, profile)
    extra = borrowed_runs(load_results(profile, BORROWS_FROM[study], root), keys,
                          own["key"] if len(own) else ())
    arms = STUDY_ARMS[study]
    if len(own):
        foreign = sorted(set(own["arm"]) - set(arms))
        if foreign:
            raise ValueError(f"load_scaling: {study} holds runs of arm(s) {foreign}; allowed: {list(arms)}")
        frame = pd.concat([own, extra], ignore_index=True)
        repeated = frame[frame.duplicated(subset=["label", "n_train", "arm", "seed"], keep=False)]
        if len(repeated):  # an older run left in the folder: refused, not averaged in
            raise ValueError(f"load_scaling: several runs of one (label, n_train, arm, seed) in {study}: "
                             f"{sorted(repeated['key'])[:4]}; expected one each")
    else:
        frame = own
    return ScalingRuns(study, frame, len(planned), len(own), len(extra), len(keys), BORROWS_FROM[study], arms,
                       STUDY_COMPARISONS[study])


def _check_comparisons(comparisons: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = [tuple(c) for c in comparisons]
    bad = [c for c in pairs if len(c) != 2 or c[0] == c[1]]
    if bad or not pairs:
        raise ValueError(f"comparisons {bad or pairs!r}: expected one or more (a, b) pairs of two different arms")
    return pairs


def size_differences(frame: pd.DataFrame, comparisons: Sequence[tuple[str, str]], metric: str = "kid",
                     *, n_boot: int = 2000) -> pd.DataFrame:
    """``a - b`` of ``metric`` at each training-set size N for each comparison ``(a, b)`` whose arms both ran there:
    the paired t interval over seeds, or with one seed the run's own sampling error
    (:func:`qdiff_lib.paired_tables.comparisons_by_level`, whose columns it has). Rows by N, then in the order of
    ``comparisons``."""
    pairs = _check_comparisons(comparisons)
    _need(frame, ["n_train", "arm", "seed", metric], "size_differences")
    parts = [comparisons_by_level(frame, "n_train", a, [b], metric, "seed", n_boot=n_boot) for a, b in pairs]
    present = [p for p in parts if len(p)]  # concatenating empty frames is deprecated in pandas
    if not present:
        return parts[0].iloc[:0]
    out = pd.concat(present, ignore_index=True)
    return out.sort_values("n_train", kind="mergesort").reset_index(drop=True)


def where_sentence(d: pd.DataFrame, comparison: str) -> str:
    """Where the difference ``comparison`` (``"a - b"``) of :func:`size_differences` ``d`` is resolved: the sizes
    whose interval over seeds excludes 0 (with the difference and interval), those whose interval includes it, and
    the sizes with one seed, which are not tested (a one-seed interval is sampling noise only)."""
    _need(d, _DIFF_COLUMNS, "where_sentence")
    g = d[d["comparison"] == comparison].sort_values("n_train")
    if g.empty:
        return f"{comparison}: not computed"
    if g["pairs"].max() < 2:
        return (f"{comparison}: one seed per N, so no difference is resolved at this power "
                f"(differences {', '.join(f'{v:+.3g}' for v in g['diff'])} at N = {', '.join(map(str, g['n_train']))})")
    tested = g[g["pairs"] >= 2]
    untested = (f"; N = {', '.join(map(str, g[g['pairs'] < 2]['n_train']))} had one seed (not tested)"
                if len(tested) < len(g) else "")
    resolved = tested[tested["excludes 0"]]
    if resolved.empty:
        return (f"{comparison}: the 95% interval over seeds includes 0 at every N tested "
                f"({', '.join(map(str, tested['n_train']))}){untested}")
    parts = [f"N = {r.n_train}: {r.diff:+.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}]" for r in resolved.itertuples()]
    rest = ("" if len(resolved) == len(tested) else
            f", and includes it at N = {', '.join(map(str, tested[~tested['excludes 0']]['n_train']))}")
    return f"{comparison}: the interval over seeds excludes 0 at " + "; ".join(parts) + rest + untested


def pooled_row(frame: pd.DataFrame, a: str, b: str, metric: str = "kid", norm_metric: str | None = "kid_norm",
               *, n_boot: int = 2000) -> dict | None:
    """``a - b`` over every (N, seed) pair of ``frame``: ``comparison``, ``pairs``, ``95% CI`` (t interval of the
    mean difference), ``normalised 95% CI`` (the same pairs of ``norm_metric``; absent when None), ``t p``,
    ``favour arm`` (``"k of n"`` untied pairs in which ``a`` is lower), ``sign p`` (exact sign test) and
    ``sizes negative`` (sizes whose mean difference is below 0, ``"k of n"``). None with fewer than two pairs."""
    if a == b:
        raise ValueError(f"pooled_row: a and b are the same arm {a!r}; expected two different arms")
    _need(frame, ["n_train", "arm", "seed", metric, *([norm_metric] if norm_metric else [])], "pooled_row")
    c = compare_arms(frame, a, b, metric, ["n_train", "seed"], n_boot=n_boot)
    if c["n"] < 2:
        return None
    per_n = comparisons_by_level(frame, "n_train", a, [b], metric, "seed", n_boot=n_boot)["diff"]
    row = {"comparison": f"{a} - {b}", "pairs": c["n"],
           "95% CI": format_interval(c["mean_diff"], c["ci_low"], c["ci_high"])}
    if norm_metric:
        cn = compare_arms(frame, a, b, norm_metric, ["n_train", "seed"], n_boot=n_boot)
        row["normalised 95% CI"] = format_interval(cn["mean_diff"], cn["ci_low"], cn["ci_high"], 2)
    row.update({"t p": c["t_pvalue"], "favour arm": f"{c['n_a_lower']} of {c['n'] - c['n_ties']}",
                "sign p": c["sign_pvalue"], "sizes negative": f"{int((per_n < 0).sum())} of {len(per_n)}"})
    return row


def pooled_sentence(row: dict | None, a: str, b: str) -> str:
    """:func:`pooled_row` ``row`` of ``a - b`` in words (or that there were fewer than two pairs)."""
    if row is None:
        return f"{a} - {b}: fewer than two (N, seed) pairs"
    if row.get("comparison") != f"{a} - {b}":
        raise ValueError(f"pooled_sentence: the row is of {row.get('comparison')!r}; expected {a + ' - ' + b!r}")
    norm = (f" ({row['normalised 95% CI']} normalised; paired t p = " if "normalised 95% CI" in row
            else " (paired t p = ")
    return (f"{row['comparison']}, pooled over {row['pairs']} (N, seed) pairs: {row['95% CI']} in KID"
            f"{norm}{row['t p']:.2g}); {row['favour arm']} pairs favour {a} (sign test p = {row['sign p']:.2g}); "
            f"the mean difference is negative at {row['sizes negative']} sizes")


def pooled_rows(frame: pd.DataFrame, comparisons: Sequence[tuple[str, str]], metric: str = "kid",
                norm_metric: str | None = "kid_norm") -> dict[str, dict | None]:
    """``{"a - b": pooled_row(frame, a, b, ...)}`` for each comparison ``(a, b)``, in order (None: fewer than two
    pairs)."""
    return {f"{a} - {b}": pooled_row(frame, a, b, metric, norm_metric) for a, b in _check_comparisons(comparisons)}


def pooled_table(rows: dict[str, dict | None]) -> pd.DataFrame:
    """The rows of :func:`pooled_rows` that exist, one per comparison, indexed by ``comparison`` (empty without any)."""
    present = [r for r in rows.values() if r is not None]
    return pd.DataFrame(present).set_index("comparison") if present else pd.DataFrame()


def seeds_per_size(frame: pd.DataFrame) -> str:
    """``"N = 10: 3, N = 25: 3, ..."``: the distinct seeds at each size of ``frame`` (``"none"`` when empty)."""
    if not len(frame):
        return "none"
    _need(frame, ["n_train", "seed"], "seeds_per_size")
    return ", ".join(f"N = {n}: {k}" for n, k in frame.groupby("n_train")["seed"].nunique().items())


def mean_range(frame: pd.DataFrame, metric: str = "kid_norm") -> str:
    """Where the (N, arm) means of ``metric`` run: ``"from 0.41 (arm, N = 64) to 0.72 (arm, N = 10)"``."""
    _need(frame, ["n_train", "arm", metric], "mean_range")
    if not len(frame):
        raise ValueError("mean_range: the frame has no run")
    means = frame.groupby(["n_train", "arm"])[metric].mean()
    lo, hi = means.idxmin(), means.idxmax()
    return f"from {means.min():.2f} ({lo[1]}, N = {lo[0]}) to {means.max():.2f} ({hi[1]}, N = {hi[0]})"


def memorization_floors(frame: pd.DataFrame, draws: int = 20, draw_seed: int = 0) -> pd.DataFrame:
    """The memorization score of a perfect non-copying generator for each distinct run setting of ``frame``
    (:func:`qdiff_lib.metrics.memorization_floor` with the run's digit, N, reference and sample counts and seed):
    one row per draw, columns ``n_train``, ``seed``, ``floor``."""
    from qdiff_lib.metrics import memorization_floor

    _need(frame, ["dataset", "label", "n_train", "seed", "n_reference", "n_samples"], "memorization_floors")
    runs = frame[["dataset", "label", "n_train", "seed", "n_reference", "n_samples"]].drop_duplicates()
    rows = []
    for r in runs.itertuples():
        fl = memorization_floor(r.dataset, int(r.label), int(r.n_train), int(r.n_reference), int(r.n_samples),
                                seed=int(r.seed), draws=draws, draw_seed=draw_seed)
        rows += [dict(n_train=r.n_train, seed=r.seed, floor=v) for v in fl["scores"]]
    return pd.DataFrame(rows, columns=["n_train", "seed", "floor"])


def floor_table(frame: pd.DataFrame, floors: pd.DataFrame) -> pd.DataFrame:
    """Per N: each arm's mean memorization score (one column per arm) and the floor's ``floor mean``, ``floor std``
    (over draws and seeds) and 2.5%/97.5% quantiles ``floor q025``/``floor q975`` (``floors``:
    :func:`memorization_floors`)."""
    _need(frame, ["n_train", "arm", "memorization"], "floor_table")
    _need(floors, ["n_train", "floor"], "floor_table")
    by_n = floors.groupby("n_train")["floor"].agg(mean="mean", std="std", q025=lambda v: v.quantile(0.025),
                                                  q975=lambda v: v.quantile(0.975))
    arm_by_n = frame.groupby(["n_train", "arm"])["memorization"].mean().unstack()
    return pd.concat([arm_by_n, by_n.add_prefix("floor ")], axis=1)


def floor_summary(frame: pd.DataFrame, table: pd.DataFrame, threshold: float) -> dict:
    """How the arms' memorization score moves with N against its floor (``table``: :func:`floor_table` of
    ``frame``), and how close any run of ``frame`` comes to the copying flag ``threshold``.

    Returns numbers (``floor_n_lo``/``floor_n_hi``: the smallest and largest N; ``floor_lo``/``floor_hi``,
    ``floor_min``/``floor_max``, ``floor_sd_max``; ``mem_arms_lo``/``mem_arms_hi``: the arms' mean score there;
    ``arm_change``, ``floor_change`` from the smallest to the largest N; ``mem_gap_hi``: the floor minus the arms'
    mean at the largest N) and sentences: ``floor_reading``/``floor_summary`` (whether the floor moves the arms' way,
    i.e. whether the size of the training set alone produces the trend), ``mem_above`` (the sizes at which every arm
    lies above the floor, and the highest score against the flag) and ``mem_flag_summary``."""
    _need(frame, ["n_train", "arm", "seed", "memorization"], "floor_summary")
    _need(table, ["floor mean", "floor std"], "floor_summary")
    if not len(frame) or not len(table):
        raise ValueError("floor_summary: needs at least one run and one size with a floor")
    arms = [c for c in table.columns if not str(c).startswith("floor ")]
    arm_by_n, floor_mean = table[arms], table["floor mean"]
    n_lo, n_hi = table.index.min(), table.index.max()
    arms_mean = arm_by_n.mean(axis=1)
    arm_change = float(arms_mean[n_hi] - arms_mean[n_lo])
    floor_change = float(floor_mean[n_hi] - floor_mean[n_lo])
    out = {"floor_n_lo": int(n_lo), "floor_n_hi": int(n_hi), "floor_lo": float(floor_mean[n_lo]),
           "floor_hi": float(floor_mean[n_hi]), "floor_min": float(floor_mean.min()),
           "floor_max": float(floor_mean.max()), "floor_sd_max": float(table["floor std"].max()),
           "mem_arms_lo": float(arms_mean[n_lo]), "mem_arms_hi": float(arms_mean[n_hi]), "arm_change": arm_change,
           "floor_change": floor_change, "mem_gap_hi": float(floor_mean[n_hi] - arms_mean[n_hi])}
    ratio = abs(floor_change / arm_change) if arm_change else float("inf")
    if floor_change * arm_change < 0:  # a share only makes sense when both move the same way
        out["floor_reading"] = (f"The floor moves the other way from the arms' score, and by only {ratio:.0%} as much: "
                                "the size of the training set by itself does not produce the trend, and the score does "
                                "not drift with N for a generator that does not copy.")
        out["floor_summary"] = ("the floor moves the other way, so the size of the training set does not produce the "
                                "fall")
    else:
        out["floor_reading"] = (f"The floor moves the same way, by {ratio:.0%} of the arms' move: that part of the "
                                "trend comes from the size of the training set alone, not from the samples.")
        out["floor_summary"] = f"the floor moves the same way, by {ratio:.0%} of the arms' move"
    above = [int(n) for n in table.index if arm_by_n.loc[n].min() > floor_mean.loc[n]]
    top = frame.loc[frame["memorization"].idxmax()]
    n_flagged = int((frame["memorization"] > threshold).sum())
    flagged = (f"none of the {len(frame)} runs is flagged" if not n_flagged else
               f"{n_flagged} of the {len(frame)} runs {'is' if n_flagged == 1 else 'are'} flagged")
    where_top = f"N = {int(top['n_train'])}, {top['arm']}, seed {int(top['seed'])}"
    out["mem_above"] = ((f"At N = {', '.join(map(str, above))} every arm's mean score lies above the floor, the "
                         "direction of copying, but " if above else
                         "No arm's mean score lies above the floor at any N, and ")
                        + f"{flagged}: the highest score of any run is {top['memorization']:.3g} ({where_top}), "
                        + ("below" if top["memorization"] <= threshold else "above")
                        + f" the threshold of {threshold}.")
    out["mem_flag_summary"] = f"{flagged} (highest score {top['memorization']:.3g}, threshold {threshold})"
    return out
