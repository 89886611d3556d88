"""qdiff_lib.released: the reader of stage 5 (released16 and its mnist16 twins) on constructed summaries and frames
with known answers. Summaries are written by :func:`qdiff_lib.study._summary` (the one writer of summaries), so
that the loader is tested through the real files' shape. Nothing is trained.
"""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from qdiff_lib import released as rl
from qdiff_lib import study
from qdiff_lib.grids import MNIST16_ARMS, PAPER_N_QUBITS, PROFILES, RELEASED16_ARMS, arm_of, run_key, study_runs

matplotlib.use("Agg")


def _write(root, name: str, options, kid: float, *, version: int = 3, key: str | None = None) -> str:
    """One summary of study ``name`` for ``options`` with KID ``kid`` (file name ``key``, default the run's)."""
    record = {
        "config": {"options": json.loads(json.dumps(dataclasses.asdict(options))), "quantum_backend": None},
        "metrics": {"kid": {"mean": kid, "se": 1.0}, "fid": {"mean": kid / 10}, "n_samples": 500, "seed": 0},
        "metrics_version": version, "samples": None, "loss_history": [0.5] * 4,
        "n_parameters": {"total": 10, "trainable": 10}, "n_reference": 800, "timings": {"train_s": 1.0},
        "device": "cpu", "versions": {}, "numerics": {"mode": "pinned", "exact": True}, "git_commit": None,
        "git_dirty": False,
    }
    folder = study.results_dir("full", name, root)
    folder.mkdir(parents=True, exist_ok=True)
    key = key or run_key(options)
    (folder / f"{key}.json").write_text(json.dumps(study._summary(record, "test")))
    return key


def _released(label: int):
    return [o for o in study_runs("released16", "full") if o.label == label]


def _frame(values: dict[str, list[float]], seed: int = 0) -> pd.DataFrame:
    """One row per (arm, digit): ``values[arm][digit]`` (NaN: no run)."""
    return pd.DataFrame([{"arm": arm, "label": d, "seed": seed, "kid": v} for arm, vs in values.items()
                         for d, v in enumerate(vs) if not math.isnan(v)])


def test_the_design_is_the_grid():
    d = rl.design("full")
    assert d["arms"] == RELEASED16_ARMS and d["twin_arms"] == ("se", "quantum_paper")
    assert d["digits"] == tuple(range(10)) == PROFILES["full"].digits and d["seeds"] == (PROFILES["full"].seeds[0],)
    assert d["n_qubits"] == PAPER_N_QUBITS and d["steps"] == PROFILES["full"].steps
    assert d["n_runs"] == 20 and d["n_pairs"] == 10
    assert set(rl.TWIN_OF.values()) <= set(MNIST16_ARMS)
    ci = rl.design("ci")
    assert ci["n_qubits"] == PROFILES["ci"].n_qubits and ci["n_pairs"] == len(PROFILES["ci"].digits)
    with pytest.raises(ValueError, match="unknown profile 'fast'.*allowed"):
        rl.design("fast")


def test_a_twin_differs_from_its_released_run_in_the_arm_only():
    for o in study_runs("released16", "full"):
        twin = rl.twin_options(o)
        assert arm_of(twin) == rl.TWIN_OF[arm_of(o)]
        a, b = dataclasses.asdict(o), dataclasses.asdict(twin)
        assert {k for k in a if a[k] != b[k]} <= set(rl.ARM_FIELDS) and a != b
    se = study_runs("mnist16", "full")[0]
    with pytest.raises(ValueError, match="unknown released arm 'se'.*allowed.*se_frozen"):
        rl.twin_options(se)


def test_every_twin_is_planned_by_mnist16_with_seed_0(monkeypatch):
    for profile in ("full", "ci"):
        twins = rl.check_twins(profile)
        assert len(twins) == len(study_runs("released16", profile)) == len(set(twins.values()))
        planned = {run_key(o): o for o in study_runs("mnist16", profile)}
        assert all(planned[k].seed == 0 for k in twins.values())
    grid = rl.study_runs  # a mnist16 grid without the paper's circuit lacks half the twins

    def without_paper(study_name, profile_name):
        runs = grid(study_name, profile_name)
        return [o for o in runs if arm_of(o) != "quantum_paper"] if study_name == "mnist16" else runs

    monkeypatch.setattr(rl, "study_runs", without_paper)
    with pytest.raises(ValueError, match=r"mnist16 \(full\) plans no run \['mnist-l0-n64-quantum_paper-s0-"):
        rl.check_twins("full")


def test_load_runs_joins_the_twins_and_nothing_else(tmp_path):
    for o in _released(3):
        _write(tmp_path, "released16", o, 20.0)
        _write(tmp_path, "mnist16", rl.twin_options(o), 10.0)
    _write(tmp_path, "mnist16", rl.twin_options(dataclasses.replace(_released(3)[0], seed=1)), 99.0)  # other seed
    other = next(o for o in study_runs("mnist16", "full") if o.label == 3 and arm_of(o) == "quantum_rzry")
    _write(tmp_path, "mnist16", other, 99.0)  # an arm the reading does not pair
    frame = rl.load_runs("full", tmp_path, normalise=False)
    assert sorted(zip(frame["study"], frame["arm"], strict=True)) == [
        ("mnist16", "quantum_paper"), ("mnist16", "se"), ("released16", "quantum_paper_released"),
        ("released16", "se_frozen")]
    assert set(frame["kid"]) == {10.0, 20.0} and (frame["seed"] == 0).all() and frame["design"].nunique() == 1
    assert (frame["n_qubits"] == PAPER_N_QUBITS).all() and (frame["metrics_version"] == 3).all()
    empty = rl.load_runs("full", tmp_path / "none", normalise=False)
    assert empty.empty and {"arm", "label", "seed", "kid", "design"} <= set(empty.columns)


def test_load_runs_refuses_what_does_not_match(tmp_path, monkeypatch):
    o = _released(4)[0]
    _write(tmp_path / "a", "released16", dataclasses.replace(o, seed=1), 1.0)  # not in the grid
    with pytest.raises(ValueError, match="not a planned released16 run"):
        rl.load_runs("full", tmp_path / "a", normalise=False)
    _write(tmp_path / "b", "released16", dataclasses.replace(o, n_samples=400), 1.0, key=run_key(o))  # misnamed
    with pytest.raises(ValueError, match="holds the options of run"):
        rl.load_runs("full", tmp_path / "b", normalise=False)
    _write(tmp_path / "c", "released16", o, 1.0, version=3)
    _write(tmp_path / "c", "mnist16", rl.twin_options(o), 1.0, version=2)
    with pytest.raises(ValueError, match="different metrics versions"):
        rl.load_runs("full", tmp_path / "c", normalise=False)
    # a twin map that pointed at a run with other budgets would be caught by the design check
    odd = rl.twin_options(dataclasses.replace(o, n_samples=400))
    _write(tmp_path / "d", "released16", o, 1.0)
    _write(tmp_path / "d", "mnist16", odd, 1.0)
    monkeypatch.setattr(rl, "check_twins", lambda profile_name: {run_key(o): run_key(odd)})
    with pytest.raises(ValueError, match="differ in more than the arm"):
        rl.load_runs("full", tmp_path / "d", normalise=False)


E = [1.0, -1.0] * 5  # sd sqrt(10/9): t = mean * sqrt(10) / sd = 3 * mean


def test_the_table_has_the_known_answers():
    base = [10.0 + d for d in range(10)]
    values = {"se_frozen": base,
              "quantum_paper_released": [b - 3 + e for b, e in zip(base, E, strict=True)],  # 3 lower: t = -9
              "quantum_paper": [b - 3 + e + 0.1 * e for b, e in zip(base, E, strict=True)],  # mean 0: no direction
              "se": [b + 3 + e for b, e in zip(base, E, strict=True)]}  # 3 higher
    table = rl.comparison_table(_frame(values), planned=10).set_index("comparison")
    assert list(table.index) == [f"{a} - {b}" for a, b in rl.COMPARISONS]
    r = table.loc["quantum_paper_released - se_frozen"]
    half = sps.t.ppf(0.975, 9) * np.std(E, ddof=1) / math.sqrt(10)
    assert r["n"] == 10 and r["planned"] == 10 and math.isclose(r["mean_diff"], -3.0)
    assert math.isclose(r["ci_low"], -3 - half) and math.isclose(r["ci_high"], -3 + half)
    assert r["n_a_lower"] == 10 and r["a_lower"] == "10 of 10 digits"
    assert r["reading"] == "quantum_paper_released lower than se_frozen (interval below 0)"
    z = table.loc["quantum_paper - quantum_paper_released"]
    assert math.isclose(z["mean_diff"], 0.0, abs_tol=1e-12) and z["n_a_lower"] == 5
    assert z["reading"] == "no direction shown (interval contains 0)"
    s = table.loc["se - se_frozen"]
    assert s["n_a_lower"] == 0 and s["reading"] == "se higher than se_frozen (interval above 0)"
    p = table["t_p"].to_numpy()  # Holm over the three: the smallest times 3, the next times 2, the last as it is
    order = np.argsort(p)
    expected = np.maximum.accumulate(np.minimum(1, p[order] * [3, 2, 1]))
    assert np.allclose(table["holm_p"].to_numpy()[order], expected)
    assert table.loc["quantum_paper - quantum_paper_released", "question"].startswith("does training the squeeze")


def test_a_direction_that_holm_does_not_keep_says_so():
    base = [10.0] * 10
    values = {"se_frozen": base, "quantum_paper_released": [b - 0.86 + e for b, e in zip(base, E, strict=True)],
              "se": [b + 0.8 + e for b, e in zip(base, E, strict=True)]}  # t about -2.6 and 2.4: p 0.03 and 0.04
    table = rl.comparison_table(_frame(values), comparisons=[("quantum_paper_released", "se_frozen"),
                                                             ("se", "se_frozen")]).set_index("comparison")
    assert (table["t_p"] < 0.05).all() and (table["holm_p"] >= 0.05).all()
    assert table.loc["se - se_frozen", "reading"].endswith("(interval above 0, before Holm's correction only)")


def test_pending_and_partial_tables():
    nan = math.nan
    frame = _frame({"se_frozen": [1.0, 2.0, nan], "quantum_paper_released": [0.5, nan, 1.0], "se": [1.0]})
    table = rl.comparison_table(frame, planned=10).set_index("comparison")
    r = table.loc["quantum_paper_released - se_frozen"]
    assert r["n"] == 1 and r["reading"] == "pending (1 of 10 pairs)" and math.isnan(r["ci_low"])
    assert r["mean_diff"] == -0.5 and r["a_lower"] == "1 of 1 digit" and math.isnan(r["holm_p"])
    assert table.loc["quantum_paper - quantum_paper_released", "reading"] == "pending (0 of 10 pairs)"
    assert table.loc["se - se_frozen", "reading"] == "pending (1 of 10 pairs)"
    assert table.loc["se - se_frozen", ["n_a_lower", "n_ties"]].tolist() == [0, 1]  # a tie is not "lower"
    assert rl.comparison_table(frame).loc[0, "reading"] == "pending (1 pair)"
    d = rl.differences(frame)
    assert list(zip(d["comparison"], d["label"], d["difference"], strict=True)) == [
        ("quantum_paper_released - se_frozen", 0, -0.5), ("se - se_frozen", 0, 0.0)]


def test_bad_input_names_the_value_and_the_allowed_ones():
    frame = _frame({"se_frozen": [1.0, 2.0], "se": [1.0, 3.0]})
    with pytest.raises(ValueError, match=r"seeds \[0, 1\], allowed: one seed"):
        rl.comparison_table(pd.concat([frame, frame.assign(seed=1)]))
    with pytest.raises(ValueError, match="unknown arm 'tanh'.*allowed"):
        rl.comparison_table(frame, comparisons=[("tanh", "se")])
    with pytest.raises(ValueError, match=r"no column\(s\) \['fid'\]; allowed"):
        rl.comparison_table(frame, "fid")
    with pytest.raises(ValueError, match="alpha must lie in"):
        rl.comparison_table(frame, alpha=1.5)
    with pytest.raises(ValueError, match="planned must be a count"):
        rl.comparison_table(frame, planned=-1)


def test_the_figure_draws_one_marker_per_pair():
    frame = _frame({"se_frozen": [1.0, 2.0, 3.0], "quantum_paper_released": [0.5, 2.5, 3.0], "se": [1.0, 1.0, 1.0]})
    fig = rl.plot_differences(frame)
    lines = [line for line in fig.axes[0].get_lines() if line.get_linestyle() == "None"]
    assert sorted(len(line.get_xdata()) for line in lines) == [3, 3]
    assert fig.axes[0].get_xlabel() == "digit"
    with pytest.raises(ValueError, match="no pair to plot"):
        rl.plot_differences(_frame({"se_frozen": [1.0]}))


def test_holm_counts_the_whole_family_while_comparisons_are_pending():
    """An untested comparison enters Holm's family with p = 1: the first comparison's Holm p is its t p times the
    three planned comparisons, not times the one tested so far."""
    first = [0.1 * d - 0.05 for d in range(10)]  # quantum_paper_released lower on every digit, by varying amounts
    frame = _frame({"se_frozen": [1.0] * 10, "quantum_paper_released": [1.0 - 0.5 - x for x in first],
                    "quantum_paper": [0.7] + [math.nan] * 9, "se": [1.0] + [math.nan] * 9})
    table = rl.comparison_table(frame, planned=10).set_index("comparison")
    r = table.loc["quantum_paper_released - se_frozen"]
    assert r["n"] == 10 and np.isfinite(r["t_p"]) and r["holm_p"] == pytest.approx(min(1.0, 3 * r["t_p"]))
    assert math.isnan(table.loc["se - se_frozen", "holm_p"])
