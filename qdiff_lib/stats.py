"""Statistics over seeds: bootstrap intervals, paired comparisons between arms, tables with intervals.

A configuration (dataset, class, N, arm) is trained with several seeds; each seed gives one value of each
metric. With 5 seeds, intervals are wide and the tests weak: that is the honest state of the evidence, and the
helpers here report it rather than hide it. Arms trained with the same seed share data draws and initialisation
of the shared parts, so arms are compared *paired* by seed.

The claim-level verdicts built on these primitives live in :mod:`qdiff_lib.verdicts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from qdiff_lib._checks import check_choice

__all__ = ["bootstrap_ci", "paired_comparison", "paired_by", "MUST_MATCH", "sign_comparison", "verdict", "VERDICTS",
           "holm_adjust", "format_interval", "table_with_intervals"]

#: The three verdicts of :func:`verdict`.
VERDICTS = ("holds", "does not hold", "inconclusive at this power")

BOOTSTRAP_METHODS = ("percentile", "basic", "bca")


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    statistic: Callable[[np.ndarray], float] = np.mean,
    method: Literal["percentile", "basic", "bca"] = "percentile",
) -> dict:
    """Bootstrap confidence interval of ``statistic`` of ``values`` (one value per seed).

    Uses :func:`scipy.stats.bootstrap` with ``numpy.random.default_rng(seed)``. With very few values
    (e.g. 5 seeds) the percentile interval is known to be too narrow (it cannot reach beyond the observed
    range); :func:`paired_comparison` also gives the Student-t interval. Constant values give a zero-width
    interval. NaNs are an error.

    Returns ``{"mean", "ci_low", "ci_high", "n"}`` (``mean`` is ``statistic(values)``).
    """
    check_choice("method", method, BOOTSTRAP_METHODS)
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci: expected at least one value, got none")
    if np.isnan(x).any():
        raise ValueError("bootstrap_ci: values contain NaN")
    point = float(statistic(x))
    if x.size == 1 or np.ptp(x) == 0:
        return {"mean": point, "ci_low": point if x.size > 1 else float("nan"),
                "ci_high": point if x.size > 1 else float("nan"), "n": int(x.size)}
    vectorized = statistic is np.mean
    res = stats.bootstrap(
        (x,),
        (lambda s, axis: np.mean(s, axis=axis)) if vectorized else statistic,
        n_resamples=n_boot,
        confidence_level=1 - alpha,
        method=method,
        rng=np.random.default_rng(seed),
        vectorized=vectorized,
    )
    interval = res.confidence_interval
    return {"mean": point, "ci_low": float(interval.low), "ci_high": float(interval.high), "n": int(x.size)}


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    alpha: float = 0.05,
    n_boot: int = 9999,
    seed: int = 0,
) -> dict:
    """Compare two arms measured on the same seeds: ``a[i]`` and ``b[i]`` come from seed ``i``.

    With differences ``d = a - b`` (n pairs):

    * ``mean_diff`` with the Student-t interval ``mean(d) +- t_{n-1, 1-alpha/2} sd(d)/sqrt(n)``
      (``ci_low``/``ci_high``) and the percentile bootstrap interval (``boot_low``/``boot_high``);
    * the paired t-test (``t_stat``, ``t_pvalue``; :func:`scipy.stats.ttest_rel`);
    * the Wilcoxon signed-rank test, exact when possible (``wilcoxon_stat``, ``wilcoxon_pvalue``): with n pairs its
      smallest attainable two-sided p-value is ``2 / 2**n`` (0.0625 for 5 seeds), reported as
      ``wilcoxon_min_pvalue`` so a reader sees when the test cannot reach 0.05;
    * the effect size Cohen's ``d_z = mean(d) / sd(d)``;
    * ``n_a_greater``: in how many pairs ``a > b``.

    Returns a JSON-serialisable dict (NaN where a quantity is undefined, e.g. sd(d) = 0).
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(
            f"paired_comparison: a and b must have the same length (one value per seed), got {a.size} and {b.size}")
    if a.size < 2:
        raise ValueError(f"paired_comparison: expected at least 2 pairs, got {a.size}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired_comparison: values contain NaN")
    d = a - b
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = stats.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
    nan = float("nan")
    if sd > 0:
        t = stats.ttest_rel(a, b)
        t_stat, t_p = float(t.statistic), float(t.pvalue)
    else:
        t_stat, t_p = nan, nan
    if np.any(d != 0):
        w = stats.wilcoxon(a, b)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    else:
        w_stat, w_p = nan, nan
    boot = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "n": int(n),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "boot_low": boot["ci_low"],
        "boot_high": boot["ci_high"],
        "t_stat": t_stat,
        "t_pvalue": t_p,
        "wilcoxon_stat": w_stat,
        "wilcoxon_pvalue": w_p,
        "wilcoxon_min_pvalue": 2.0 / 2**n,
        "cohens_dz": mean / sd if sd > 0 else nan,
        "n_a_greater": int((d > 0).sum()),
        "alpha": alpha,
    }


#: Columns that the two runs of a pair must share when the frame has them (:func:`paired_by`): the classifier recipe
#: whose features score a run (KIDs of different classifiers are on different scales).
MUST_MATCH = ("classifier_augment",)


def paired_by(
    frame: pd.DataFrame,
    factor: str,
    a: str,
    b: str,
    keys: str | Sequence[str],
    value: str,
    alpha: float = 0.05,
    min_pairs: int = 2,
) -> tuple[dict | None, pd.DataFrame]:
    """Compare level ``a`` of column ``factor`` with level ``b``, paired on ``keys``, with :func:`paired_comparison`.

    ``frame`` has one row per run (e.g. columns ``arm``, ``label``, ``seed``, ``kid``). The rows whose ``factor`` is
    ``a`` are matched with those whose ``factor`` is ``b`` and that share every column of ``keys`` (e.g. the same
    digit and seed); keys present under only one of the two levels are dropped. Each (keys, level) must occur at
    most once: a duplicate means the keys do not identify a run, and would otherwise be averaged silently. The two
    runs of a pair must agree in every column of :data:`MUST_MATCH` the frame has (ValueError otherwise).

    Returns ``(comparison, pairs)``: ``pairs`` is a DataFrame indexed by ``keys`` with the columns ``a`` and ``b``
    (the matched values); ``comparison`` is ``paired_comparison(pairs[a], pairs[b], alpha)`` (so ``a - b``), or
    ``None`` when there are fewer than ``min_pairs`` pairs (including when one level is absent).
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    missing = [c for c in [factor, value, *keys] if c not in frame.columns]
    if missing:
        raise ValueError(f"paired_by: unknown column(s) {missing}; allowed: {list(frame.columns)}")
    if min_pairs < 2:
        raise ValueError(f"paired_by: min_pairs must be at least 2, got {min_pairs}")
    sub = frame[frame[factor].isin([a, b])]
    dup = sub.duplicated(subset=[*keys, factor], keep=False)
    if dup.any():
        first = sub.loc[dup, [*keys, factor]].drop_duplicates().head(3).to_dict("records")
        raise ValueError(f"paired_by: keys {keys} do not identify one run per {factor!r} level; duplicated: {first}")
    wide = sub.pivot(index=keys, columns=factor, values=value) if len(sub) else pd.DataFrame()
    for level in (a, b):
        if level not in wide:
            wide[level] = np.nan
    pairs = wide[[a, b]].dropna()
    pairs.columns.name = None
    for column in MUST_MATCH:  # a pair whose runs were scored in different feature spaces compares nothing
        if column in sub.columns and len(pairs):
            both = sub.pivot(index=keys, columns=factor, values=column).loc[pairs.index, [a, b]]
            differ = both[(both[a] != both[b]) & ~(both[a].isna() & both[b].isna())]
            if len(differ):
                raise ValueError(f"paired_by: {len(differ)} pair(s) of {a!r} and {b!r} differ in {column!r} (e.g. "
                                 f"{differ.index[0]}: {differ.iloc[0][a]!r} against {differ.iloc[0][b]!r}); their "
                                 "metrics are not comparable: select one value first")
    if len(pairs) < min_pairs:
        return None, pairs
    return paired_comparison(pairs[a].to_numpy(), pairs[b].to_numpy(), alpha=alpha), pairs


def verdict(comparison: Mapping | None, lower_is_better: bool = True, null: float = 0.0) -> str:
    """The book's rule for a claim "``a`` is better than ``b``", from ``paired_comparison(a, b)``.

    ``"holds"`` when the whole (1 - alpha) Student-t interval of ``a - b`` lies on the better side of ``null`` (below
    0 when ``lower_is_better``, as for KID and FID), ``"does not hold"`` when it lies wholly on the worse side, and
    ``"inconclusive at this power"`` when it contains ``null`` or there is no comparison (``None``). For
    :func:`sign_comparison`, whose interval is the share of pairs in which ``a`` is lower, use
    ``lower_is_better=False, null=0.5``.
    """
    if comparison is None:
        return VERDICTS[2]
    low, high = comparison["ci_low"], comparison["ci_high"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return VERDICTS[2]
    better, worse = (high < null, low > null) if lower_is_better else (low > null, high < null)
    return VERDICTS[0] if better else VERDICTS[1] if worse else VERDICTS[2]


def sign_comparison(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict:
    """Scale-free paired comparison: the share of pairs in which ``a < b``, with its exact interval and sign test.

    For pairs whose values live on different scales (KIDs of different datasets, each in its own feature space)
    or can be at or below 0 (an unbiased KID under sampling noise), where neither the mean difference nor the log
    ratio is meaningful. Ties are dropped, as in the sign test. Returns ``n`` (untied pairs), ``n_ties``,
    ``n_a_lower``, ``share_a_lower``, its Clopper-Pearson ``ci_low``/``ci_high`` at level 1 - ``alpha`` and the
    two-sided exact binomial ``pvalue`` against a share of 1/2 (NaN where no pair is untied).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"sign_comparison needs two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("sign_comparison: NaN values; drop unpaired entries first (see paired_by)")
    d = a - b
    n, k = int((d != 0).sum()), int((d < 0).sum())
    out = {"n": n, "n_ties": int(len(d) - n), "n_a_lower": k}
    if n == 0:
        return {**out, "share_a_lower": np.nan, "ci_low": np.nan, "ci_high": np.nan, "pvalue": np.nan}
    test = stats.binomtest(k, n, 0.5)
    ci = test.proportion_ci(confidence_level=1 - alpha, method="exact")
    return {**out, "share_a_lower": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "pvalue": float(test.pvalue)}


def holm_adjust(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, for a family of tests (Holm, Scand. J. Statist. 6, 65, 1979).

    Sorted ascending, the i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting
    where the adjusted value is below alpha keeps the chance of *any* false rejection in the family at most alpha,
    whatever the dependence between the tests. NaN entries (no test) stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite][(p[finite] < 0) | (p[finite] > 1)].tolist()}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(finite)
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def format_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``"mean [low, high]"`` with ``digits`` significant digits (``"nan"`` for missing bounds)."""

    def f(v: float) -> str:
        return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}g}"

    return f"{f(mean)} [{f(low)}, {f(high)}]"


def table_with_intervals(
    data: pd.DataFrame | Iterable[Mapping],
    by: str | Sequence[str],
    metrics: Sequence[str] | None = None,
    n_boot: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    digits: int = 3,
    as_string: bool = False,
) -> pd.DataFrame | str:
    """A table of ``"mean [lo, hi]"`` per group, from one row per (configuration, seed).

    Args:
        data: a DataFrame or records (dicts) with the ``by`` columns and one numeric column per metric.
        by: column(s) that identify a configuration (e.g. ``["arm", "n_train"]``); rows sharing them are seeds.
        metrics: the metric columns (default: every numeric column not in ``by`` and not named ``seed``).
        n_boot, alpha, seed: of :func:`bootstrap_ci` (percentile) for each cell.
        digits: significant digits.
        as_string: return the table rendered as Markdown text (``DataFrame.to_markdown`` needs ``tabulate``;
            a plain ``to_string`` is used) instead of the DataFrame.

    Returns a DataFrame indexed by ``by`` with one string column per metric and a column ``n`` (seeds).
    """
    df = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(list(data))
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise ValueError(f"unknown column(s) {missing} in by; allowed: {list(df.columns)}")
    if metrics is None:
        metrics = [c for c in df.columns if c not in by and c != "seed" and pd.api.types.is_numeric_dtype(df[c])]
    else:
        bad = [c for c in metrics if c not in df.columns]
        if bad:
            raise ValueError(f"unknown metric column(s) {bad}; allowed: {list(df.columns)}")
    rows = []
    for key, group in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key, strict=True))
        for m in metrics:
            ci = bootstrap_ci(group[m].dropna().to_numpy(), n_boot=n_boot, alpha=alpha, seed=seed)
            row[m] = format_interval(ci["mean"], ci["ci_low"], ci["ci_high"], digits)
        row["n"] = len(group)
        rows.append(row)
    table = pd.DataFrame(rows).set_index(by)
    return table.to_string() if as_string else table


# --------------------------------------------------------------------------------------------------------------
# Arms compared from a results table, equivalence, power, and one verdict per claim
# --------------------------------------------------------------------------------------------------------------
