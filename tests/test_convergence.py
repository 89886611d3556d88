"""qdiff_lib.convergence: the reader of stage 2 (convergence16, tuning16) on constructed summaries with known answers.

Every summary is written by :func:`qdiff_lib.study._summary` (private: the one writer of summaries) from a result
record shaped as :func:`qdiff_lib.experiment.run` writes it (with ``metrics_at`` and ``samples_at``), so that the
reader is tested through the real loader. Nothing is trained.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from qdiff_lib import convergence as cv
from qdiff_lib import study
from qdiff_lib.experiment import RunOptions
from qdiff_lib.grids import (
    CONVERGENCE_ARMS,
    CONVERGENCE_SCORE_AT,
    CONVERGENCE_SEEDS,
    CONVERGENCE_STEPS,
    TUNING_LABEL,
    TUNING_LRS,
    arm_options,
    run_key,
    study_runs,
)
from qdiff_lib.metrics import MEMORIZATION_THRESHOLD, calibration_table

REF = 2000  # the mnist16 budget of the full profile (checked against the grids below)


def _metrics(kid: float, mem: float = 0.8, seed: int = 0) -> dict:
    """What qdiff_lib.metrics.evaluate returns, reduced to the entries the reader flattens (and some it must skip)."""
    return {"kid": {"mean": kid, "se": 1.0, "subset_std": 2.0}, "fid": {"mean": kid / 10},
            "precision": {"mean": 0.5, "se": 0.01}, "recall": {"mean": 0.4, "se": 0.01},
            "class_consistency": {"mean": 0.9, "ci_low": 0.85, "ci_high": 0.95, "n": 500},
            "memorization": {"mean": mem, "ci_low": mem - 0.1, "ci_high": mem + 0.1,
                             "flag": mem > MEMORIZATION_THRESHOLD, "threshold": MEMORIZATION_THRESHOLD,
                             "copy_fraction": 0.0},
            "paper_protocol": {"n": 13}, "n_samples": 500, "n_reference": 800, "seed": seed}


def _write(root, name: str, arm: str, seed: int, kids: dict[int, float], *, label: int = 3, lr: float = 3e-4,
           mems: dict[int, float] | None = None, shas: dict[int, str] | None = None, version: int = 3,
           profile: str = "full") -> str:
    """One summary of study ``name``: scores ``kids`` (step -> KID; the last step is the run's budget)."""
    steps = sorted(kids)
    options = arm_options(arm, dataset="mnist", label=label, n_train=64, seed=seed, lr=lr, steps=steps[-1],
                          n_samples=500, n_ref=800, n_qubits=16, sample_steps=50,
                          score_at=",".join(map(str, steps[:-1])))
    mems = mems or {}
    shas = shas or {}

    def sha(k):
        return shas.get(k, f"{arm}-{seed}-{label}-{lr}-{k}")

    record = {
        "config": {"options": json.loads(json.dumps(dataclasses.asdict(options))), "quantum_backend": None},
        "metrics": _metrics(kids[steps[-1]], mems.get(steps[-1], 0.8), seed), "metrics_version": version,
        "samples": {"file": "samples.npz", "shape": [500, 1, 28, 28], "dtype": "float32", "sha256": sha(steps[-1])},
        "loss_history": [0.5] * 4, "n_parameters": {"total": 10, "trainable": 10}, "n_reference": 800,
        "timings": {"train_s": 1.0}, "device": "cpu", "versions": {}, "numerics": {"mode": "pinned", "exact": True},
        "git_commit": None, "git_dirty": False,
    }
    if steps[:-1]:
        record["metrics_at"] = {str(k): _metrics(kids[k], mems.get(k, 0.8), seed) for k in steps[:-1]}
        record["samples_at"] = {str(k): {"file": f"samples_step{k}.npz", "sha256": sha(k)} for k in steps[:-1]}
    folder = study.results_dir(profile, name, root)
    folder.mkdir(parents=True, exist_ok=True)
    key = run_key(options)
    (folder / f"{key}.json").write_text(json.dumps(study._summary(record, "test"), indent=1))
    return key


STEPS = (1000, 2000, 5000, 10000)


def _convergence(root, kid_of, mem_of=None):
    """Every convergence run: ``kid_of(arm, seed, step)``, ``mem_of(arm, seed, step)``."""
    for seed in CONVERGENCE_SEEDS:
        for arm in CONVERGENCE_ARMS:
            _write(root, "convergence16", arm, seed, {k: kid_of(arm, seed, k) for k in STEPS},
                   mems={k: mem_of(arm, seed, k) for k in STEPS} if mem_of else None)


def test_the_grids_and_the_reader_agree():
    d = cv.design("full")
    assert d["scored_steps"] == (*CONVERGENCE_SCORE_AT, CONVERGENCE_STEPS) == STEPS
    assert d["reference_step"] == REF and REF in d["scored_steps"]
    assert d["lrs"] == tuple(sorted((*TUNING_LRS, RunOptions().lr))) and cv.DEFAULT_LR == RunOptions().lr
    assert d["arms"] == CONVERGENCE_ARMS and d["seeds"] == CONVERGENCE_SEEDS and d["tuning_label"] == TUNING_LABEL
    assert d["n_convergence"] == len(study_runs("convergence16", "full"))
    assert d["n_tuning"] == len(CONVERGENCE_ARMS) * len(CONVERGENCE_SEEDS) * len(TUNING_LRS)
    ci = cv.design("ci")  # the ci grid takes the full one's path: scored at the mnist16 budget, trained past it
    assert ci["steps"] > ci["reference_step"] and ci["reference_step"] in ci["score_at"]
    with pytest.raises(ValueError, match="unknown profile 'fast'.*allowed"):
        cv.design("fast")


def test_load_scores_reads_every_step_through_the_real_loader(tmp_path):
    _write(tmp_path, "convergence16", "se", 0, {1000: 50.0, 2000: 40.0, 10000: 30.0})
    scores = cv.load_scores("full", "convergence16", tmp_path)
    assert list(scores["step"]) == [1000, 2000, 10000] and list(scores["final"]) == [False, False, True]
    assert list(scores["kid"]) == [50.0, 40.0, 30.0] and (scores["steps"] == 10000).all()
    assert (scores["arm"] == "se").all() and (scores["lr"] == 3e-4).all() and (scores["kid_se"] == 1.0).all()
    assert list(scores["samples_sha256"]) == [f"se-0-3-0.0003-{k}" for k in (1000, 2000, 10000)]
    assert "final_loss" not in scores and "paper_protocol" not in scores
    # the normalised KID is the calibration's (the repository's file for digit 3)
    floor, ceiling = calibration_table(cases=[("mnist", 3)]).loc[("mnist", 3), ["kid_floor", "kid_ceiling"]]
    assert np.allclose(scores["kid_norm"], (scores["kid"] - floor) / (ceiling - floor))
    # the final row is what load_results reads
    final = study.load_results("full", "convergence16", tmp_path)
    assert final.loc[0, "kid"] == scores.loc[scores["final"], "kid"].item()
    empty = cv.load_scores("full", "tuning16", tmp_path)
    assert empty.empty and set(cv.RUN_COLUMNS + cv.SCORE_COLUMNS) <= set(empty.columns)
    with pytest.raises(ValueError, match="unknown study 'convergence'.*allowed"):
        cv.load_scores("full", "convergence", tmp_path)


def test_a_ranking_that_flips_after_the_reference_step_does_not_survive(tmp_path):
    # seed 0: se < se_cos < quantum_rzry up to 2000, then quantum_rzry best at 10000; seed 1 keeps its order
    base = {"se": 10.0, "se_cos": 20.0, "quantum_rzry": 30.0}

    def kid(arm, seed, step):
        return 5.0 if (seed == 0 and arm == "quantum_rzry" and step == 10000) else base[arm] + step / 1000

    _convergence(tmp_path, kid)
    scores = cv.load_scores("full", "convergence16", tmp_path, normalise=False)
    r = cv.ranking_by_step(scores, "kid", reference_step=REF, steps=STEPS)
    s = r.survival.set_index("seed")
    assert s.loc[0, "survives"] is False and s.loc[0, "changed_at"] == [10000]
    assert s.loc[1, "survives"] is True and s.loc[1, "later_steps"] == 2
    assert s.loc[0, "reference_order"] == "se, se_cos, quantum_rzry"
    # seed means at 10000: se 20, se_cos 30, rzry (5 + 40) / 2 = 22.5: the order changes there too
    assert s.loc["mean", "survives"] is False and s.loc["mean", "changed_at"] == [10000]
    at = r.ranks.set_index(["seed", "step"])
    assert at.loc[(0, 10000), "order"] == "quantum_rzry, se, se_cos" and at.loc[(0, 10000), "quantum_rzry"] == 1
    assert at.loc[("mean", 10000), "order"] == "se, quantum_rzry, se_cos" and at.loc[("mean", 2000), "n_seeds"] == 2
    # higher is better reverses the ranks
    up = cv.ranking_by_step(scores, "kid", lower_is_better=False, reference_step=REF)
    assert up.ranks.set_index(["seed", "step"]).loc[(1, 2000), "order"] == "quantum_rzry, se_cos, se"
    # a missing later step is not yet known, never "survives"
    partial = cv.ranking_by_step(scores[scores["step"] < 10000], "kid", reference_step=REF, steps=STEPS)
    assert partial.survival.set_index("seed").loc[1, "survives"] is None
    with pytest.raises(ValueError, match="unknown metric 'kidd'"):
        cv.ranking_by_step(scores.assign(kidd="x"), "kidd", lower_is_better=True, reference_step=REF)
    with pytest.raises(ValueError, match="unknown arm 'classical'"):
        cv.ranking_by_step(scores, "kid", reference_step=REF, arms=("se", "classical"))


def test_step_differences_report_n_and_decide_nothing(tmp_path):
    _convergence(tmp_path, lambda arm, seed, step: {"se": 10.0, "se_cos": 12.0, "quantum_rzry": 7.0}[arm] + seed)
    scores = cv.load_scores("full", "convergence16", tmp_path, normalise=False)
    table = cv.step_differences(scores).set_index(["step", "comparison"])
    assert len(table) == len(STEPS) * len(cv.COMPARISONS)
    row = table.loc[(2000, "quantum_rzry - se")]
    assert row["n"] == 2 and row["differences"] == [-3.0, -3.0] and row["mean_diff"] == -3.0 and row["n_a_lower"] == 2
    assert "n = 2 pairs: seeds 0, 1 on digit 3" in row["note"] and "1 degree of freedom" in row["note"]
    assert table.loc[(5000, "se_cos - se"), "mean_diff"] == 2.0
    assert "verdict" not in table.columns
    one = cv.step_differences(scores[scores["seed"] == 0]).iloc[0]
    assert one["n"] == 1 and math.isnan(one["ci_low"]) and "no interval" in one["note"]


def test_memorisation_onset_is_the_first_step_above_the_threshold(tmp_path):
    t = MEMORIZATION_THRESHOLD

    def mem(arm, seed, step):
        if arm == "se":  # crosses at 5000 for seed 0, at 10000 for seed 1
            return t + 0.2 if step >= (5000 if seed == 0 else 10000) else t - 0.3
        if arm == "se_cos":
            return t  # at the threshold, never above it
        return 1.0

    _convergence(tmp_path, lambda arm, seed, step: 1.0, mem)
    scores = cv.load_scores("full", "convergence16", tmp_path, normalise=False)
    onset = cv.memorisation_onset(scores).set_index(["arm", "seed"])
    assert onset.loc[("se", 0), "onset"] == 5000 and onset.loc[("se", 1), "onset"] == 10000
    assert onset.loc[("se", "mean"), "onset"] == 10000  # the mean at 5000 is t - 0.05: not above
    assert onset.loc[("se_cos", 0), "onset"] is None and onset.loc[("quantum_rzry", "mean"), "onset"] is None
    assert onset.loc[("se", 0), "steps"] == len(STEPS) and onset.loc[("se", 0), "last"] == pytest.approx(t + 0.2)
    lower = cv.memorisation_onset(scores, threshold=0.5).set_index(["arm", "seed"])
    assert lower.loc[("quantum_rzry", 0), "onset"] == 1000
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        cv.memorisation_onset(scores, threshold=float("nan"))


def test_prefix_check_finds_equal_prefixes_and_a_mismatch(tmp_path):
    for arm in CONVERGENCE_ARMS:  # the mnist16 twins of seed 0 (and a run of another digit, which is no twin)
        _write(tmp_path, "mnist16", arm, 0, {2000: 40.0}, shas={2000: f"same-{arm}"})
        _write(tmp_path, "mnist16", arm, 0, {2000: 99.0}, label=5)
    _write(tmp_path, "convergence16", "se", 0, {1000: 50.0, 2000: 40.0, 10000: 30.0}, shas={2000: "same-se"})
    _write(tmp_path, "convergence16", "se_cos", 0, {1000: 50.0, 2000: 40.5, 10000: 30.0}, shas={2000: "same-se_cos"})
    _write(tmp_path, "convergence16", "quantum_rzry", 0, {1000: 50.0, 2000: 40.0, 10000: 30.0})
    _write(tmp_path, "convergence16", "se", 1, {1000: 50.0, 2000: 40.0, 10000: 30.0})
    conv = cv.load_scores("full", "convergence16", tmp_path)
    twins = cv.load_scores("full", "mnist16", tmp_path)
    check = cv.prefix_check(conv, twins).set_index(["arm", "seed"])
    assert check.loc[("se", 0), "status"] == "equal" and check.loc[("se", 0), "equal"]
    assert check.loc[("se", 0), "same_samples"] and check.loc[("se", 0), "step"] == 2000
    assert check.loc[("se_cos", 0), "status"] == "different scores" and not check.loc[("se_cos", 0), "equal"]
    assert set(check.loc[("se_cos", 0), "differing"].split(", ")) == {"kid", "kid_norm", "fid"}
    assert check.loc[("quantum_rzry", 0), "status"] == "different samples"
    assert check.loc[("se", 1), "status"] == "no mnist16 run"
    # a tolerance for other machines: 0.5 in 40 is within 2 %
    loose = cv.prefix_check(conv, twins, rtol=0.02).set_index(["arm", "seed"])
    assert loose.loc[("se_cos", 0), "status"] == "equal"
    with pytest.raises(ValueError, match="rtol must be a finite number"):
        cv.prefix_check(conv, twins, rtol=-1)
    assert cv.prefix_check(conv.iloc[:0], twins).empty


def test_prefix_check_flags_different_metrics_versions(tmp_path):
    _write(tmp_path, "mnist16", "se", 0, {2000: 40.0}, shas={2000: "x"}, version=2)
    _write(tmp_path, "convergence16", "se", 0, {2000: 40.0, 10000: 30.0}, shas={2000: "x"})
    check = cv.prefix_check(cv.load_scores("full", "convergence16", tmp_path, normalise=False),
                            cv.load_scores("full", "mnist16", tmp_path, normalise=False))
    assert check.loc[0, "status"] == "metrics versions differ" and check.loc[0, "versions"] == "3/2"


def _tuning(root, kid_of):
    """tuning16 runs and their default-rate mnist16 twins: ``kid_of(arm, lr, seed)``."""
    for seed in CONVERGENCE_SEEDS:
        for arm in CONVERGENCE_ARMS:
            for lr in TUNING_LRS:
                _write(root, "tuning16", arm, seed, {2000: kid_of(arm, lr, seed)}, label=TUNING_LABEL, lr=lr)
            _write(root, "mnist16", arm, seed, {2000: kid_of(arm, cv.DEFAULT_LR, seed)}, label=TUNING_LABEL)
            _write(root, "mnist16", arm, seed, {2000: 1.0}, label=3)  # another digit: never borrowed


def test_tuning_picks_each_arms_best_rate_and_compares_the_rankings(tmp_path):
    best = {"se": 1e-3, "se_cos": 1e-4, "quantum_rzry": cv.DEFAULT_LR}
    at_default = {"se": 30.0, "se_cos": 20.0, "quantum_rzry": 10.0}

    def kid(arm, lr, seed):
        if np.isclose(lr, best[arm]):
            return {"se": 5.0, "se_cos": 8.0, "quantum_rzry": 10.0}[arm] + seed
        return at_default[arm] + seed if np.isclose(lr, cv.DEFAULT_LR) else 50.0

    _tuning(tmp_path, kid)
    tuning = cv.load_scores("full", "tuning16", tmp_path, normalise=False)
    mnist16 = cv.load_scores("full", "mnist16", tmp_path, normalise=False)
    table = cv.tuning_table(tuning, mnist16)
    assert len(table) == len(CONVERGENCE_ARMS) * 3 and table["complete"].all() and (table["n_seeds"] == 2).all()
    cell = table.set_index(["arm", "lr"])
    assert cell.loc[("se", cv.DEFAULT_LR), "source"] == "mnist16" and cell.loc[("se", cv.DEFAULT_LR), "mean"] == 30.5
    assert cell.loc[("se", 1e-3), "values"] == [5.0, 6.0]
    assert cv.tuned_lr(table) == best
    ranked = cv.tuned_ranking(table)
    assert ranked.same_order is False  # default: rzry < se_cos < se; tuned: se < se_cos < rzry
    assert list(ranked.table["default_rank"]) == [3, 2, 1] and list(ranked.table["tuned_rank"]) == [1, 2, 3]
    # a missing seed leaves the arm without a tuned rate, and the comparison open
    partial = cv.tuning_table(tuning[~((tuning["arm"] == "se") & (tuning["seed"] == 1))], mnist16,
                              seeds=CONVERGENCE_SEEDS)
    assert cv.tuned_lr(partial)["se"] is None and cv.tuned_ranking(partial).same_order is None


def test_tuning_ties_go_to_the_default_rate_and_bad_inputs_are_named(tmp_path):
    _tuning(tmp_path, lambda arm, lr, seed: 10.0)  # every rate ties
    tuning = cv.load_scores("full", "tuning16", tmp_path, normalise=False)
    mnist16 = cv.load_scores("full", "mnist16", tmp_path, normalise=False)
    table = cv.tuning_table(tuning, mnist16)
    assert set(cv.tuned_lr(table).values()) == {cv.DEFAULT_LR}
    assert cv.tuned_ranking(table).same_order is True
    with pytest.raises(ValueError, match=r"learning rate\(s\) \[0.005\]; allowed"):
        cv.tuning_table(tuning.assign(lr=0.005), mnist16)
    with pytest.raises(ValueError, match=r"digit\(s\) \[3\]; allowed: \[5\]"):
        cv.tuning_table(tuning.assign(label=3), mnist16)
    with pytest.raises(ValueError, match="no column"):
        cv.tuning_table(tuning.drop(columns="lr"), mnist16)
    empty = cv.tuning_table(cv.load_scores("full", "tuning16", tmp_path / "none"), mnist16.iloc[:0])
    assert not empty["complete"].any() and empty["mean"].isna().all()
    assert all(v is None for v in cv.tuned_lr(empty).values())


def test_plot_by_step_draws_one_line_per_arm_and_refuses_nothing_to_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    _convergence(tmp_path, lambda arm, seed, step: 10.0 + seed)
    scores = cv.load_scores("full", "convergence16", tmp_path, normalise=False)
    fig = cv.plot_by_step(scores, reference_step=REF)
    per_arm = 1 + len(CONVERGENCE_SEEDS)  # the line of the seed means and each seed's markers
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == len(CONVERGENCE_ARMS) * per_arm + 1  # + reference
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="no scores"):
        cv.plot_by_step(pd.DataFrame(columns=cv.RUN_COLUMNS + cv.SCORE_COLUMNS))


def test_tuning_cells_need_every_planned_seed_once_and_repeats_are_refused(tmp_path):
    _tuning(tmp_path, lambda arm, lr, seed: 10.0 + seed)
    tuning = cv.load_scores("full", "tuning16", tmp_path, normalise=False)
    mnist16 = cv.load_scores("full", "mnist16", tmp_path, normalise=False)
    # only seed 0 committed: by default the cells wait for the full grid's seeds, so no rate is chosen yet
    first = cv.tuning_table(tuning[tuning["seed"] == 0], mnist16[mnist16["seed"] == 0])
    assert not first["complete"].any() and all(v is None for v in cv.tuned_lr(first).values())
    # a score that is not finite leaves its cell incomplete
    gap = tuning.copy()
    gap.loc[(gap["arm"] == "se") & (gap["seed"] == 1) & np.isclose(gap["lr"], 1e-3), "kid"] = np.nan
    assert cv.tuned_lr(cv.tuning_table(gap, mnist16))["se"] is None
    # an older run of the same cell and seed is refused, not averaged or picked by file order
    with pytest.raises(ValueError, match=r"scored by metrics versions \[2, 3\]"):
        cv.tuning_table(tuning, mnist16.assign(metrics_version=2))
    with pytest.raises(ValueError, match="several runs of se at learning rate 0.001 with seed"):
        cv.tuning_table(pd.concat([tuning, tuning[(tuning["arm"] == "se") & np.isclose(tuning["lr"], 1e-3)
                                                  & (tuning["seed"] == 0)]]), mnist16)


def test_a_repeated_run_is_refused_by_the_ranking_and_the_onset(tmp_path):
    _convergence(tmp_path, lambda arm, seed, step: {"se": 1.0, "se_cos": 2.0, "quantum_rzry": 3.0}[arm])
    scores = cv.load_scores("full", "convergence16", tmp_path, normalise=False)
    older = scores[(scores["arm"] == "quantum_rzry") & (scores["seed"] == 0)].assign(kid=0.5, key="older")
    for call in (lambda f: cv.ranking_by_step(f, reference_step=REF), cv.memorisation_onset):
        call(scores)  # one run each: fine
        with pytest.raises(ValueError, match="expected one run each"):
            call(pd.concat([scores, older]))
