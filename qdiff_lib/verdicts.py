"""The book's verdicts, decided by tested code rather than in the chapters.

:func:`compare_arms` (and :func:`compare_group_means`) compares two arms of a long-format results table (pairs of
runs that share data draw and seed), :func:`equivalence_test` (TOST) and :func:`minimum_detectable_effect` say what
a null result rules out, :func:`claim_verdict` turns a claim's primary comparison into one of
:data:`CLAIM_VERDICTS`, :func:`claim_verdicts` does so for a family of claims with Holm's correction over the
family, and :func:`tally` counts the verdicts. The statistical primitives are in :mod:`qdiff_lib.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import optimize, stats

from qdiff_lib._checks import check_choice
from qdiff_lib.stats import holm_adjust, paired_by, paired_comparison, sign_comparison

__all__ = ["compare_arms", "compare_group_means", "equivalence_test", "minimum_detectable_effect", "claim_verdict",
           "claim_verdicts", "tally", "benefit_bound", "CLAIM_VERDICTS", "CLAIM_BASES", "ALTERNATIVES", "MARGIN_TESTS",
           "PENDING"]

#: The verdicts of :func:`claim_verdict`: the first five before any correction for multiplicity, the next three for a
#: decision at level alpha that Holm's correction over the family of claims does not keep, and the last for a claim
#: whose primary comparison has no data yet (given by :mod:`qdiff_lib.claims`, never by :func:`claim_verdict`).
CLAIM_VERDICTS = (
    "holds",
    "does not hold",
    "equivalent (no effect larger than margin)",
    "no benefit larger than margin",
    "inconclusive",
    "holds before correction only",
    "does not hold before correction only",
    "no benefit larger than margin before correction only",
    "not yet tested — runs pending",
)
#: The verdict of a claim whose primary comparison has no data yet (see :mod:`qdiff_lib.claims`).
PENDING = CLAIM_VERDICTS[-1]
CLAIM_BASES = ("t", "sign")
#: What a margin decides in :func:`claim_verdict`: two-sided equivalence (TOST), or only that the claimed benefit
#: is not larger than the margin (the one of TOST's two one-sided tests that faces the claimed direction).
MARGIN_TESTS = ("equivalence", "benefit")
ALTERNATIVES = ("two-sided", "one-sided")


def _as_list(keys: str | Sequence[str] | None) -> list[str]:
    return [] if keys is None else [keys] if isinstance(keys, str) else list(keys)


def _t_interval(d: np.ndarray, alpha: float) -> tuple[float, float, float, float]:
    """``(mean, sd, low, high)`` of ``d`` with the two-sided Student-t interval at level 1 - ``alpha``."""
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = stats.t.ppf(1 - alpha / 2, d.size - 1) * sd / math.sqrt(d.size)
    return mean, sd, mean - half, mean + half


def _key_tuple(key) -> tuple:
    key = key if isinstance(key, tuple) else (key,)
    return tuple(v.item() if isinstance(v, np.generic) else v for v in key)


def compare_arms(
    frame: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "kid",
    pair_on: str | Sequence[str] = ("label", "seed"),
    *,
    factor: str = "arm",
    average_over: str | Sequence[str] | None = None,
    alpha: float = 0.05,
    n_boot: int = 9999,
    seed: int = 0,
) -> dict:
    """Paired comparison of arm ``a`` with arm ``b`` (differences ``a - b``) from a long-format results table.

    ``frame`` has one row per run, with the columns ``factor`` (e.g. ``arm``), ``metric`` (e.g. ``kid``) and every
    column of ``pair_on`` (e.g. ``label`` and ``seed``; add ``dataset`` when datasets are pooled). A run of ``a`` and
    a run of ``b`` form a pair when they share every ``pair_on`` column (:func:`paired_by`: runs without a partner
    are dropped, a key that does not identify one run is an error).

    ``average_over``: columns of ``pair_on`` averaged out after pairing, so that the compared units are the means over
    them, both arms averaged over the same matched runs: ``pair_on=("label", "seed"), average_over="seed"`` compares
    digit means (ten pairs for ten digits) rather than (digit, seed) runs (see :func:`compare_group_means`).

    Returns a JSON-serialisable dict:

    * ``a``, ``b``, ``metric``, ``factor``, ``units`` (the key columns of the compared units), ``n`` (compared pairs),
      ``n_runs`` (matched run pairs before averaging), ``pair_keys`` (the units, as tuples in key order), ``alpha``;
    * the paired t analysis of :func:`paired_comparison` on the units: ``mean_a``, ``mean_b``, ``mean_diff``,
      ``sd_diff``, ``ci_low``/``ci_high`` (Student t, level 1 - alpha), ``boot_low``/``boot_high``, ``t_stat``,
      ``t_pvalue``, ``wilcoxon_pvalue``, ``wilcoxon_min_pvalue``, ``cohens_dz``, ``n_a_greater``;
    * the scale-free sign analysis of :func:`sign_comparison`: ``n_a_lower``, ``n_ties``, ``share_a_lower`` with its
      exact interval ``share_ci_low``/``share_ci_high`` and ``sign_pvalue``;
    * ``ratio`` with ``ratio_low``/``ratio_high``: the geometric mean of ``a / b`` over the units, ``exp`` of the
      t interval of the mean of ``log a - log b``; NaN unless every compared value is positive (an unbiased KID can
      fall below 0 when sampling noise dominates).

    With fewer than 2 units every statistic is NaN and ``n`` says how many there are. The result can be passed to
    :func:`verdict` and :func:`claim_verdict`.
    """
    keys = _as_list(pair_on)
    averaged = _as_list(average_over)
    if not keys:
        raise ValueError("compare_arms: pair_on names no column")
    bad = [c for c in averaged if c not in keys]
    if bad:
        raise ValueError(f"compare_arms: average_over column(s) {bad} are not pairing keys; allowed: {keys}")
    units = [c for c in keys if c not in averaged]
    if not units:
        raise ValueError(f"compare_arms: average_over={averaged} leaves no key to pair on; pair_on: {keys}")
    if not 0 < alpha < 1:
        raise ValueError(f"compare_arms: alpha must lie in (0, 1), got {alpha}")
    _, pairs = paired_by(frame, factor, a, b, keys, metric, alpha=alpha)
    n_runs = len(pairs)
    if averaged and n_runs:
        pairs = pairs.groupby(level=units if len(units) > 1 else units[0], sort=True).mean()
    nan = float("nan")
    out = {"a": a, "b": b, "metric": metric, "factor": factor, "units": units, "n": int(len(pairs)),
           "n_runs": int(n_runs), "pair_keys": [_key_tuple(k) for k in pairs.index], "alpha": alpha}
    fields = ["mean_a", "mean_b", "mean_diff", "sd_diff", "ci_low", "ci_high", "boot_low", "boot_high", "t_stat",
              "t_pvalue", "wilcoxon_pvalue", "wilcoxon_min_pvalue", "cohens_dz", "n_a_greater", "n_a_lower",
              "n_ties", "share_a_lower", "share_ci_low", "share_ci_high", "sign_pvalue", "ratio", "ratio_low",
              "ratio_high"]
    if len(pairs) < 2:
        return {**out, **dict.fromkeys(fields, nan)}
    va, vb = pairs[a].to_numpy(dtype=float), pairs[b].to_numpy(dtype=float)
    c = paired_comparison(va, vb, alpha=alpha, n_boot=n_boot, seed=seed)
    sign = sign_comparison(va, vb, alpha=alpha)
    out.update({k: c[k] for k in fields[:3]})
    out["sd_diff"] = float((va - vb).std(ddof=1))
    out.update({k: c[k] for k in fields[4:14]})
    out.update({"n_a_lower": sign["n_a_lower"], "n_ties": sign["n_ties"], "share_a_lower": sign["share_a_lower"],
                "share_ci_low": sign["ci_low"], "share_ci_high": sign["ci_high"], "sign_pvalue": sign["pvalue"]})
    if (va > 0).all() and (vb > 0).all():
        mean, _, low, high = _t_interval(np.log(va) - np.log(vb), alpha)
        out.update({"ratio": math.exp(mean), "ratio_low": math.exp(low), "ratio_high": math.exp(high)})
    else:
        out.update({"ratio": nan, "ratio_low": nan, "ratio_high": nan})
    return out


def compare_group_means(
    frame: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "kid",
    group: str | Sequence[str] = "label",
    pair_on: str | Sequence[str] = ("label", "seed"),
    **kwargs,
) -> dict:
    """:func:`compare_arms` over per-group means: runs are paired on ``pair_on``, then averaged within each ``group``
    (e.g. the mean over seeds of each digit), and the group means are compared, one pair per group.

    The compared units are fewer (ten digit means rather than thirty (digit, seed) runs) but independent of each
    other when seeds within a digit are correlated; ``n_runs`` in the result counts the matched runs behind them.
    """
    groups, keys = _as_list(group), _as_list(pair_on)
    bad = [g for g in groups if g not in keys]
    if bad or not groups:
        raise ValueError(f"compare_group_means: group {groups} must be pairing keys; allowed: {keys}")
    return compare_arms(frame, a, b, metric, keys, average_over=[k for k in keys if k not in groups], **kwargs)


def _margin_bounds(margin: float | Sequence[float]) -> tuple[float, float]:
    if np.ndim(margin) == 0:
        m = float(margin)
        if not m > 0:
            raise ValueError(f"margin must be positive (the interval is (-margin, margin)), got {margin!r}")
        return -m, m
    low, high = (float(v) for v in margin)
    if not low < high:
        raise ValueError(f"margin (low, high) needs low < high, got {tuple(margin)!r}")
    return low, high


def _tost(mean: float, sd: float, n: int, low: float, high: float, alpha: float) -> dict:
    """TOST from the summary of ``n`` differences (see :func:`equivalence_test`)."""
    nan = float("nan")
    out = {"n": int(n), "mean": mean, "sd": sd, "low": low, "high": high, "alpha": alpha}
    if n < 2 or not (np.isfinite(mean) and np.isfinite(sd)):
        return {**out, "t_low": nan, "t_high": nan, "p_low": nan, "p_high": nan, "pvalue": nan, "ci_low": nan,
                "ci_high": nan, "equivalent": False}
    df, se = n - 1, sd / math.sqrt(n)
    if se > 0:
        t_low, t_high = (mean - low) / se, (mean - high) / se
        p_low, p_high = float(stats.t.sf(t_low, df)), float(stats.t.cdf(t_high, df))
    else:  # identical differences: the test is decided by where they lie
        t_low, t_high = math.copysign(math.inf, mean - low), math.copysign(math.inf, mean - high)
        p_low, p_high = float(mean <= low), float(mean >= high)
    half = stats.t.ppf(1 - alpha, df) * se
    p = max(p_low, p_high)
    return {**out, "t_low": float(t_low), "t_high": float(t_high), "p_low": p_low, "p_high": p_high, "pvalue": p,
            "ci_low": mean - half, "ci_high": mean + half, "equivalent": bool(p < alpha)}


def equivalence_test(
    differences: Sequence[float] | np.ndarray,
    margin: float | Sequence[float],
    alpha: float = 0.05,
) -> dict:
    """Two one-sided t tests (TOST; Schuirmann 1987) that the mean paired difference lies inside a margin.

    ``margin`` is fixed in advance, in the units of the differences: a positive ``m`` for the interval ``(-m, m)``, or
    ``(low, high)``. The null hypothesis is that the true mean lies outside: ``mean <= low`` (tested against
    ``mean > low``, p-value ``p_low``) or ``mean >= high`` (against ``mean < high``, ``p_high``); equivalence is
    declared when both are rejected at level ``alpha``, i.e. ``pvalue = max(p_low, p_high) < alpha``, i.e. when the
    (1 - 2 alpha) t interval ``ci_low``/``ci_high`` lies inside the margin. Few or noisy differences cannot show
    equivalence: absence of evidence of a difference is not evidence of its absence.

    Returns ``n``, ``mean``, ``sd``, ``low``, ``high``, ``t_low``, ``t_high``, ``p_low``, ``p_high``, ``pvalue``,
    ``ci_low``, ``ci_high``, ``equivalent`` (bool) and ``alpha`` (NaN p-values and ``equivalent`` False with fewer
    than 2 differences).
    """
    d = np.asarray(differences, dtype=float).ravel()
    if np.isnan(d).any():
        raise ValueError("equivalence_test: differences contain NaN")
    if not 0 < alpha < 0.5:
        raise ValueError(f"equivalence_test: alpha must lie in (0, 0.5), got {alpha}")
    low, high = _margin_bounds(margin)
    if d.size < 2:
        return _tost(float(d.mean()) if d.size else float("nan"), float("nan"), d.size, low, high, alpha)
    return _tost(float(d.mean()), float(d.std(ddof=1)), d.size, low, high, alpha)


def minimum_detectable_effect(
    differences: Sequence[float] | np.ndarray | None = None,
    *,
    sd: float | None = None,
    n: int | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: Literal["two-sided", "one-sided"] = "two-sided",
) -> float:
    """The smallest true mean difference the paired t test detects with probability ``power`` at level ``alpha``.

    From ``n`` paired differences of standard deviation ``sd`` (given, or those of ``differences``): the mean ``delta``
    at which the t statistic, noncentral t with ``n - 1`` degrees of freedom and noncentrality ``delta sqrt(n) / sd``,
    exceeds the critical value (``t_{n-1, 1 - alpha/2}`` two-sided, in either direction; ``t_{n-1, 1 - alpha}``
    one-sided) with probability ``power``; solved exactly with :func:`scipy.stats.nct`. Close to the normal-theory
    ``(t_{n-1, 1-alpha/2} + t_{n-1, power}) sd / sqrt(n)``. A comparison whose interval contains 0 says nothing about
    effects smaller than this. 0 when ``sd`` is 0.
    """
    if differences is not None:
        if sd is not None or n is not None:
            raise ValueError("minimum_detectable_effect: give either differences or (sd, n), not both")
        d = np.asarray(differences, dtype=float).ravel()
        if np.isnan(d).any():
            raise ValueError("minimum_detectable_effect: differences contain NaN")
        n, sd = d.size, float(d.std(ddof=1)) if d.size > 1 else float("nan")
    elif sd is None or n is None:
        raise ValueError("minimum_detectable_effect: give differences, or both sd and n")
    check_choice("alternative", alternative, ALTERNATIVES)
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"minimum_detectable_effect: needs n >= 2 differences, got {n!r}")
    if not (np.isfinite(sd) and sd >= 0):
        raise ValueError(f"minimum_detectable_effect: sd must be finite and >= 0, got {sd!r}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    n, df = int(n), int(n) - 1
    if sd == 0:
        return 0.0
    two_sided = alternative == "two-sided"
    crit = stats.t.ppf(1 - alpha / 2 if two_sided else 1 - alpha, df)

    def detect(nc: float) -> float:
        p = stats.nct.sf(crit, df, nc)
        return p + stats.nct.cdf(-crit, df, nc) if two_sided else p

    if detect(0.0) >= power:
        return 0.0
    hi = crit + stats.t.ppf(power, df) + 1.0
    while detect(hi) < power:
        hi *= 2
    nc = optimize.brentq(lambda v: detect(v) - power, 0.0, hi, xtol=1e-12)
    return float(nc * sd / math.sqrt(n))


def _claim_interval(comparison: Mapping, basis: str) -> tuple[float, float, float]:
    if basis == "t":
        return comparison.get("ci_low", np.nan), comparison.get("ci_high", np.nan), 0.0
    return comparison.get("share_ci_low", np.nan), comparison.get("share_ci_high", np.nan), 0.5


def _sd_of(comparison: Mapping) -> float:
    """The sd of the differences: ``sd_diff``, or recovered from the t interval of :func:`paired_comparison`."""
    if np.isfinite(comparison.get("sd_diff", np.nan)):
        return float(comparison["sd_diff"])
    n, alpha = comparison.get("n", 0), comparison.get("alpha", 0.05)
    low, high = comparison.get("ci_low", np.nan), comparison.get("ci_high", np.nan)
    if n < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return float("nan")
    return float((high - low) / 2 * math.sqrt(n) / stats.t.ppf(1 - alpha / 2, n - 1))


def benefit_bound(comparison: Mapping, lower_is_better: bool = True) -> float:
    """The largest benefit of ``a`` over ``b`` that a comparison does not exclude, in the metric's units.

    The one-sided (1 - alpha) Student-t bound of the mean difference ``a - b`` on the better side (the upper bound of
    ``b - a`` when lower is better), signed so that a positive value is a benefit: the data exclude, at level alpha,
    every benefit larger than it, and a margin larger than it is what the one-sided test of :func:`claim_verdict`
    (``margin_test="benefit"``) needs. Negative when even a zero benefit is excluded; NaN with fewer than 2 pairs.
    """
    n, alpha = int(comparison.get("n", 0)), comparison.get("alpha", 0.05)
    sd, mean = _sd_of(comparison), float(comparison.get("mean_diff", np.nan))
    if n < 2 or not (np.isfinite(sd) and np.isfinite(mean)):
        return float("nan")
    half = stats.t.ppf(1 - alpha, n - 1) * sd / math.sqrt(n)
    return float(-(mean - half)) if lower_is_better else float(mean + half)


def _margin_decision(comparison: Mapping, bounds: tuple[float, float], margin_test: str, lower_is_better: bool,
                     margin_pvalue: float | None) -> str | None:
    """The label a margin gives to a comparison whose interval contains the null, or None."""
    alpha = comparison.get("alpha", 0.05)
    tost = _tost(float(comparison["mean_diff"]), _sd_of(comparison), int(comparison["n"]), *bounds, alpha)
    if margin_test == "equivalence":
        p, label = tost["pvalue"], "equivalent (no effect larger than margin)"
    else:  # the one-sided test against a benefit of at least the margin
        p, label = (tost["p_low"] if lower_is_better else tost["p_high"]), "no benefit larger than margin"
    if not (np.isfinite(p) and p < alpha):
        return None
    if margin_pvalue is not None and not margin_pvalue < alpha:
        return f"{label} before correction only" if margin_test == "benefit" else None
    return label


def claim_verdict(
    comparison: Mapping | None,
    *,
    lower_is_better: bool = True,
    basis: Literal["t", "sign"] = "t",
    margin: float | Sequence[float] | None = None,
    holm_pvalue: float | None = None,
    margin_test: Literal["equivalence", "benefit"] = "equivalence",
    margin_pvalue: float | None = None,
) -> str:
    """The verdict on a claim "``a`` is better than ``b``" from its primary comparison (one of :data:`CLAIM_VERDICTS`).

    ``comparison`` is a :func:`compare_arms` result (or a :func:`paired_comparison` one, for ``basis="t"``) at its
    level ``alpha``. The rule:

    1. ``basis="t"``: the (1 - alpha) Student-t interval of the mean difference ``a - b``; ``basis="sign"``: the exact
       interval of the share of pairs in which ``a`` is lower, against 1/2 (for pooled units on different scales).
       An interval wholly on the better side (below 0, or a share above 1/2, when ``lower_is_better``) gives
       ``"holds"``; wholly on the worse side, ``"does not hold"``;
    2. for a claim in a family, ``holm_pvalue`` is its Holm-adjusted p-value (:func:`claim_verdicts` computes it): a
       direction that does not survive (adjusted p >= alpha) reads ``"holds before correction only"`` or
       ``"does not hold before correction only"``;
    3. an interval that contains the null, with a ``margin`` (fixed in advance, in the metric's units; ``basis="t"``
       only), is tested against it with the TOST of :func:`equivalence_test` on the same differences:
       ``margin_test="equivalence"`` reads ``"equivalent (no effect larger than margin)"`` when both one-sided nulls
       are rejected at level alpha; ``margin_test="benefit"`` reads ``"no benefit larger than margin"`` when the
       one-sided null facing the claimed direction (a benefit of at least the margin) is rejected, which is what a
       claim that ``a`` *helps* needs refuted. ``margin_pvalue``, the deciding test's p-value adjusted for the family
       (see :mod:`qdiff_lib.claims`), must then be below alpha too; a benefit excluded only before the correction
       reads ``"no benefit larger than margin before correction only"``. Otherwise ``"inconclusive"``;
    4. no comparison, fewer than 2 pairs or an undefined interval: ``"inconclusive"``.
    """
    check_choice("basis", basis, CLAIM_BASES)
    check_choice("margin_test", margin_test, MARGIN_TESTS)
    if margin is not None and basis != "t":
        raise ValueError("claim_verdict: a margin is in the metric's units and needs basis='t'")
    bounds = _margin_bounds(margin) if margin is not None else None
    if comparison is None or not comparison.get("n", 0) >= 2:
        return "inconclusive"
    alpha = comparison.get("alpha", 0.05)
    low, high, null = _claim_interval(comparison, basis)
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if basis == "sign":  # the share of pairs in which a is lower: above 1/2 favours a when lower is better
        better, worse = (low > null, high < null) if lower_is_better else (high < null, low > null)
    else:
        better, worse = (high < null, low > null) if lower_is_better else (low > null, high < null)
    if better or worse:
        label = "holds" if better else "does not hold"
        if holm_pvalue is not None and not holm_pvalue < alpha:
            return f"{label} before correction only"
        return label
    if bounds is not None:
        return _margin_decision(comparison, bounds, margin_test, lower_is_better, margin_pvalue) or "inconclusive"
    return "inconclusive"


def _for_claim(value, claim: str):
    return value.get(claim) if isinstance(value, Mapping) else value


def claim_verdicts(
    comparisons: Mapping[str, Mapping | None],
    *,
    lower_is_better: bool | Mapping[str, bool] = True,
    basis: str | Mapping[str, str] = "t",
    margin: float | Sequence[float] | Mapping[str, float | Sequence[float] | None] | None = None,
    power: float = 0.8,
) -> pd.DataFrame:
    """One verdict per claim for a family of claims, with Holm's correction over the family.

    ``comparisons`` maps each claim to its primary comparison (:func:`compare_arms`; ``None`` when there is none).
    ``lower_is_better``, ``basis`` and ``margin`` are one value for every claim or a mapping claim -> value (a claim
    missing from a mapping gets ``True``, ``"t"`` and no margin). The primary p-value is ``t_pvalue`` (basis t) or
    ``sign_pvalue`` (basis sign); Holm's adjustment (:func:`holm_adjust`) runs over the claims that have one, and
    :func:`claim_verdict` decides each claim with its adjusted p-value.

    Returns a DataFrame indexed by claim with ``n``, ``mean_diff``, ``ci_low``, ``ci_high``, ``basis``, ``p``,
    ``p_holm``, ``mde`` (:func:`minimum_detectable_effect` at the comparison's alpha and ``power``, basis t; the
    effect these data could have detected), ``tost_p`` (with a margin) and ``verdict``.
    """
    claims = list(comparisons)
    rows, pvalues = [], []
    for claim in claims:
        c = comparisons[claim]
        b = _for_claim(basis, claim) or "t"
        try:
            check_choice("basis", b, CLAIM_BASES)
        except ValueError as error:
            raise ValueError(f"claim {claim!r}: {error}") from None
        have = c is not None and c.get("n", 0) >= 2
        p = c.get("t_pvalue" if b == "t" else "sign_pvalue", np.nan) if have else np.nan
        pvalues.append(float(p) if p is not None else np.nan)
        m = _for_claim(margin, claim)
        row = {"claim": claim, "n": int(c.get("n", 0)) if c is not None else 0, "basis": b, "p": pvalues[-1]}
        for k in ("mean_diff", "ci_low", "ci_high"):
            row[k] = float(c.get(k, np.nan)) if have else np.nan
        sd = _sd_of(c) if have and b == "t" else np.nan
        row["mde"] = (minimum_detectable_effect(sd=sd, n=row["n"], alpha=c.get("alpha", 0.05), power=power)
                      if np.isfinite(sd) else np.nan)
        row["tost_p"] = (_tost(row["mean_diff"], sd, row["n"], *_margin_bounds(m), c.get("alpha", 0.05))["pvalue"]
                         if m is not None and have and b == "t" else np.nan)
        rows.append(row)
    holm = holm_adjust(pvalues) if claims else np.array([])
    for row, claim, ph in zip(rows, claims, holm, strict=True):
        row["p_holm"] = float(ph)
        lib = _for_claim(lower_is_better, claim)
        row["verdict"] = claim_verdict(
            comparisons[claim], lower_is_better=True if lib is None else bool(lib), basis=row["basis"],
            margin=_for_claim(margin, claim), holm_pvalue=None if np.isnan(ph) else float(ph),
        )
    columns = ["n", "mean_diff", "ci_low", "ci_high", "basis", "p", "p_holm", "mde", "tost_p", "verdict"]
    return pd.DataFrame(rows, columns=["claim", *columns]).set_index("claim")


def tally(verdicts: Iterable[str] | Mapping[str, str] | pd.DataFrame, labels: Sequence[str] = CLAIM_VERDICTS) -> dict:
    """How many claims got each verdict: ``{label: count}`` for every label of ``labels``, in their order (zeros kept).

    ``verdicts``: verdict strings, a mapping claim -> verdict, or a DataFrame with a ``verdict`` column (as
    :func:`claim_verdicts` returns). A verdict not in ``labels`` is an error.
    """
    if isinstance(verdicts, pd.DataFrame):
        if "verdict" not in verdicts.columns:
            raise ValueError(f"tally: the DataFrame has no 'verdict' column; columns: {list(verdicts.columns)}")
        values = list(verdicts["verdict"])
    elif isinstance(verdicts, Mapping):
        values = list(verdicts.values())
    elif isinstance(verdicts, str):
        raise ValueError("tally: expected several verdicts, got one string")
    else:
        values = list(verdicts)
    unknown = sorted({v for v in values if v not in labels})
    if unknown:
        raise ValueError(f"tally: unknown verdict(s) {unknown}; allowed: {list(labels)}")
    return {label: sum(v == label for v in values) for label in labels}
