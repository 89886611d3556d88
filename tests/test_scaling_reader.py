"""qdiff_lib.scaling: reading a scaling study, on constructed runs whose answers are known (no training)."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
from scipy import stats as sps

from qdiff_lib import scaling
from qdiff_lib.grids import PROFILES, SCALING16_ARMS, arm_of, arm_options, run_key, study_runs

ARMS16 = ("se", "se_cos", "quantum_rzry")
BASE = (100.0, 110.0, 120.0)  # se's KID at seeds 0, 1, 2
SMALL = (-98.0, -100.0, -102.0)  # se_cos - se at small N: mean -100, sd 2
LARGE = (-10.0, 1.0, 12.0)  # se_cos - se at large N: mean 1, its interval contains 0
# Each difference also moves by N / 1000, so that no two differences tie in absolute value: with ties, scipy's
# Wilcoxon test (part of every comparison) falls back to a slow permutation test.


def _frame(sizes=(10, 50, 250, 1000), seeds=(0, 1, 2), one_seed=()) -> pd.DataFrame:
    """se, se_cos, quantum_rzry at each size: se_cos lower than se by about 100 only at N <= 50; quantum_rzry about
    31, 30 and 29 below se at seeds 0, 1, 2 at every size; a size in ``one_seed`` has seed 0 only."""
    rows = []
    for n in sizes:
        for s in (seeds[:1] if n in one_seed else seeds):
            se = BASE[s] + n / 100
            cos = se + (SMALL if n <= 50 else LARGE)[s] + n / 1000
            for arm, kid in (("se", se), ("se_cos", cos), ("quantum_rzry", se - 30.0 + s - 1 - n / 1000)):
                rows.append(dict(n_train=n, arm=arm, seed=s, kid=kid, kid_se=1.0, kid_norm=kid / 1000))
    return pd.DataFrame(rows)


def _half(sd: float, n: int = 3) -> float:
    return sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


# per-size differences and where they appear
# ------------------------------------------------------------------------------------------------------------------


def test_a_difference_that_appears_only_at_small_n_is_reported_so():
    d = scaling.size_differences(_frame(), [("se_cos", "se"), ("quantum_rzry", "se")])
    assert list(d["n_train"]) == [10, 10, 50, 50, 250, 250, 1000, 1000]  # by N, then in the order given
    assert list(d["comparison"][:2]) == ["se_cos - se", "quantum_rzry - se"]
    row = d[(d["comparison"] == "se_cos - se") & (d["n_train"] == 10)].iloc[0]
    assert row["pairs"] == 3 and row["diff"] == pytest.approx(-99.99)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-99.99 - _half(2.0), -99.99 + _half(2.0)))
    assert list(d.loc[d["comparison"] == "se_cos - se", "excludes 0"]) == [True, True, False, False]
    sentence = scaling.where_sentence(d, "se_cos - se")
    assert sentence.startswith("se_cos - se: the interval over seeds excludes 0 at N = 10: -100 [")
    assert "; N = 50: -100 [" in sentence
    assert sentence.endswith(", and includes it at N = 250, 1000")


def test_a_difference_at_every_n_and_none_at_any():
    d = scaling.size_differences(_frame(), [("quantum_rzry", "se")])
    assert d["diff"].tolist() == pytest.approx([-30.01, -30.05, -30.25, -31.0])
    assert scaling.where_sentence(d, "quantum_rzry - se").count("excludes 0 at N = ") == 1
    assert "includes it" not in scaling.where_sentence(d, "quantum_rzry - se")
    flat = _frame(sizes=(250, 1000))
    d = scaling.size_differences(flat, [("se_cos", "se")])
    assert scaling.where_sentence(d, "se_cos - se") == (
        "se_cos - se: the 95% interval over seeds includes 0 at every N tested (250, 1000)")
    assert scaling.where_sentence(d, "quantum_rzry - se") == "quantum_rzry - se: not computed"


def test_one_seed_sizes_are_not_tested():
    d = scaling.size_differences(_frame(sizes=(10, 64, 250), one_seed=(64,)), [("se_cos", "se")])
    one = d[d["n_train"] == 64].iloc[0]
    assert one["pairs"] == 1 and one["interval"] == "one seed, sampling SE only"
    assert one["ci_high"] - one["ci_low"] == pytest.approx(2 * 1.96 * math.sqrt(2))
    sentence = scaling.where_sentence(d, "se_cos - se")
    assert sentence.endswith("and includes it at N = 250; N = 64 had one seed (not tested)")
    only = scaling.size_differences(_frame(sizes=(10, 250), seeds=(0,)), [("se_cos", "se")])
    assert scaling.where_sentence(only, "se_cos - se") == (
        "se_cos - se: one seed per N, so no difference is resolved at this power "
        "(differences -98, -9.75 at N = 10, 250)")


def test_absent_arms_give_no_row_and_bad_input_is_refused():
    f = _frame()
    assert scaling.size_differences(f[f["arm"] != "se_cos"], [("se_cos", "se")]).empty
    with pytest.raises(ValueError, match=r"missing column\(s\) \['kid_norm'\].*n_train"):
        scaling.size_differences(f.drop(columns="kid_norm"), [("se", "se_cos")], "kid_norm")
    with pytest.raises(ValueError, match=r"comparisons .*\('se', 'se'\).*two different arms"):
        scaling.size_differences(f, [("se", "se")])
    with pytest.raises(ValueError, match=r"where_sentence: missing column\(s\) \['excludes 0'\]"):
        scaling.where_sentence(pd.DataFrame(columns=["n_train", "comparison", "pairs", "diff", "ci_low", "ci_high"]),
                               "se_cos - se")


# the comparison pooled over every (N, seed) pair
# ------------------------------------------------------------------------------------------------------------------


def test_pooled_row_over_every_n_and_seed():
    f = _frame()
    row = scaling.pooled_row(f, "se_cos", "se")
    d = [v + n / 1000 for n in (10, 50, 250, 1000) for v in (SMALL if n <= 50 else LARGE)]
    t = sps.ttest_1samp(d, 0.0)
    assert row["comparison"] == "se_cos - se" and row["pairs"] == 12
    assert row["t p"] == pytest.approx(t.pvalue)
    assert row["favour arm"] == "8 of 12"  # the six small-N pairs and the two large-N pairs of seed 0
    assert row["sign p"] == pytest.approx(sps.binomtest(8, 12).pvalue)
    assert row["sizes negative"] == "2 of 4"  # the mean difference at N = 250 and 1000 is about +1
    mean = sum(d) / len(d)
    assert row["95% CI"].startswith(f"{mean:.3g} [")
    assert row["normalised 95% CI"].startswith(f"{mean / 1000:.2g} [")
    assert "normalised 95% CI" not in scaling.pooled_row(f, "se_cos", "se", norm_metric=None)
    text = scaling.pooled_sentence(row, "se_cos", "se")
    assert text.startswith("se_cos - se, pooled over 12 (N, seed) pairs: ")
    assert "8 of 12 pairs favour se_cos" in text and text.endswith("negative at 2 of 4 sizes")


def test_pooled_rows_keep_the_order_and_mark_missing_comparisons():
    f = _frame(sizes=(10,), seeds=(0,))  # one pair per comparison: not enough
    rows = scaling.pooled_rows(f, [("quantum_rzry", "se"), ("se_cos", "se")])
    assert rows == {"quantum_rzry - se": None, "se_cos - se": None}
    assert scaling.pooled_table(rows).empty
    assert scaling.pooled_sentence(None, "quantum_rzry", "se") == "quantum_rzry - se: fewer than two (N, seed) pairs"
    rows = scaling.pooled_rows(_frame(), scaling.STUDY_COMPARISONS["scaling16"])
    assert list(rows) == ["quantum_rzry - se", "se_cos - se", "quantum_rzry - se_cos"]
    assert list(scaling.pooled_table(rows).index) == list(rows)
    assert rows["quantum_rzry - se"]["sizes negative"] == "4 of 4"
    with pytest.raises(ValueError, match="the row is of 'quantum_rzry - se'; expected 'se_cos - se'"):
        scaling.pooled_sentence(rows["quantum_rzry - se"], "se_cos", "se")
    with pytest.raises(ValueError, match="same arm 'se'"):
        scaling.pooled_row(_frame(), "se", "se")


# which MNIST runs are borrowed as one more size
# ------------------------------------------------------------------------------------------------------------------


def test_borrowed_keys_are_the_mnist_runs_with_every_option_equal_but_n():
    keys16 = scaling.borrowed_keys("scaling16", "ci")
    mnist16 = study_runs("mnist16", "ci")
    assert keys16 == {run_key(o) for o in mnist16 if o.label == 3 and arm_of(o) in SCALING16_ARMS}
    assert len(keys16) == len(SCALING16_ARMS) < len(mnist16) and all("-n64-" in k for k in keys16)
    keys = scaling.borrowed_keys("scaling", "ci")
    assert keys == {run_key(o) for o in study_runs("mnist", "ci") if arm_of(o) in ("none", "se", "quantum_rzry")}
    # at the full profile the widths differ (8 and 16 qubits): no run of the first MNIST study is borrowed for the
    # second scaling study, and every borrowed run is one of mnist16's
    full16 = scaling.borrowed_keys("scaling16", "full")
    assert len(full16) == len(SCALING16_ARMS) * len(PROFILES["full"].seeds)
    assert not full16 & {run_key(o) for o in study_runs("mnist", "full")}
    assert full16 <= {run_key(o) for o in study_runs("mnist16", "full") if o.n_qubits == 16}
    with pytest.raises(ValueError, match=r"unknown scaling study 'mnist'; allowed: \['scaling', 'scaling16'\]"):
        scaling.borrowed_keys("mnist")


def test_borrowed_runs_pick_only_matching_runs():
    wanted = scaling.borrowed_keys("scaling16", "ci")
    o = next(o for o in study_runs("mnist16", "ci") if run_key(o) in wanted)
    others = {
        "wrong digit": dataclasses.replace(o, label=5),
        "wrong width": dataclasses.replace(o, n_qubits=o.n_qubits * 2),
        "wrong budget": dataclasses.replace(o, steps=o.steps + 1),
        "wrong arm": arm_options("quantum_paper", **{k: getattr(o, k) for k in ("dataset", "label", "n_train", "seed",
                                                                                  "steps", "n_samples", "n_qubits")}),
        "wrong seed": dataclasses.replace(o, seed=o.seed + 7),
    }
    source = pd.DataFrame({"key": [run_key(o), *(run_key(x) for x in others.values())], "kid": range(6)})
    picked = scaling.borrowed_runs(source, wanted)
    assert picked["key"].tolist() == [run_key(o)]
    assert scaling.borrowed_runs(source, wanted, exclude=[run_key(o)]).empty
    assert scaling.borrowed_runs(source.iloc[:0], wanted).empty
    with pytest.raises(ValueError, match=r"missing column\(s\) \['key'\]"):
        scaling.borrowed_runs(source.drop(columns="key"), wanted)


def _summary(options, kid: float) -> dict:
    metrics = {"kid": {"mean": kid, "se": 1.0}, "memorization": {"mean": 1.0}, "class_consistency": {"mean": 0.5}}
    return {"options": dataclasses.asdict(options), "final_loss": 0.1, "timings": {"train_s": 1.0},
            "device": "cpu", "metrics": metrics}


def test_load_scaling_adds_the_borrowed_size(tmp_path):
    def write(study, options, kid=1.0):
        folder = tmp_path / "ci" / study
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{run_key(options)}.json").write_text(json.dumps(_summary(options, kid)))

    mnist16 = study_runs("mnist16", "ci")
    for o in mnist16:
        write("mnist16", o)
    write("mnist16", dataclasses.replace(mnist16[0], steps=mnist16[0].steps + 1))  # another budget
    empty = scaling.load_scaling("scaling16", "ci", root=tmp_path)
    assert (empty.n_present, empty.n_planned, len(empty.frame)) == (0, len(study_runs("scaling16", "ci")), 0)
    assert empty.n_borrowed == empty.n_borrowable == len(SCALING16_ARMS)  # counted though not added
    own = study_runs("scaling16", "ci")[:2]
    for o in own:
        write("scaling16", o, kid=2.0)
    r = scaling.load_scaling("scaling16", "ci", root=tmp_path)
    assert r.n_present == 2 and r.source == "mnist16" and r.comparisons == scaling.STUDY_COMPARISONS["scaling16"]
    assert r.frame["kid"].tolist() == [2.0, 2.0, 1.0, 1.0, 1.0]  # the study's runs, then the borrowed ones
    assert sorted(r.frame.loc[r.frame["n_train"] == 64, "arm"]) == sorted(SCALING16_ARMS)
    assert set(r.frame.loc[r.frame["n_train"] == 64, "steps"]) == {own[0].steps}
    fourier = dataclasses.replace(arm_options("fourier"), **{
        k: getattr(own[0], k) for k in ("dataset", "label", "n_train", "seed", "steps", "n_samples", "n_qubits")})
    write("scaling16", fourier)
    with pytest.raises(ValueError, match=r"runs of arm\(s\) \['fourier'\]; allowed: \['se', 'se_cos', 'quan"):
        scaling.load_scaling("scaling16", "ci", root=tmp_path)
    (tmp_path / "ci" / "scaling16" / f"{run_key(fourier)}.json").unlink()
    scaling.load_scaling("scaling16", "ci", root=tmp_path)
    # an older run of the same (N, arm, seed) under another key (another sampler setting) is refused, not averaged in
    write("scaling16", dataclasses.replace(own[0], sample_steps=own[0].sample_steps + 1), kid=9.0)
    with pytest.raises(ValueError, match=r"several runs of one \(label, n_train, arm, seed\)"):
        scaling.load_scaling("scaling16", "ci", root=tmp_path)


# the memorization floor and small summaries
# ------------------------------------------------------------------------------------------------------------------


def _memorization(arm_scores: dict[int, float], flag_at: float | None = None) -> pd.DataFrame:
    rows = [dict(n_train=n, arm=arm, seed=0, memorization=v + (0.01 if arm == "se" else 0.0))
            for n, v in arm_scores.items() for arm in ("se", "quantum_rzry")]
    if flag_at is not None:
        rows[0]["memorization"] = flag_at
    return pd.DataFrame(rows)


def test_floor_summary_says_which_way_the_floor_moves():
    floors = pd.DataFrame({"n_train": [10, 10, 1000, 1000], "seed": 0, "floor": [0.98, 0.99, 1.0, 1.0]})
    frame = _memorization({10: 1.1, 1000: 0.7})
    table = scaling.floor_table(frame, floors)
    assert list(table.columns) == ["quantum_rzry", "se", "floor mean", "floor std", "floor q025", "floor q975"]
    s = scaling.floor_summary(frame, table, threshold=1.5)
    assert (s["floor_n_lo"], s["floor_n_hi"]) == (10, 1000)
    assert s["floor_change"] == pytest.approx(0.015) and s["arm_change"] == pytest.approx(-0.4)
    assert s["mem_gap_hi"] == pytest.approx(1.0 - 0.705)
    assert s["floor_reading"].startswith("The floor moves the other way from the arms' score, and by only 4% as much")
    assert s["mem_above"].startswith("At N = 10 every arm's mean score lies above the floor")
    assert "none of the 4 runs is flagged" in s["mem_flag_summary"]
    same = scaling.floor_summary(frame, scaling.floor_table(frame, floors.assign(floor=[1.2, 1.2, 1.0, 1.0])), 1.5)
    assert same["floor_summary"] == "the floor moves the same way, by 50% of the arms' move"
    assert same["mem_above"].startswith("No arm's mean score lies above the floor at any N")
    flagged = _memorization({10: 1.1, 1000: 0.7}, flag_at=1.6)
    assert scaling.floor_summary(flagged, scaling.floor_table(flagged, floors), 1.5)["mem_flag_summary"] == (
        "1 of the 4 runs is flagged (highest score 1.6, threshold 1.5)")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['floor std'\]"):
        scaling.floor_summary(frame, table.drop(columns="floor std"), 1.5)


def test_seeds_per_size_and_mean_range():
    f = _frame(sizes=(10, 64), one_seed=(64,))
    assert scaling.seeds_per_size(f) == "N = 10: 3, N = 64: 1"
    assert scaling.seeds_per_size(f.iloc[:0]) == "none"
    assert scaling.mean_range(f, "kid") == "from 10.11 (se_cos, N = 10) to 110.10 (se, N = 10)"
    with pytest.raises(ValueError, match="no run"):
        scaling.mean_range(f.iloc[:0], "kid")
