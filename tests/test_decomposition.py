"""qdiff_lib.decomposition: the arms' parameter table and the paired steps, on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from qdiff_lib import decomposition as dec
from qdiff_lib.grids import ARMS, MNIST16_ARMS, MNIST_V1_ARMS, RELEASED16_ARMS
from qdiff_lib.paired_tables import comparison_table
from qdiff_lib.verdicts import compare_arms, compare_group_means

#: Each arm's true effect on KID (constructed), relative to se.
EFFECT = {"se": 0.0, "se_cos": -10.0, "quantum_paper": -25.0, "quantum_rzry_separable": -12.0,
          "quantum_rzry": -30.0, "quantum_rzry_frozen": -30.0, "fourier": -20.0, "none": 40.0}


def _frame(arms=tuple(EFFECT), labels=range(5), seeds=(0, 1), skip=()) -> pd.DataFrame:
    """One run per (arm, label, seed): KID = 100 + 50 label + seed + effect, and for every arm but se a deterministic
    wobble +-1 alternating over the runs (so that intervals have width); ``skip``: (arm, label, seed) left out."""
    rows = []
    for label in labels:
        for seed in seeds:
            for arm in arms:
                if (arm, label, seed) in skip:
                    continue
                wobble = 0.0 if arm == "se" else (1.0 if (label + seed) % 2 else -1.0)
                rows.append({"dataset": "mnist", "label": label, "seed": seed, "arm": arm, "n_train": 64,
                             "steps": 2000, "n_qubits": 16, "kid": 100.0 + 50 * label + seed + EFFECT[arm] + wobble})
    return pd.DataFrame(rows)


def test_every_arm_has_a_middle_and_the_mnist_arms_are_found_from_the_grids():
    assert set(dec.ARM_MIDDLES) == set(ARMS)
    found = dec.study_arms("mnist")
    assert set(MNIST_V1_ARMS) | set(MNIST16_ARMS) | set(RELEASED16_ARMS) <= set(found)
    assert list(found) == [a for a in ARMS if a in found]  # in the order of ARMS
    assert found["fourier"] == ("mnist16",) and "mnist" in found["se"] and "mnist16" in found["se"]
    assert dec.study_arms("pathmnist") == {a: ("medmnist", "medmnist16") if a != "se_cos" else ("medmnist16",)
                                           for a in ("none", "se", "quantum_rzry", "se_cos")}


def test_parameter_table_counts_the_gate_and_its_middle():
    n, L, C = 4, 2, 128
    table = dec.parameter_table(["none", "se", "se_frozen", "quantum_paper", "quantum_rzry_frozen", "fourier"], (n,),
                                n_layers=L).set_index("arm")
    squeeze, up = C * n + n, n * C + C
    none = table.loc["none", "total"]
    assert table.loc["none", ["gate", "gate trainable", "middle", "gate share (%)"]].tolist() == [0, 0, 0, 0.0]
    assert table.loc["se", "gate"] == squeeze + up and table.loc["se", "middle"] == 0
    assert table.loc["se", "total"] == none + squeeze + up
    assert table.loc["se_frozen", "gate trainable"] == up and table.loc["se_frozen", "trainable"] == none + up
    assert table.loc["quantum_paper", "middle"] == L * n  # RZ weights (L, n)
    frozen = table.loc["quantum_rzry_frozen"]
    assert (frozen["middle"], frozen["middle trainable"], frozen["gate trainable"]) == (L * n * 2, 0, squeeze + up)
    assert table.loc["fourier", "middle trainable"] == L * n * 2  # as many weights as the rzry circuit
    assert table.loc["se", "gate share (%)"] == pytest.approx(100 * (squeeze + up) / table.loc["se", "total"])
    both = dec.parameter_table(["se"], (4, 8))
    assert both["n_qubits"].tolist() == [4, 8]
    assert both["gate"].tolist() == [C * 4 + 4 + 4 * C + C, C * 8 + 8 + 8 * C + C]


def test_decompose_gives_each_step_its_known_difference_and_the_library_interval():
    frame = _frame()
    table = dec.decompose(frame, n_boot=200)
    assert list(table.index) == [str(s) for s in (*dec.DECOMPOSITION, dec.TOTAL_STEP)]
    for step in (*dec.DECOMPOSITION, dec.TOTAL_STEP):
        row = table.loc[str(step)]
        assert row["pairs"] == 10 and row["groups"] == 5
        assert row["mean diff"] == pytest.approx(EFFECT[step.end] - EFFECT[step.start], abs=1e-9)
        ref = compare_arms(frame, step.end, step.start, "kid", ("label", "seed"), n_boot=200)
        assert (row["ci_low"], row["ci_high"], row["t p"]) == pytest.approx((ref["ci_low"], ref["ci_high"],
                                                                            ref["t_pvalue"]), nan_ok=True)
        g = compare_group_means(frame, step.end, step.start, "kid", "label", ("label", "seed"), n_boot=200)
        assert row["group means"].endswith(f"{g['n']} means") and g["n"] == 5
        assert row["status"] == "tested (no plan given)"
    # the wobbles cancel in the frozen step (same effect, same wobble): a difference of exactly 0 every time
    frozen = table.loc["quantum_rzry - quantum_rzry_frozen"]
    assert frozen["mean diff"] == 0 and frozen["lower after"] == "10 of 10"  # ties count as "not higher"
    # se -> se_cos: -10 +- 1: the t interval is mean -10 with half-width t(9) * sd / sqrt(10)
    d = np.array([(1.0 if (lab + s) % 2 else -1.0) - 10 for lab in range(5) for s in (0, 1)])
    half = sps.t.ppf(0.975, 9) * d.std(ddof=1) / math.sqrt(10)
    row = table.loc["se_cos - se"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-10 - half, -10 + half))
    assert row["direction"] == "proposed better (interval below 0)"
    # Holm over the steps that have a p-value, as comparison_table does
    ref = comparison_table(frame, [(s.end, s.start) for s in (*dec.DECOMPOSITION, dec.TOTAL_STEP)], "kid",
                           ("label", "seed"), count="label", n_boot=200)
    np.testing.assert_allclose(table["Holm p"].to_numpy(float), ref["Holm p"].to_numpy(float), equal_nan=True)


def test_a_step_with_too_few_pairs_is_pending_and_the_plan_counts_the_pairs_to_come():
    # separable exists for one (label, seed) only; fourier not at all; the plan has every arm at 5 labels x 2 seeds
    arms = [a for a in EFFECT if a != "fourier"]
    skip = {("quantum_rzry_separable", lab, s) for lab in range(5) for s in (0, 1)} - {("quantum_rzry_separable", 0, 0)}
    frame = _frame(arms=arms, skip=skip)
    plan = _frame()[["arm", "label", "seed"]]
    table = dec.decompose(frame, planned=plan, n_boot=200)
    assert (table["planned"] == 10).all()
    for name in ("quantum_rzry_separable - se_cos", "quantum_rzry - quantum_rzry_separable"):
        row = table.loc[name]
        assert row["pairs"] == 1 and row["status"] == "pending: not enough pairs (1 of 10 planned; an interval needs 2)"
        assert math.isnan(row["mean diff"]) and math.isnan(row["Holm p"]) and row["95% CI"] == ""
    fourier = table.loc["quantum_rzry - fourier"]
    assert fourier["pairs"] == 0 and fourier["status"].startswith("pending: not enough pairs (0 of 10")
    assert table.loc["se_cos - se", "status"] == "complete"
    # four steps have an interval; two of them a p-value (the others' differences are constant: sd 0); Holm counts
    # only those two
    assert (table["pairs"] >= 2).sum() == 4
    tested = table["t p"].notna()
    assert tested.sum() == 2
    from qdiff_lib.stats import holm_adjust

    np.testing.assert_allclose(table.loc[tested, "Holm p"], holm_adjust(table.loc[tested, "t p"].to_numpy(float)))
    # a partly computed grid: seed 1 missing everywhere -> provisional
    partial = dec.decompose(frame[frame["seed"] == 0], planned=plan, n_boot=200)
    assert partial.loc["se_cos - se", "status"] == "provisional: 5 of 10 planned pairs"
    # a higher threshold makes a 5-pair step pending too
    strict = dec.decompose(frame[frame["seed"] == 0], planned=plan, min_pairs=6, n_boot=200)
    assert strict.loc["se_cos - se", "status"].startswith("pending: not enough pairs (5 of 10")
    # no runs at all: every step pending
    empty = dec.decompose(frame.iloc[:0], planned=plan)
    assert (empty["pairs"] == 0).all() and empty["status"].str.startswith("pending").all()


def test_decompose_rejects_bad_arguments():
    frame = _frame()
    with pytest.raises(ValueError, match="group"):
        dec.decompose(frame, group="digit")
    with pytest.raises(ValueError, match="min_pairs"):
        dec.decompose(frame, min_pairs=1)
    with pytest.raises(ValueError, match="twice"):
        dec.decompose(frame, steps=(dec.TOTAL_STEP, dec.TOTAL_STEP))


def test_borrow_arms_lends_only_matching_width_free_runs():
    target = _frame(arms=("se", "quantum_rzry"), labels=(0, 1))
    source = pd.concat([_frame(arms=("none", "se"), labels=(0, 1, 2)).assign(n_qubits=8),
                        _frame(arms=("none",), labels=(0,)).assign(n_qubits=8, steps=150, seed=7)])
    out = dec.borrow_arms(target, source)
    lent = out[out["borrowed"]]
    assert set(lent["arm"]) == {"none"} and len(lent) == 6  # labels 0-2 x seeds 0-1; the 150-step runs are not lent
    assert (lent["steps"] == 2000).all() and (lent["n_qubits"] == 8).all()
    assert len(out[~out["borrowed"]]) == len(target) and set(out.loc[~out["borrowed"], "arm"]) == {"se", "quantum_rzry"}
    # an arm the target has is never replaced
    has_none = _frame(arms=("se", "none"), labels=(0,))
    assert not dec.borrow_arms(has_none, source)["borrowed"].any()
    # the lent runs pair with the target's: none's effect is +40 against se (its wobbles cancel over these keys)
    c = compare_arms(out, "se", "none", "kid", ("label", "seed"), n_boot=100)
    assert c["n"] == 4 and c["mean_diff"] == pytest.approx(-40.0)


def test_width_check_compares_over_the_digits_both_widths_hold():
    eight = _frame(arms=("se", "quantum_rzry", "none"), labels=(0, 1, 2))
    sixteen = _frame(arms=("se", "quantum_rzry"), labels=(1, 2, 3)).assign(
        kid=lambda f: f["kid"] + np.where(f["arm"] == "quantum_rzry", -5.0, 0.0))  # the circuit gains 5 more
    table = dec.width_check({16: sixteen, 8: eight}, [("quantum_rzry", "se"), ("se", "none")], n_boot=200)
    row = table.loc["quantum_rzry - se"]
    assert row["labels"] == 2 and row["pairs 8"] == row["pairs 16"] == 4  # digits 1 and 2, seeds 0 and 1
    ref8 = compare_arms(eight[eight["label"].isin([1, 2])], "quantum_rzry", "se", "kid", ("label", "seed"),
                        n_boot=200)
    assert (row["mean 8"], row["ci_low 8"], row["ci_high 8"]) == pytest.approx((ref8["mean_diff"], ref8["ci_low"],
                                                                                ref8["ci_high"]))
    assert row["mean 16"] == pytest.approx(row["mean 8"] - 5.0) and row["shift"] == pytest.approx(-5.0)
    assert list(table.columns).index("pairs 8") < list(table.columns).index("pairs 16")  # widths in order
    missing = table.loc["se - none"]  # no none at 16 qubits
    assert missing["labels"] == 0 and missing["16 qubits"] == "not enough pairs" and math.isnan(missing["shift"])
    with pytest.raises(ValueError, match="two widths"):
        dec.width_check({8: eight})
