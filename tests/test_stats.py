"""Tests of qdiff_lib.stats against analytic results and scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from qdiff_lib.stats import (
    VERDICTS,
    bootstrap_ci,
    format_interval,
    holm_adjust,
    paired_by,
    paired_comparison,
    sign_comparison,
    table_with_intervals,
    verdict,
)


def test_bootstrap_ci_matches_normal_theory_for_large_samples():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    ci = bootstrap_ci(x, n_boot=4000, seed=0)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    assert ci["mean"] == pytest.approx(x.mean())
    assert ci["ci_low"] == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert ci["ci_high"] == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert ci["n"] == 400


def test_bootstrap_ci_is_seeded_and_seed_matters():
    x = [0.3, 0.1, 0.7, 0.2, 0.5]
    assert bootstrap_ci(x, n_boot=500, seed=3) == bootstrap_ci(x, n_boot=500, seed=3)
    assert bootstrap_ci(x, n_boot=500, seed=3) != bootstrap_ci(x, n_boot=500, seed=4)


def test_bootstrap_ci_constant_and_median_and_errors():
    assert bootstrap_ci([2.0, 2.0, 2.0]) == {"mean": 2.0, "ci_low": 2.0, "ci_high": 2.0, "n": 3}
    med = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 100.0], statistic=np.median, n_boot=500)
    assert med["mean"] == 3.0 and med["ci_low"] <= 3.0 <= med["ci_high"]
    with pytest.raises(ValueError, match=r"unknown method 'foo'; allowed: \['percentile', 'basic', 'bca'\]"):
        bootstrap_ci([1.0, 2.0], method="foo")
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_paired_comparison_against_hand_computation_and_scipy():
    a = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    b = np.array([0.5, 1.0, 2.5, 3.0, 4.0])
    d = a - b  # 0.5, 1, 0.5, 1, 2
    r = paired_comparison(a, b, n_boot=500)
    sd = d.std(ddof=1)
    assert r["mean_diff"] == pytest.approx(1.0)
    assert r["cohens_dz"] == pytest.approx(1.0 / sd)
    assert r["t_stat"] == pytest.approx(1.0 / (sd / math.sqrt(5)))
    assert r["t_pvalue"] == pytest.approx(2 * sps.t.sf(r["t_stat"], 4))
    half = sps.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((1.0 - half, 1.0 + half))
    # All five differences positive: the exact two-sided Wilcoxon p-value is its minimum, 2/2^5.
    assert r["wilcoxon_pvalue"] == pytest.approx(0.0625)
    assert r["wilcoxon_min_pvalue"] == pytest.approx(0.0625)
    assert r["n_a_greater"] == 5
    assert r["boot_low"] <= 1.0 <= r["boot_high"]


def test_paired_comparison_degenerate_and_errors():
    r = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_boot=200)
    assert r["mean_diff"] == 0.0 and math.isnan(r["cohens_dz"]) and math.isnan(r["wilcoxon_pvalue"])
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1.0, 2.0], [1.0, 2.0, 3.0])


def test_format_interval():
    assert format_interval(0.123456, 0.1, 0.15, digits=3) == "0.123 [0.1, 0.15]"
    assert format_interval(1.0, float("nan"), float("nan")) == "1 [nan, nan]"


def test_table_with_intervals_groups_by_configuration():
    rows = [{"arm": arm, "seed": s, "kid": base + 0.01 * s}
            for arm, base in [("quantum", 1.0), ("se", 2.0)] for s in range(5)]
    table = table_with_intervals(rows, by="arm", n_boot=500)
    assert list(table.index) == ["quantum", "se"]
    assert list(table.columns) == ["kid", "n"]
    assert table.loc["quantum", "n"] == 5
    ci = bootstrap_ci([1.0 + 0.01 * s for s in range(5)], n_boot=500)
    assert table.loc["quantum", "kid"] == format_interval(ci["mean"], ci["ci_low"], ci["ci_high"])
    assert isinstance(table_with_intervals(pd.DataFrame(rows), by=["arm"], n_boot=200, as_string=True), str)
    with pytest.raises(ValueError, match="unknown metric column"):
        table_with_intervals(rows, by="arm", metrics=["fid"])


def _runs():
    """One row per run: arm x digit x seed, with an arm 'x' missing digit 2 and a run lacking its partner."""
    rows = []
    for digit in (0, 1, 2):
        for seed in (0, 1, 2):
            rows.append({"arm": "se", "digit": digit, "seed": seed, "kid": 10.0 * digit + seed})
            if digit != 2:
                rows.append({"arm": "q", "digit": digit, "seed": seed, "kid": 10.0 * digit + seed - 1 - 0.5 * seed})
    rows.append({"arm": "none", "digit": 0, "seed": 0, "kid": 99.0})
    return pd.DataFrame(rows)


def test_paired_by_matches_explicit_pairing():
    frame = _runs()
    c, pairs = paired_by(frame, "arm", "q", "se", ["digit", "seed"], "kid")
    # Digit 2 has no 'q' run: 6 pairs from digits 0 and 1, in key order.
    assert list(pairs.index) == [(d, s) for d in (0, 1) for s in (0, 1, 2)]
    assert list(pairs.columns) == ["q", "se"]
    q = [10.0 * d + s - 1 - 0.5 * s for d in (0, 1) for s in (0, 1, 2)]
    se = [10.0 * d + s for d in (0, 1) for s in (0, 1, 2)]
    expected = paired_comparison(q, se)
    assert c == pytest.approx(expected, nan_ok=True)
    assert c["mean_diff"] == pytest.approx(-1.5)
    # Swapping the levels negates the difference.
    c2, _ = paired_by(frame, "arm", "se", "q", ("digit", "seed"), "kid")
    assert c2["mean_diff"] == pytest.approx(1.5)


def test_paired_by_too_few_pairs_and_bad_input():
    frame = _runs()
    c, pairs = paired_by(frame, "arm", "none", "se", ["digit", "seed"], "kid")
    assert c is None and len(pairs) == 1  # one pair only: no comparison, the pair still returned
    c, pairs = paired_by(frame, "arm", "absent", "se", ["digit", "seed"], "kid")
    assert c is None and len(pairs) == 0
    with pytest.raises(ValueError, match="unknown column.*'fid'"):
        paired_by(frame, "arm", "q", "se", ["digit", "seed"], "fid")
    # Pairing on the digit alone leaves three runs per (digit, arm): refused rather than averaged.
    with pytest.raises(ValueError, match="do not identify one run"):
        paired_by(frame, "arm", "q", "se", "digit", "kid")


def test_paired_by_refuses_pairs_scored_by_different_classifiers():
    """A run scored in one classifier's features and a run scored in another's are not paired: their KIDs are on
    different scales (the medmnist study's default classifier against medmnist16's adopted recipe)."""
    frame = _runs().assign(classifier_augment="none")
    c, _ = paired_by(frame, "arm", "q", "se", ["digit", "seed"], "kid")
    assert c["n"] == 6  # one recipe throughout: paired as before
    mixed = frame.copy()
    mixed.loc[(mixed["arm"] == "q") & (mixed["digit"] == 1), "classifier_augment"] = "flips"
    with pytest.raises(ValueError, match=r"3 pair\(s\) of 'q' and 'se' differ in 'classifier_augment'.*'flips' "
                                         r"against 'none'"):
        paired_by(mixed, "arm", "q", "se", ["digit", "seed"], "kid")
    c, _ = paired_by(mixed[mixed["digit"] == 0], "arm", "q", "se", ["digit", "seed"], "kid")  # one value selected
    assert c["n"] == 3
    frame["classifier_augment"] = None  # unknown on both sides (results written before the option): not a mismatch
    assert paired_by(frame, "arm", "q", "se", ["digit", "seed"], "kid")[0]["n"] == 6


def test_verdict_rule():
    def c(low, high):
        return {"ci_low": low, "ci_high": high}

    assert verdict(c(-3.0, -1.0)) == "holds"
    assert verdict(c(1.0, 3.0)) == "does not hold"
    assert verdict(c(-1.0, 1.0)) == "inconclusive at this power"
    assert verdict(c(1.0, 3.0), lower_is_better=False) == "holds"
    assert verdict(c(-3.0, -1.0), lower_is_better=False) == "does not hold"
    assert verdict(None) == verdict(c(float("nan"), float("nan"))) == VERDICTS[2]
    # From real comparisons: a clear improvement and no difference at all.
    assert verdict(paired_comparison([1.0, 2.0, 3.0], [2.0, 3.1, 3.9])) == "holds"
    assert verdict(paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])) == VERDICTS[2]


def test_holm_adjust_matches_its_definition_and_controls_the_familywise_error():
    # worked example: sorted p = 0.01, 0.02, 0.03, 0.04 with m = 4 -> 0.04, 0.06, 0.06, 0.06 (running maximum)
    np.testing.assert_allclose(holm_adjust([0.03, 0.01, 0.04, 0.02]), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm_adjust([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    got = holm_adjust([0.2, float("nan"), 0.01])  # NaN: no test, not counted in m = 2
    assert np.isnan(got[1]) and np.allclose(got[[0, 2]], [0.2, 0.02])
    # brute force: Holm rejects H_(i) iff p_(j) <= alpha / (m - j + 1) for every j <= i
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, size=rng.integers(1, 8))
        order = np.argsort(p)
        m, step_down, still = len(p), np.zeros(len(p), bool), True
        for j, k in enumerate(order):
            still = still and p[k] <= 0.05 / (m - j)
            step_down[k] = still
        np.testing.assert_array_equal(holm_adjust(p) <= 0.05, step_down)
    # family-wise error under the global null: independent uniform p-values, m = 10
    p = rng.uniform(size=(4000, 10))
    any_rejected = np.array([(holm_adjust(row) < 0.05).any() for row in p])
    assert any_rejected.mean() < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 4000)  # uncorrected: 1 - 0.95**10 = 40%
    assert (p < 0.05).any(axis=1).mean() > 0.35
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.5, 1.5])


def test_sign_comparison_against_the_binomial_distribution():
    # all 15 pairs favour a: Clopper-Pearson lower bound solves P(X >= 15 | p) = 0.025, i.e. p^15 = 0.025
    c = sign_comparison(np.arange(15.0), np.arange(15.0) + 1)
    assert (c["n"], c["n_a_lower"], c["share_a_lower"]) == (15, 15, 1.0)
    assert c["ci_low"] == pytest.approx(0.025 ** (1 / 15)) and c["ci_high"] == 1.0
    assert c["pvalue"] == pytest.approx(2 * 0.5**15)
    assert verdict(c, lower_is_better=False, null=0.5) == "holds"
    # 0 of 15: the mirror image, and the verdict flips
    c = sign_comparison(np.ones(15), np.zeros(15))
    assert c["n_a_lower"] == 0 and c["ci_high"] == pytest.approx(1 - 0.025 ** (1 / 15)) and c["ci_low"] == 0.0
    assert verdict(c, lower_is_better=False, null=0.5) == "does not hold"
    # 1 of 15: two-sided p = 2 P(X <= 1) = 2 * 16 / 2^15
    c = sign_comparison(np.r_[0.0, np.ones(14)], np.r_[1.0, np.zeros(14)])
    assert c["n_a_lower"] == 1 and c["pvalue"] == pytest.approx(2 * 16 * 0.5**15)
    assert sps.binom.cdf(1, 15, c["ci_high"]) == pytest.approx(0.025)
    # scale-free: multiplying one pair by 1e6 changes nothing, a negative value is fine; ties are dropped
    a, b = np.array([1.0, -2.0, 3e6, 5.0, 7.0]), np.array([2.0, -1.0, 4e6, 4.0, 7.0])
    c = sign_comparison(a, b)
    assert (c["n"], c["n_ties"], c["n_a_lower"]) == (4, 1, 3)
    # the interval is exact: the bounds are where the binomial tail probabilities equal alpha / 2
    assert sps.binom.sf(2, 4, c["ci_low"]) == pytest.approx(0.025)  # P(X >= 3 | low)
    assert sps.binom.cdf(3, 4, c["ci_high"]) == pytest.approx(0.025)  # P(X <= 3 | high)
    assert verdict(c, lower_is_better=False, null=0.5) == "inconclusive at this power"
    assert math.isnan(sign_comparison([1.0], [1.0])["share_a_lower"])
    with pytest.raises(ValueError, match="one length"):
        sign_comparison([1.0, 2.0], [1.0])


def test_verdict_with_a_null_other_than_zero():
    assert verdict({"ci_low": 0.6, "ci_high": 0.9}, lower_is_better=False, null=0.5) == "holds"
    assert verdict({"ci_low": 0.1, "ci_high": 0.4}, lower_is_better=False, null=0.5) == "does not hold"
    assert verdict({"ci_low": 0.1, "ci_high": 0.9}, lower_is_better=False, null=0.5) == VERDICTS[2]
    assert verdict({"ci_low": 0.6, "ci_high": 0.9}) == "does not hold"  # null 0, lower better: above 0 is worse


# ------------------------------------------------------------------------------------------------------------------
