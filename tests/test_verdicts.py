"""qdiff_lib.verdicts: comparisons of arms, equivalence, power and claim verdicts on constructed data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_stats import _runs  # tests/ is on sys.path (pytest)

from qdiff_lib.claims import (
    CLAIMS,
    NOISE_MARGIN_KID,
    QUANTUM_INGREDIENT_CONTROLS,
    Comparison,
    component_table,
    evaluate_claims,
)
from qdiff_lib.paired_tables import DIRECTIONS, comparison_table, comparisons_by_level, direction
from qdiff_lib.stats import VERDICTS, holm_adjust, paired_comparison, sign_comparison, verdict
from qdiff_lib.verdicts import (
    CLAIM_VERDICTS,
    PENDING,
    benefit_bound,
    claim_verdict,
    claim_verdicts,
    compare_arms,
    compare_group_means,
    equivalence_test,
    minimum_detectable_effect,
    tally,
)

# compare_arms, equivalence, power and claim verdicts, on constructed data whose answer is known
# ------------------------------------------------------------------------------------------------------------------


def _standardised(n: int, seed: int = 0) -> np.ndarray:
    """``n`` fixed values with mean exactly 0 and sample sd exactly 1."""
    z = np.random.default_rng(seed).normal(size=n)
    return (z - z.mean()) / z.std(ddof=1)


def _with_pvalue(p: float, n: int = 8, sign: float = -1.0, seed: int = 0) -> np.ndarray:
    """Differences (sd 1) whose paired two-sided t test has p-value exactly ``p``, with the sign of ``sign``."""
    return sign * sps.t.isf(p / 2, n - 1) / math.sqrt(n) + _standardised(n, seed)


def _results(differences, a: str = "q", b: str = "se") -> pd.DataFrame:
    """A long-format results table: difference i is run (label i // 3, seed i % 3) of ``a`` minus that of ``b``."""
    rows = []
    for i, d in enumerate(np.asarray(differences, dtype=float)):
        base = 5.0 + 0.5 * i
        for arm, value in ((b, base), (a, base + d)):
            rows.append({"dataset": "mnist", "label": i // 3, "seed": i % 3, "arm": arm, "n_train": 64, "kid": value})
    return pd.DataFrame(rows)


def test_compare_arms_matches_its_parts():
    frame = _runs()  # arm 'q' lacks digit 2; one 'none' run has no partner
    c = compare_arms(frame, "q", "se", "kid", pair_on=("digit", "seed"), n_boot=500)
    q = np.array([10.0 * d + s - 1 - 0.5 * s for d in (0, 1) for s in (0, 1, 2)])
    se = np.array([10.0 * d + s for d in (0, 1) for s in (0, 1, 2)])
    ref, sign = paired_comparison(q, se, n_boot=500), sign_comparison(q, se)
    assert c["n"] == c["n_runs"] == 6 and c["units"] == ["digit", "seed"]
    assert c["pair_keys"] == [(d, s) for d in (0, 1) for s in (0, 1, 2)]
    for key in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "t_pvalue", "wilcoxon_pvalue", "cohens_dz"):
        assert c[key] == pytest.approx(ref[key]), key
    assert c["sd_diff"] == pytest.approx((q - se).std(ddof=1))
    assert (c["n_a_lower"], c["share_a_lower"], c["sign_pvalue"]) == (sign["n_a_lower"], sign["share_a_lower"],
                                                                      pytest.approx(sign["pvalue"]))
    assert (c["share_ci_low"], c["share_ci_high"]) == pytest.approx((sign["ci_low"], sign["ci_high"]))
    # digit 0, seed 0 has q = -1 < 0: no ratio
    assert math.isnan(c["ratio"]) and math.isnan(c["ratio_low"])
    # positive values: the ratio is the geometric mean of a / b with the t interval of the mean log ratio
    frame = _results([-1.0, -0.5, -2.0, 0.3, -1.2])
    c = compare_arms(frame, "q", "se", n_boot=200)
    a, b = (frame[frame.arm == arm].sort_values(["label", "seed"])["kid"].to_numpy() for arm in ("q", "se"))
    log = np.log(a) - np.log(b)
    half = sps.t.ppf(0.975, 4) * log.std(ddof=1) / math.sqrt(5)
    assert c["ratio"] == pytest.approx(np.exp(log.mean()))
    assert (c["ratio_low"], c["ratio_high"]) == pytest.approx((np.exp(log.mean() - half), np.exp(log.mean() + half)))
    assert c["ci_low"] < 0 < c["ci_high"]  # five noisy pairs: the old rule and the new read the same interval
    assert verdict(c) == VERDICTS[2] and claim_verdict(c) == "inconclusive"


def test_compare_group_means_averages_seeds_within_each_group():
    rows = []
    for label in range(4):
        for seed in range(3):
            rows.append({"label": label, "seed": seed, "arm": "se", "kid": 1.0 + label + 0.1 * seed})
            rows.append({"label": label, "seed": seed, "arm": "q", "kid": 1.0 + label + 0.1 * seed - 0.2 * (label + 1)
                         + 0.05 * seed * (-1) ** label})
    rows.append({"label": 0, "seed": 9, "arm": "q", "kid": 100.0})  # no partner: left out of digit 0's mean
    frame = pd.DataFrame(rows)
    c = compare_group_means(frame, "q", "se", "kid", group="label", n_boot=200)
    by = frame[frame.seed < 9].groupby(["arm", "label"])["kid"].mean()
    ref = paired_comparison(by["q"].to_numpy(), by["se"].to_numpy(), n_boot=200)
    assert (c["n"], c["n_runs"], c["units"], c["pair_keys"]) == (4, 12, ["label"], [(0,), (1,), (2,), (3,)])
    assert c["mean_diff"] == pytest.approx(ref["mean_diff"]) and c["ci_low"] == pytest.approx(ref["ci_low"])
    assert c["mean_diff"] == pytest.approx(-0.2 * np.mean([1, 2, 3, 4]))
    assert compare_arms(frame, "q", "se", average_over="seed", n_boot=200)["ci_high"] == pytest.approx(ref["ci_high"])
    with pytest.raises(ValueError, match=r"average_over column\(s\) \['n_train'\] are not pairing keys"):
        compare_arms(frame, "q", "se", average_over="n_train")
    with pytest.raises(ValueError, match="leaves no key to pair on"):
        compare_arms(frame, "q", "se", average_over=("label", "seed"))
    with pytest.raises(ValueError, match=r"group \['dataset'\] must be pairing keys"):
        compare_group_means(frame, "q", "se", group="dataset")


def test_compare_arms_without_pairs_is_inconclusive():
    frame = _results([-1.0, -2.0, -1.5])
    c = compare_arms(frame, "absent", "se")
    assert c["n"] == 0 and c["pair_keys"] == [] and math.isnan(c["mean_diff"]) and math.isnan(c["t_pvalue"])
    assert claim_verdict(c) == "inconclusive" and claim_verdict(None) == "inconclusive"
    one = compare_arms(frame[frame.label == 0].head(2), "q", "se")  # one pair: no interval
    assert one["n"] == 1 and claim_verdict(one, margin=10.0) == "inconclusive"
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['fid'\]"):
        compare_arms(frame, "q", "se", metric="fid")


def test_claim_verdicts_on_known_answers():
    z = _standardised(10)
    clear = compare_arms(_results(-1.0 + 0.1 * z), "q", "se")
    assert claim_verdict(clear) == "holds"
    assert claim_verdict(clear, lower_is_better=False) == "does not hold"
    assert claim_verdict(compare_arms(_results(1.0 + 0.1 * z), "q", "se")) == "does not hold"
    # three noisy pairs: the interval spans both signs, and TOST cannot show equivalence either
    noisy = compare_arms(_results([-2.0, 1.5, -0.4]), "q", "se")
    assert noisy["ci_low"] < 0 < noisy["ci_high"]
    assert claim_verdict(noisy) == claim_verdict(noisy, margin=0.5) == "inconclusive"
    # tight differences around 0: equivalent within a margin of 0.1, inconclusive without a margin
    tight = compare_arms(_results(0.01 * z), "q", "se")
    assert claim_verdict(tight) == "inconclusive"
    assert claim_verdict(tight, margin=0.1) == "equivalent (no effect larger than margin)"
    assert claim_verdict(tight, margin=(-0.1, 0.001)) == "inconclusive"  # the upper bound is too tight
    # a paired_comparison result works too (the sd is recovered from its interval)
    assert claim_verdict(paired_comparison(0.01 * z, np.zeros(10), n_boot=200), margin=0.1) == CLAIM_VERDICTS[2]
    # basis "sign": all 12 pairs favour q although the raw differences span orders of magnitude
    spread = compare_arms(_results(-np.logspace(-3, 2, 12)), "q", "se")
    assert spread["share_a_lower"] == 1.0
    assert claim_verdict(spread, basis="sign") == "holds"
    assert claim_verdict(spread, basis="sign", lower_is_better=False) == "does not hold"
    with pytest.raises(ValueError, match="needs basis='t'"):
        claim_verdict(spread, basis="sign", margin=0.1)
    with pytest.raises(ValueError, match=r"unknown basis 'median'; allowed: \['t', 'sign'\]"):
        claim_verdict(spread, basis="median")


def test_holm_moves_borderline_claims_to_the_corrected_labels():
    comparisons = {
        "borderline better": compare_arms(_with_pvalue_frame(0.03, sign=-1.0), "q", "se"),
        "clear": compare_arms(_with_pvalue_frame(0.001, sign=-1.0, seed=1), "q", "se"),
        "borderline worse": compare_arms(_with_pvalue_frame(0.04, sign=1.0, seed=2), "q", "se"),
        "null": compare_arms(_with_pvalue_frame(0.5, sign=1.0, seed=3), "q", "se"),
        "no data": None,
    }
    np.testing.assert_allclose([comparisons[k]["t_pvalue"] for k in list(comparisons)[:4]], [0.03, 0.001, 0.04, 0.5])
    # alone, each borderline claim is decided
    assert claim_verdict(comparisons["borderline better"]) == "holds"
    assert claim_verdict(comparisons["borderline worse"]) == "does not hold"
    table = claim_verdicts(comparisons)
    # Holm over the four tested claims: 0.001 * 4, then max(0.03 * 3, 0.04 * 2) = 0.09 for both borderline claims
    np.testing.assert_allclose(table["p_holm"].iloc[:4], [0.09, 0.004, 0.09, 0.5])
    np.testing.assert_allclose(table["p_holm"].iloc[:4], holm_adjust(table["p"].iloc[:4]))
    assert table["verdict"].to_dict() == {
        "borderline better": "holds before correction only",
        "clear": "holds",
        "borderline worse": "does not hold before correction only",
        "null": "inconclusive",
        "no data": "inconclusive",
    }
    assert math.isnan(table.loc["no data", "p_holm"]) and table.loc["no data", "n"] == 0
    mde = table.loc["null", "mde"]
    assert mde == pytest.approx(minimum_detectable_effect(sd=1.0, n=8))
    assert tally(table) == {"holds": 1, "does not hold": 0, "equivalent (no effect larger than margin)": 0,
                            "inconclusive": 2, "holds before correction only": 1,
                            "does not hold before correction only": 1,
                            "no benefit larger than margin": 0,
                            "no benefit larger than margin before correction only": 0,
                            "not yet tested — runs pending": 0}
    # per-claim settings: a margin for one claim, the sign basis for another
    table = claim_verdicts(comparisons, margin={"null": 5.0}, basis={"clear": "sign"})
    assert table.loc["null", "verdict"] == "equivalent (no effect larger than margin)"
    assert table.loc["null", "tost_p"] < 0.05 and math.isnan(table.loc["clear", "tost_p"])
    assert table.loc["clear", "p"] == pytest.approx(comparisons["clear"]["sign_pvalue"])


def _with_pvalue_frame(p: float, sign: float, seed: int = 0) -> pd.DataFrame:
    return _results(_with_pvalue(p, n=8, sign=sign, seed=seed))


def test_equivalence_test_against_scipy_one_sided_tests():
    rng = np.random.default_rng(5)
    for margin in (0.3, (-0.2, 0.5), 1.0):
        d = rng.normal(0.05, 0.4, size=12)
        r = equivalence_test(d, margin)
        low, high = (-margin, margin) if np.ndim(margin) == 0 else margin
        p_low = sps.ttest_1samp(d, popmean=low, alternative="greater").pvalue
        p_high = sps.ttest_1samp(d, popmean=high, alternative="less").pvalue
        assert (r["p_low"], r["p_high"], r["pvalue"]) == pytest.approx((p_low, p_high, max(p_low, p_high)))
        # equivalence at alpha <=> the (1 - 2 alpha) t interval lies inside the margin
        inside = low < r["ci_low"] and r["ci_high"] < high
        assert r["equivalent"] == (r["pvalue"] < 0.05) == inside
        half = sps.t.ppf(0.95, 11) * d.std(ddof=1) / math.sqrt(12)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert equivalence_test(rng.normal(0, 0.4, 12), 1.0)["equivalent"]
    assert not equivalence_test([0.8, -0.9, 0.3], 1.0)["equivalent"]  # too few and noisy to rule out a unit effect
    # constant differences: decided by where they lie
    assert equivalence_test([0.125, 0.125, 0.125], 0.25)["pvalue"] == 0.0
    assert equivalence_test([0.375, 0.375, 0.375], 0.25)["pvalue"] == 1.0
    assert math.isnan(equivalence_test([0.1], 0.2)["pvalue"])
    with pytest.raises(ValueError, match="margin must be positive"):
        equivalence_test([0.1, 0.2], 0.0)
    with pytest.raises(ValueError, match="needs low < high"):
        equivalence_test([0.1, 0.2], (0.5, -0.5))


def test_minimum_detectable_effect_against_simulation_and_normal_theory():
    n, sd = 10, 2.0
    mde = minimum_detectable_effect(sd=sd, n=n)
    approx = (sps.t.ppf(0.975, n - 1) + sps.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert mde == pytest.approx(approx, rel=0.03)
    # simulation: with a true mean difference of mde, the paired t test rejects in 80% of repetitions
    rng = np.random.default_rng(0)
    reps = 40_000
    for alternative, crit in (("two-sided", sps.t.ppf(0.975, n - 1)), ("one-sided", sps.t.ppf(0.95, n - 1))):
        effect = minimum_detectable_effect(sd=sd, n=n, alternative=alternative)
        x = rng.normal(effect, sd, size=(reps, n))
        t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
        rejected = np.abs(t) > crit if alternative == "two-sided" else t > crit
        assert rejected.mean() == pytest.approx(0.8, abs=3 * math.sqrt(0.8 * 0.2 / reps))
    # large n: the normal-theory value (z_{0.975} + z_{0.8}) sd / sqrt(n)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert minimum_detectable_effect(sd=1.0, n=2000) == pytest.approx(z / math.sqrt(2000), rel=0.002)
    d = _standardised(7) * 3.0 + 1.0
    assert minimum_detectable_effect(d) == pytest.approx(minimum_detectable_effect(sd=3.0, n=7))
    assert minimum_detectable_effect(sd=0.0, n=5) == 0.0
    assert minimum_detectable_effect(sd=1.0, n=5, power=0.01) == 0.0  # below the test's size: nothing needed
    with pytest.raises(ValueError, match="either differences or"):
        minimum_detectable_effect([1.0, 2.0], sd=1.0)
    with pytest.raises(ValueError, match="both sd and n"):
        minimum_detectable_effect(sd=1.0)
    with pytest.raises(ValueError, match="n >= 2"):
        minimum_detectable_effect(sd=1.0, n=1)
    with pytest.raises(ValueError, match=r"unknown alternative 'greater'; allowed: \['two-sided', 'one-sided'\]"):
        minimum_detectable_effect(sd=1.0, n=5, alternative="greater")


def test_tally():
    verdicts = ["holds", "inconclusive", "holds", "does not hold"]
    counts = tally(verdicts)
    assert list(counts) == list(CLAIM_VERDICTS)
    assert counts["holds"] == 2 and counts["inconclusive"] == 1 and counts["does not hold"] == 1
    assert sum(counts.values()) == 4
    assert tally({"a": "holds", "b": "holds"})["holds"] == 2
    assert tally(pd.DataFrame({"verdict": verdicts})) == counts
    with pytest.raises(ValueError, match=r"unknown verdict\(s\) \['maybe'\]; allowed: \['holds'"):
        tally(["holds", "maybe"])
    with pytest.raises(ValueError, match="no 'verdict' column"):
        tally(pd.DataFrame({"v": verdicts}))


# The benefit-side margin test, the paired tables of the chapters and the claims of the results chapter
# ------------------------------------------------------------------------------------------------------------------


def _pairs(differences, factor: str, a: str, b: str, key: str = "label", **extra) -> pd.DataFrame:
    """Runs of ``a`` and ``b`` whose i-th pair, (``key`` i // 3, seed i % 3), differs by ``differences[i]``."""
    rows = []
    for i, d in enumerate(np.asarray(differences, dtype=float)):
        base = 1000.0 + 10.0 * i
        for level, value in ((b, base), (a, base + d)):
            rows.append({key: i // 3, "seed": i % 3, factor: level, "kid": value, "kid_se": 5.0, **extra})
    return pd.DataFrame(rows)


def test_benefit_margin_and_bound():
    # mean 0, sd 1, 8 pairs: a benefit of 2 is excluded, equivalence within 2 too; within 0.5 neither
    c = paired_comparison(_standardised(8), np.zeros(8), n_boot=200)
    bound = benefit_bound(c)
    assert bound == pytest.approx(sps.t.ppf(0.95, 7) / math.sqrt(8))  # -(mean - t sd / sqrt n)
    assert claim_verdict(c, margin=2.0, margin_test="benefit") == "no benefit larger than margin"
    assert claim_verdict(c, margin=0.9 * bound, margin_test="benefit") == "inconclusive"
    assert claim_verdict(c, margin=1.1 * bound, margin_test="benefit") == "no benefit larger than margin"
    # a difference on the worse side excludes a benefit although it cannot show equivalence
    worse = paired_comparison(0.5 + 2 * _standardised(8), np.zeros(8), n_boot=200)
    assert worse["ci_low"] < 0 < worse["ci_high"]
    assert claim_verdict(worse, margin=1.0) == "inconclusive"  # TOST: a harm of 1 is not excluded
    assert claim_verdict(worse, margin=1.0, margin_test="benefit") == "no benefit larger than margin"
    assert claim_verdict(worse, margin=1.0, margin_test="benefit", margin_pvalue=0.2) == (
        "no benefit larger than margin before correction only")
    assert benefit_bound(worse) < 1.0
    with pytest.raises(ValueError, match="margin_test"):
        claim_verdict(c, margin=1.0, margin_test="both")


def test_comparison_table_matches_compare_arms_with_holm():
    frame = pd.concat([_pairs([-3.0, -2.5, -3.5, -2.0, -3.2, -2.8], "arm", "q", "se"),
                       _pairs([0.3, -0.2, 0.1, -0.4, 0.2, 0.0], "arm", "x", "se").query("arm == 'x'")])
    table = comparison_table(frame, [("q", "se"), ("x", "se"), ("q", "missing")], count="label", n_boot=200)
    assert list(table.index) == ["q - se", "x - se"]  # a comparison with an absent arm is left out
    c = compare_arms(frame, "q", "se", n_boot=200)
    assert table.loc["q - se", "mean diff"] == pytest.approx(c["mean_diff"])
    assert (table.loc["q - se", "ci_low"], table.loc["q - se", "ci_high"]) == pytest.approx((c["ci_low"], c["ci_high"]))
    assert table.loc["q - se", "pairs"] == 6 and table.loc["q - se", "labels"] == 2
    assert table.loc["q - se", "proposed lower"] == "6 of 6"
    np.testing.assert_allclose(table["Holm p"], holm_adjust(table["t p"].to_numpy()))
    assert table.loc["q - se", "direction"] == DIRECTIONS["holds"]
    assert table.loc["x - se", "direction"] == DIRECTIONS["inconclusive at this power"]
    assert direction(None) == "no interval (fewer than 2 pairs)"


def test_comparisons_by_level_with_one_seed_fallback():
    rows = []
    for n, diffs in ((10, [-5.0, -6.0, -4.0]), (100, [-1.0])):  # N = 100 has one seed
        for s, d in enumerate(diffs):
            rows += [{"n_train": n, "seed": s, "arm": "se", "kid": 100.0, "kid_se": 3.0},
                     {"n_train": n, "seed": s, "arm": "q", "kid": 100.0 + d, "kid_se": 4.0}]
    d = comparisons_by_level(pd.DataFrame(rows), "n_train", "q", ["se", "none"], n_boot=200)
    assert list(d["n_train"]) == [10, 100] and list(d["pairs"]) == [3, 1]
    assert d.loc[0, "interval"] == "paired t over seeds" and bool(d.loc[0, "excludes 0"])
    assert d.loc[1, "diff"] == pytest.approx(-1.0)
    assert (d.loc[1, "ci_low"], d.loc[1, "ci_high"]) == pytest.approx((-1 - 1.96 * 5.0, -1 + 1.96 * 5.0))
    assert d.loc[1, "interval"] == "one seed, sampling SE only" and not d.loc[1, "excludes 0"]
    assert math.isnan(d.loc[1, "t p"])


def test_claims_family_is_pinned():
    assert [c.key for c in CLAIMS] == ["quantum_better_mnist", "quantum_better_medmnist", "quantum_noise_helps",
                                       "tailored_schedule_helps", "circuit_trains", "quantum_ingredient",
                                       "advantage_below_100"]
    by = {c.key: c for c in CLAIMS}
    assert NOISE_MARGIN_KID == 35.0
    assert by["quantum_better_mnist"].comparisons == (Comparison("mnist", "quantum_rzry", "se"),)
    assert by["quantum_better_mnist"].group == "label"
    assert by["quantum_better_medmnist"].comparisons == (
        Comparison("medmnist", "quantum_rzry", "se", pair_on=("dataset", "label", "seed")),)
    assert by["quantum_better_medmnist"].basis == "sign"
    assert by["quantum_noise_helps"].comparisons == (
        Comparison("noise_schedules", "quantum", "gaussian", factor="noise", pair_on=("schedule", "seed")),)
    assert by["tailored_schedule_helps"].comparisons == (
        Comparison("noise_schedules", "tailored", "cosine", factor="schedule", pair_on=("noise", "seed")),)
    assert by["quantum_noise_helps"].margin == by["tailored_schedule_helps"].margin == NOISE_MARGIN_KID
    assert by["circuit_trains"].exact == "paper_circuit_has_weight_gradient" and not by["circuit_trains"].comparisons
    assert QUANTUM_INGREDIENT_CONTROLS == ("se_cos", "quantum_rzry_frozen", "quantum_rzry_separable", "fourier")
    assert by["quantum_ingredient"].comparisons == tuple(
        Comparison("mnist16", "quantum_rzry", c) for c in QUANTUM_INGREDIENT_CONTROLS)
    assert by["advantage_below_100"].comparisons == (
        Comparison("scaling", "quantum_rzry", "se", pair_on=("n_train", "seed"), min_n_train=100),)
    assert by["advantage_below_100"].lower_is_better is False
    assert all(c.margin is None for c in CLAIMS if c.key not in ("quantum_noise_helps", "tailored_schedule_helps"))
    # the same claims at the paper's width (second edition), deciding once their study is complete (test_claims_width)
    assert {c.key: c.paper_width for c in CLAIMS if c.paper_width} == {
        "quantum_better_mnist": (Comparison("mnist16", "quantum_rzry", "se"),),
        "quantum_better_medmnist": (
            Comparison("medmnist16", "quantum_rzry", "se", pair_on=("dataset", "label", "seed")),),
        "advantage_below_100": (
            Comparison("scaling16", "quantum_rzry", "se", pair_on=("n_train", "seed"), min_n_train=100),)}
    from qdiff_lib.claims import PAPER_WIDTH_RULE_FIXED

    assert PAPER_WIDTH_RULE_FIXED == "2026-11-29"
    # where each claim comes from: four sentences of the abstract, one implied by the paper's model, two the book's
    from qdiff_lib.claims import ORIGINS, Claim

    assert {c.key: c.origin for c in CLAIMS} == {
        "quantum_better_mnist": "abstract", "quantum_better_medmnist": "abstract", "quantum_noise_helps": "abstract",
        "tailored_schedule_helps": "abstract", "circuit_trains": "paper", "quantum_ingredient": "book",
        "advantage_below_100": "book"}
    assert set(ORIGINS) == {"abstract", "paper", "book"}
    with pytest.raises(ValueError, match="unknown origin 'blog'"):
        Claim("x", "text", origin="blog")


def test_detectable_share_is_where_the_sign_rule_reaches_its_power():
    from qdiff_lib.claims import detectable_share

    def cp_low(k, n):  # the Clopper-Pearson lower bound of sign_comparison
        return sign_comparison(-np.ones(n) * (np.arange(n) < k) + (np.arange(n) >= k), np.zeros(n))["ci_low"]

    for n in (10, 15, 30):
        s = detectable_share(n)
        k_min = next(k for k in range(n + 1) if cp_low(k, n) > 0.5)
        assert cp_low(k_min - 1, n) <= 0.5 < cp_low(k_min, n)
        assert 0.5 < s < 1 and sps.binom.sf(k_min - 1, n, s) == pytest.approx(0.8, abs=1e-8)
        assert detectable_share(n, power=0.9) > s  # more power needs a larger effect
    assert detectable_share(15) > detectable_share(30)  # more pairs resolve a smaller one
    assert math.isnan(detectable_share(5))  # 5 of 5 still leaves 1/2 inside the 95% interval
    assert math.isnan(detectable_share(0))


def _claim_frames(mnist_p: float = 1e-6) -> dict:
    """Constructed results of every study but mnist16, with known verdicts (see test_evaluate_claims...)."""
    mnist = _pairs(_with_pvalue(mnist_p, n=30), "arm", "quantum_rzry", "se")  # 10 digits x 3 seeds
    med = _pairs([-1.0, 1.0] * 6, "arm", "quantum_rzry", "se", dataset="pathmnist")  # 6 of 12 lower
    quantum, tailored = 0.5 * _standardised(6).reshape(2, 3), 150 * _standardised(3, seed=1) - 20
    noise = pd.DataFrame([  # quantum - gaussian: 0.5 z (sd 0.5); tailored - cosine: about 150 z' - 20
        {"schedule": sched, "noise": nz, "seed": s, "kid": 1000.0 + 10 * s + (nz == "quantum") * quantum[i, s]
         + (sched == "tailored") * tailored[s]}
        for i, sched in enumerate(("cosine", "tailored")) for nz in ("gaussian", "quantum") for s in range(3)])
    scaling = pd.concat([
        _pairs(np.full(6, 5.0) + _standardised(6), "arm", "quantum_rzry", "se", key="n_train").assign(n_train=10),
        _pairs(np.full(9, -50.0) + _standardised(9), "arm", "quantum_rzry", "se", key="n_train").assign(
            n_train=lambda f: 100 * (1 + f["n_train"]))])  # 100, 200, 300: the circuit better there
    return {"mnist": mnist, "medmnist": med, "noise_schedules": noise, "scaling": scaling}


def test_evaluate_claims_on_known_answers_and_pending_row_fills_in():
    from qdiff_lib.claims import detectable_share

    frames = _claim_frames()
    frames["mnist"] = frames["mnist"].assign(n_qubits=8)
    table = evaluate_claims(frames, {"paper_circuit_has_weight_gradient": False}, n_boot=200)
    assert list(table.index) == [c.key for c in CLAIMS]
    assert table.loc["quantum_better_mnist", "qubits"] == "8"  # read from the runs
    assert table.loc["quantum_better_medmnist", "qubits"] == ""  # no n_qubits column
    assert table["origin"].to_dict() == {c.key: c.origin for c in CLAIMS}
    # the MedMNIST row: a share, said as one, and the share its sign rule detects with 80% power
    assert table.loc["quantum_better_medmnist", "estimate [95% CI]"].startswith(
        "share of pairs in which quantum_rzry scores lower: 0.5 [")
    assert table.loc["quantum_better_medmnist", "mde"] == pytest.approx(detectable_share(12))
    assert table["verdict"].to_dict() == {
        "quantum_better_mnist": "holds",
        "quantum_better_medmnist": "inconclusive",  # share 1/2
        "quantum_noise_helps": "no benefit larger than margin",  # mean 0, sd 0.5: far inside 35
        "tailored_schedule_helps": "inconclusive",  # sd ~150 over 6 pairs: neither direction nor margin decided
        "circuit_trains": "does not hold",  # the exact check
        "quantum_ingredient": "not yet tested — runs pending",  # no mnist16 runs: computed from their absence
        "advantage_below_100": "does not hold",  # the circuit is better at N >= 100
    }
    assert table.loc["quantum_better_mnist", "group verdict"] == "holds"
    assert table.loc["quantum_better_mnist", "group means"].endswith("10 means")
    assert table.loc["advantage_below_100", "n"] == 9  # N = 10 left out
    assert table.loc["quantum_ingredient", "n"] == 0 and math.isnan(table.loc["quantum_ingredient", "p_holm"])
    # Holm over every test made: 5 direction tests and 2 margin tests
    tested = table["p"].notna().sum() + table["margin_p"].notna().sum()
    assert tested == 7
    ps = list(table["p"].dropna()) + list(table["margin_p"].dropna())
    assert sorted(list(table["p_holm"].dropna()) + list(table["margin_p_holm"].dropna())) == pytest.approx(
        sorted(holm_adjust(ps)))
    assert table.loc["quantum_noise_helps", "benefit not excluded"] < NOISE_MARGIN_KID
    counts = tally(table)
    assert sum(counts.values()) == len(CLAIMS) and counts["not yet tested — runs pending"] == 1
    # the mnist16 runs arrive: the row fills itself in
    controls = {"se_cos": -80.0, "quantum_rzry_frozen": -60.0, "quantum_rzry_separable": -70.0, "fourier": -90.0}
    rz = pd.Series(1000.0 + 10.0 * np.arange(30), pd.MultiIndex.from_tuples([(i // 3, i % 3) for i in range(30)],
                                                                             names=["label", "seed"]), name="kid")
    rows = [rz.reset_index().assign(arm="quantum_rzry")]
    for i, (b, d) in enumerate(controls.items()):  # quantum_rzry - control = d + 10 z_i
        rows.append((rz - (d + 10 * _standardised(30, seed=i))).reset_index().assign(arm=b))
    frames["mnist16"] = pd.concat(rows, ignore_index=True)
    filled = evaluate_claims(frames, {"paper_circuit_has_weight_gradient": False}, n_boot=200)
    assert filled.loc["quantum_ingredient", "verdict"] == "holds"
    assert filled.loc["quantum_ingredient", "primary comparison"].startswith(
        "deciding: quantum_rzry - quantum_rzry_frozen")  # the weakest link: the smallest gain
    assert filled.loc["quantum_ingredient", "n"] == 30
    comps = component_table(frames, CLAIMS[5], n_boot=200)
    assert list(comps["verdict"]) == ["holds"] * 4 and list(comps["n"]) == [30] * 4
    # one control that matches the circuit: the claim is no longer supported
    frames["mnist16"].loc[frames["mnist16"].arm == "fourier", "kid"] = rz.to_numpy() + _standardised(30, seed=9)
    assert evaluate_claims(frames, n_boot=200).loc["quantum_ingredient", "verdict"] == "inconclusive"
    # a study computed in stages: every arm of the first nine digits is not enough to decide
    staged = evaluate_claims({**frames, "mnist16": frames["mnist16"][frames["mnist16"].label < 9]}, n_boot=200)
    assert staged.loc["quantum_ingredient", "verdict"] == PENDING
    assert staged.loc["quantum_ingredient", "estimate [95% CI]"] == (
        "not decided until every comparison pairs runs in all 10 label values (9 so far)")
    # ... but the row says how its deciding comparison reads today: the control the circuit matches, uncorrected
    assert staged.loc["quantum_ingredient", "provisional"].startswith("quantum_rzry - fourier = ")
    assert staged.loc["quantum_ingredient", "provisional"].endswith("before any correction: interval contains 0")
    assert math.isnan(staged.loc["quantum_ingredient", "p_holm"])  # outside the family until decided
    worse = frames["mnist16"].copy()  # the surrogate clearly better than the circuit: said as against the claim
    worse.loc[worse.arm == "fourier", "kid"] = rz.to_numpy() - 50 + _standardised(30, seed=9)
    staged = evaluate_claims({**frames, "mnist16": worse[worse.label < 9]}, n_boot=200)
    assert staged.loc["quantum_ingredient", "verdict"] == PENDING
    assert staged.loc["quantum_ingredient", "provisional"].endswith("against the claim (interval on the other side)")
    decided = evaluate_claims({**frames, "mnist16": worse}, n_boot=200).loc["quantum_ingredient"]
    assert decided["verdict"] == "does not hold" and decided["deciding"].b == "fourier"  # not the first control
    # half the runs: still pending for a missing arm
    frames["mnist16"] = frames["mnist16"][frames["mnist16"].arm != "se_cos"]
    assert evaluate_claims(frames, n_boot=200).loc["quantum_ingredient", "verdict"] == PENDING


def test_evaluate_claims_labels_a_claim_that_fails_holm():
    # MNIST's interval excludes 0 at p = 0.03, but with the scaling claim (p small) and the two margin tests in the
    # family Holm multiplies it: it must read "holds before correction only", never "holds"
    table = evaluate_claims(_claim_frames(mnist_p=0.03), n_boot=200)
    row = table.loc["quantum_better_mnist"]
    assert row["p"] == pytest.approx(0.03) and row["ci_high"] < 0
    assert row["p_holm"] >= 0.05
    assert row["verdict"] == "holds before correction only"
    assert table.loc["circuit_trains", "verdict"] == PENDING  # no exact check passed
    assert tally(table)["holds"] == 0
