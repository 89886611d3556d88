"""Tables of paired comparisons for the chapters: several comparisons of one results table, with Holm's correction
over them, and comparisons repeated at each level of a factor (each training-set size, each schedule).

The chapters display and word these tables; the pairing, the intervals, the correction and the direction of each
comparison are decided here (on :func:`qdiff_lib.verdicts.compare_arms` and :mod:`qdiff_lib.stats`), and tested in
``tests/test_verdicts.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from qdiff_lib.stats import format_interval, holm_adjust, verdict
from qdiff_lib.verdicts import compare_arms

__all__ = ["DIRECTIONS", "direction", "comparison_table", "comparisons_by_level"]

#: The wording of :func:`direction`, by the verdict of :func:`qdiff_lib.stats.verdict` (lower is better).
DIRECTIONS = {
    "holds": "proposed better (interval below 0)",
    "does not hold": "proposed worse (interval above 0)",
    "inconclusive at this power": "inconclusive (interval contains 0)",
}


def direction(comparison: Mapping | None, lower_is_better: bool = True) -> str:
    """Where the (1 - alpha) t interval of ``proposed - control`` lies, in words (one of :data:`DIRECTIONS`'s values,
    or ``"no interval (fewer than 2 pairs)"``). ``comparison`` is a comparison dict or a row of
    :func:`comparison_table` (its ``ci_low``/``ci_high``)."""
    if comparison is None or not np.isfinite(comparison.get("ci_low", np.nan)):
        return "no interval (fewer than 2 pairs)"
    words = dict(DIRECTIONS)
    if not lower_is_better:
        words["holds"], words["does not hold"] = ("proposed better (interval above 0)",
                                                  "proposed worse (interval below 0)")
    return words[verdict(comparison, lower_is_better=lower_is_better)]


def comparison_table(
    frame: pd.DataFrame,
    comparisons: Sequence[tuple[str, str]],
    metric: str = "kid",
    pair_on: str | Sequence[str] = ("label", "seed"),
    *,
    factor: str = "arm",
    count: str | None = None,
    alpha: float = 0.05,
    n_boot: int = 2000,
    holm: bool = True,
    lower_is_better: bool = True,
) -> pd.DataFrame:
    """One row per comparison ``(a, b)`` of ``frame`` (differences ``a - b`` of ``metric``, paired on ``pair_on``).

    Comparisons whose two levels are not both present in ``frame[factor]`` are left out. Columns: ``pairs``,
    ``count`` (the number of distinct values of column ``count`` among the pairs, e.g. digits; named after the
    column plus "s"), ``mean diff``, ``ci_low``, ``ci_high``, ``95% CI`` (text), ``t p``, ``Holm p`` (Holm's
    correction over the rows of this table, ``holm=True``), ``Wilcoxon p``, ``d_z``, ``proposed lower`` (text
    "k of n"), ``ratio`` with ``ratio_low``/``ratio_high`` (geometric mean of ``a / b``, NaN unless every value is
    positive) and ``direction`` (:func:`direction`). Statistics are NaN for fewer than 2 pairs. Indexed by
    ``"a - b"``.
    """
    keys = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    if count is not None and count not in keys:
        raise ValueError(f"comparison_table: count column {count!r} must be a pairing key; allowed: {keys}")
    present = set(frame[factor]) if factor in frame else set()
    rows = []
    for a, b in comparisons:
        if not {a, b} <= present:
            continue
        c = compare_arms(frame, a, b, metric, keys, factor=factor, alpha=alpha, n_boot=n_boot)
        row = {"comparison": f"{a} - {b}", "pairs": c["n"]}
        if count is not None:
            row[f"{count}s"] = len({k[keys.index(count)] for k in c["pair_keys"]})
        tested = c["n"] >= 2
        row.update({
            "mean diff": c["mean_diff"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
            "95% CI": format_interval(c["mean_diff"], c["ci_low"], c["ci_high"]) if tested else "",
            "t p": c["t_pvalue"], "Wilcoxon p": c["wilcoxon_pvalue"], "d_z": c["cohens_dz"],
            "proposed lower": f"{c['n'] - c['n_a_greater']} of {c['n']}" if tested else "",
            "ratio": c["ratio"], "ratio_low": c["ratio_low"], "ratio_high": c["ratio_high"],
            "direction": direction(c if tested else None, lower_is_better),
        })
        rows.append(row)
    columns = ["comparison", "pairs", *([f"{count}s"] if count else []), "mean diff", "ci_low", "ci_high", "95% CI",
               "t p", "Wilcoxon p", "d_z", "proposed lower", "ratio", "ratio_low", "ratio_high", "direction"]
    table = pd.DataFrame(rows, columns=columns).set_index("comparison")
    if holm:  # family-wise error over the comparisons of this table at most alpha
        table.insert(table.columns.get_loc("t p") + 1, "Holm p",
                     holm_adjust(table["t p"].to_numpy(dtype=float)) if len(table) else [])
    return table


def comparisons_by_level(
    frame: pd.DataFrame,
    by: str,
    a: str,
    controls: Sequence[str],
    metric: str = "kid",
    pair_on: str | Sequence[str] = "seed",
    *,
    factor: str = "arm",
    alpha: float = 0.05,
    n_boot: int = 2000,
    z: float = 1.96,
) -> pd.DataFrame:
    """``a - control`` at each level of ``by`` (e.g. each training-set size), for each control present there.

    With 2 or more pairs at a level the interval is the paired t interval over them (``interval`` "paired t over
    seeds"). With one pair it can only be the run's own sampling error: ``diff +- z * hypot(se_a, se_b)`` from the
    column ``metric + "_se"`` when ``frame`` has it (``interval`` "one seed, sampling SE only"; no p-value), else
    none. ``excludes 0`` says whether the interval lies wholly on one side of 0 (a one-seed interval reflects sampling
    noise only: read it as a demonstration, not a test). Columns: ``by``, ``comparison``, ``pairs``, ``diff``,
    ``ci_low``, ``ci_high``, ``t p``, ``excludes 0``, ``interval``.
    """
    keys = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    se_col = f"{metric}_se"
    columns = [by, "comparison", "pairs", "diff", "ci_low", "ci_high", "t p", "excludes 0", "interval"]
    out = []
    for level in sorted(frame[by].unique()) if len(frame) else []:
        at = frame[frame[by] == level]
        for other in [o for o in controls if {o, a} <= set(at[factor])]:
            c = compare_arms(at, a, other, metric, keys, factor=factor, alpha=alpha, n_boot=n_boot)
            if c["n"] == 0:
                continue
            if c["n"] >= 2:
                diff, lo, hi, p, kind = c["mean_diff"], c["ci_low"], c["ci_high"], c["t_pvalue"], "paired t over seeds"
            else:
                key = dict(zip(keys, c["pair_keys"][0], strict=True))
                one = at.loc[(at[keys] == pd.Series(key)).all(axis=1)].set_index(factor)
                diff = float(one.loc[a, metric] - one.loc[other, metric])
                if se_col in one:
                    half = z * math.hypot(float(one.loc[a, se_col]), float(one.loc[other, se_col]))
                    lo, hi, kind = diff - half, diff + half, "one seed, sampling SE only"
                else:
                    lo, hi, kind = np.nan, np.nan, "one seed, no interval"
                p = np.nan
            out.append({by: level, "comparison": f"{a} - {other}", "pairs": c["n"], "diff": diff, "ci_low": lo,
                        "ci_high": hi, "t p": p, "excludes 0": bool(lo > 0 or hi < 0), "interval": kind})
    return pd.DataFrame(out, columns=columns)
