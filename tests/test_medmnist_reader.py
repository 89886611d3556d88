"""Tests of qdiff_lib.medmnist_reader: constructed MedMNIST results with known paired differences, read per case, per
colour/greyscale pool and against each case's ceiling; runs of two studies are never paired. No training."""

import numpy as np
import pandas as pd
import pytest

from qdiff_lib import medmnist_reader as mr
from qdiff_lib.grids import arm_of, run_key, study_runs
from qdiff_lib.metrics import calibrate

#: Constructed cases: name -> (dataset, label, colour, KID scale; floor 0, so kid_norm = kid / scale).
CASES = {"pathmnist 1": ("pathmnist", 1, True, 100.0), "retinamnist 0": ("retinamnist", 0, True, 1000.0),
         "breastmnist 1": ("breastmnist", 1, False, 1.0)}
SE = {"pathmnist 1": [100.0, 200.0, 300.0], "retinamnist 0": [100.0, 200.0, 300.0], "breastmnist 1": [1.0, 2.0, 3.0]}
#: Per-seed offsets from ``se`` of the other arms.
OFFSETS = {
    "quantum_rzry": {"pathmnist 1": [-20.0, -30.0, -40.0], "retinamnist 0": [-1.0, 1.0, 0.0],
                     "breastmnist 1": [0.1, -0.1, 0.3]},
    "none": {"pathmnist 1": [50.0, 60.0, 70.0], "retinamnist 0": [0.0, 0.0, 3.0], "breastmnist 1": [-0.9, -1.1, -1.2]},
}
#: Student t quantile t_{2, 0.975} of three pairs.
T2 = 4.302652729911275


def _frame() -> pd.DataFrame:
    """A frame as :func:`qdiff_lib.medmnist_reader.study_frame` returns it, three seeds per (case, arm)."""
    rows = []
    for case, (ds, lab, colour, scale) in CASES.items():
        for arm in ("se", "quantum_rzry", "none"):
            for seed in range(3):
                kid = SE[case][seed] + (OFFSETS[arm][case][seed] if arm != "se" else 0.0)
                rows.append({"key": f"{case}-{arm}-{seed}", "dataset": ds, "label": lab, "arm": arm, "seed": seed,
                             "kid": kid, "kid_se": 0.1 * abs(kid), "case": case, "colour": colour,
                             "kid_norm": kid / scale, "class_consistency": 0.5 + 0.1 * (arm == "quantum_rzry")})
    return pd.DataFrame(rows)


def test_cases_are_named_and_coloured():
    assert mr.case_name("pathmnist", 8) == "pathmnist 8"
    assert mr.is_colour("pathmnist") and mr.is_colour("retinamnist") and not mr.is_colour("breastmnist")
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; allowed"):
        mr.is_colour("cifar10")
    with pytest.raises(ValueError, match=r"unknown study 'mnist'; allowed: \['medmnist', 'medmnist16'\]"):
        mr.grid_keys("mnist")
    assert mr.COMPARISONS["medmnist16"] == (("quantum_rzry", "se"), ("se_cos", "se"), ("quantum_rzry", "se_cos"),
                                            ("quantum_rzry", "none"))


def _grid_frame(study: str, kid: float = 10.0) -> pd.DataFrame:
    """One row per full-profile run of ``study``, shaped as qdiff_lib.study.load_results gives it."""
    return pd.DataFrame([{"key": run_key(o), "dataset": o.dataset, "label": o.label, "arm": arm_of(o), "seed": o.seed,
                          "kid": kid, "kid_se": 1.0, "n_qubits": o.n_qubits,
                          "classifier_augment": o.classifier_augment} for o in study_runs(study, "full")])


def _record(dataset: str, label: int, floor: float, ceiling: float, augment: str) -> dict:
    def s(mean):
        return {"mean": mean, "std": 0.5, "q05": mean, "q95": mean, "draws": 4}

    return {"classifier": {"augment": augment, "file": "x.pt"}, "dataset": dataset, "label": label,
            "requested": {"seed": 0}, "n_samples": 500, "n_reference": 800, "draws": 4, "ceiling_label": 0,
            "floor": {"kid": s(floor)}, "ceiling": {"kid": s(ceiling)}, "command": "constructed"}


def test_study_frame_normalises_each_run_with_its_classifier_and_refuses_another_study(tmp_path):
    runs = _grid_frame("medmnist16")
    runs = runs[runs["dataset"].isin(["pathmnist", "breastmnist"]) & (runs["label"] == 1)]
    assert set(zip(runs["dataset"], runs["classifier_augment"], strict=True)) == {("pathmnist", "dihedral+shift"),
                                                                                  ("breastmnist", "none")}
    calibrate.write_record(_record("pathmnist", 1, 0.0, 40.0, "dihedral+shift"), tmp_path)
    calibrate.write_record(_record("breastmnist", 1, 2.0, 4.0, "none"), tmp_path)
    out = mr.study_frame(runs, "medmnist16", root=tmp_path)
    assert len(out) == len(runs) == 2 * 4 * 3
    norm = out.set_index("case")["kid_norm"]
    assert set(norm["pathmnist 1"]) == {0.25} and set(norm["breastmnist 1"]) == {4.0}  # 10/40 and (10-2)/2
    assert set(out.loc[out["case"] == "pathmnist 1", "colour"]) == {True}
    assert set(out.loc[out["case"] == "breastmnist 1", "colour"]) == {False}
    v1 = _grid_frame("medmnist")
    with pytest.raises(ValueError, match=r"45 run\(s\) are not runs of 'medmnist16'.*they are runs of 'medmnist'"):
        mr.study_frame(v1, "medmnist16", root=tmp_path)
    with pytest.raises(ValueError, match=r"no column\(s\) \['kid'\]"):
        mr.study_frame(runs.drop(columns="kid"), "medmnist16", root=tmp_path)
    with pytest.raises(ValueError, match="unknown study 'scaling'"):
        mr.study_frame(runs, "scaling")
    empty = mr.study_frame(pd.DataFrame(), "medmnist16")
    assert len(empty) == 0 and {"case", "colour", "kid_norm"} <= set(empty.columns)


def test_runs_of_two_studies_are_never_paired():
    frame = _frame()
    path = frame[frame["case"] == "pathmnist 1"].assign(classifier_augment="none")
    # the circuit's runs scored in the other study's feature space: every pair differs in its classifier
    mixed = pd.concat([path[path["arm"] != "quantum_rzry"],
                       path[path["arm"] == "quantum_rzry"].assign(classifier_augment="dihedral+shift")])
    with pytest.raises(ValueError, match="differ in 'classifier_augment'"):
        mr.case_tables(mixed, [("quantum_rzry", "se")])
    with pytest.raises(ValueError, match="do not identify one run"):  # the same (case, seed, arm) twice
        mr.case_tables(pd.concat([path, path]), [("quantum_rzry", "se")])


def test_study_status_counts_the_grid():
    s = mr.study_status(pd.DataFrame(), "medmnist16")
    assert (s["n_runs"], s["n_planned"], s["n_cases"]) == (0, 60, 5)
    assert s["arms"] == ["none", "se", "se_cos", "quantum_rzry"] and s["seeds"] == [0, 1, 2]
    assert s["cases_present"] == [] and not s["complete"]
    full = _grid_frame("medmnist")
    s = mr.study_status(full[full["seed"] < 2], "medmnist")
    assert (s["n_runs"], s["n_planned"], s["seeds_present"], s["complete"]) == (30, 45, [0, 1], False)
    assert mr.study_status(full, "medmnist")["complete"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['key'\]"):
        mr.study_status(full.drop(columns="key"), "medmnist")
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        mr.study_status(full, "medmnist", "fast")


def test_case_tables_pair_by_case_and_seed_and_pool_by_colour():
    tables = mr.case_tables(_frame(), mr.COMPARISONS["medmnist16"])
    assert list(tables) == ["breastmnist 1", "pathmnist 1", "retinamnist 0", "all colour", "all greyscale"]
    raw, norm = tables["pathmnist 1"]["kid"], tables["pathmnist 1"]["kid_norm"]
    assert list(raw.index) == ["quantum_rzry - se", "quantum_rzry - none"]  # se_cos is absent: left out
    r = raw.loc["quantum_rzry - se"]
    half = T2 * 10.0 / np.sqrt(3)
    assert r["pairs"] == 3 and r["mean diff"] == pytest.approx(-30.0)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((-30.0 - half, -30.0 + half))
    assert norm.loc["quantum_rzry - se", "mean diff"] == pytest.approx(-0.3)  # the case's scale: 100
    assert r["proposed lower"] == "3 of 3"
    assert tables["all colour"]["kid"].loc["quantum_rzry - se", "pairs"] == 6
    assert tables["all colour"]["kid_norm"].loc["quantum_rzry - se", "mean diff"] == pytest.approx(-0.15)
    assert tables["all greyscale"]["kid"].loc["quantum_rzry - se", "mean diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown arm 'classical'"):
        mr.case_tables(_frame(), [("quantum_rzry", "classical")])
    with pytest.raises(ValueError, match=r"no column\(s\) \['fid'\]"):
        mr.case_tables(_frame(), [("quantum_rzry", "se")], metrics=("kid", "fid"))


def test_paired_rows_keep_comparisons_with_two_pairs():
    frame = _frame()
    frame = frame[~((frame["case"] == "breastmnist 1") & (frame["seed"] > 0))]  # one greyscale seed left
    rows = mr.paired_rows(mr.case_tables(frame, mr.COMPARISONS["medmnist"]))
    assert set(rows["case"]) == {"pathmnist 1", "retinamnist 0", "all colour"}
    assert len(rows) == 3 * 3
    row = rows[(rows["case"] == "pathmnist 1") & (rows["comparison"] == "quantum_rzry - se")].iloc[0]
    assert row["KID difference"].startswith("-30 [") and row["normalised KID difference"].startswith("-0.3 [")
    assert row["KID lower in"] == "3 of 3" and row["class consistency difference"].startswith("0.1 [")
    with pytest.raises(ValueError, match=r"lack \['class_consistency'\]"):
        mr.paired_rows(mr.case_tables(frame, mr.COMPARISONS["medmnist"], metrics=("kid", "kid_norm")))


def test_sides_of_the_intervals():
    tables = mr.case_tables(_frame(), mr.COMPARISONS["medmnist"])
    p, b = tables["pathmnist 1"]["kid"], tables["breastmnist 1"]["kid"]
    assert mr.side_words(p.loc["quantum_rzry - se"]) == "lies below 0 (the circuit better)"
    assert mr.side_words(b.loc["quantum_rzry - none"], "qr") == "lies above 0 (qr worse)"
    assert mr.side_words(b.loc["quantum_rzry - se"]) == "contains 0"
    sides = mr.rows_by_side(tables, "quantum_rzry - none")
    assert {v: [c for c, _ in rows] for v, rows in sides.items()} == {
        "does not hold": ["breastmnist 1"], "holds": ["pathmnist 1"], "inconclusive at this power": ["retinamnist 0"]}
    assert list(mr.pooled_rows(tables, "quantum_rzry - se")) == ["all colour", "all greyscale"]
    assert mr.favouring(tables, "quantum_rzry - none") == ["pathmnist 1"]
    excluded = [(g, name) for g, name, _, _ in mr.excluded_rows(tables, skip=["quantum_rzry - none"])]
    assert excluded == [("breastmnist 1", "se - none"), ("pathmnist 1", "quantum_rzry - se"),
                        ("pathmnist 1", "se - none"), ("all greyscale", "se - none")]
    with pytest.raises(ValueError, match="must read 'a - b'"):
        mr.pooled_rows(tables, "quantum_rzry")


def test_cases_against_their_ceiling():
    frame = _frame()
    sides = mr.ceiling_sides(frame)
    # arm means of kid_norm: pathmnist 1.7 to 2.6, retinamnist 0.2 to 0.201, breastmnist 0.933 to 2.1
    assert sides["side"].to_dict() == {"breastmnist 1": "on both sides of the ceiling",
                                       "pathmnist 1": "beyond the ceiling", "retinamnist 0": "below the ceiling"}
    assert sides.loc["pathmnist 1", "lowest"] == pytest.approx(1.7)
    assert sides.loc["pathmnist 1", "highest"] == pytest.approx(2.6)
    beyond = mr.beyond_ceiling(frame)
    assert beyond["cases"] == ["pathmnist 1"] and beyond["n_cases"] == 3 and not beyond["all_runs_beyond"]
    assert (beyond["runs_low"], beyond["runs_high"]) == pytest.approx((0.8, 3.7))
    assert (beyond["means_low"], beyond["means_high"]) == pytest.approx((1.7, 2.6))
    lowered = frame.assign(kid_norm=np.where(frame["case"] == "pathmnist 1", frame["kid_norm"] / 4, frame["kid_norm"]))
    assert mr.beyond_ceiling(lowered)["cases"] == [] and np.isnan(mr.beyond_ceiling(lowered)["runs_low"])
    with pytest.raises(ValueError, match=r"no column\(s\) \['kid_norm'\]"):
        mr.ceiling_sides(frame.drop(columns="kid_norm"))


def test_pooled_comparison_weights_and_noise():
    frame = _frame()
    c = mr.pooled_comparison(frame, "quantum_rzry", "se")
    assert c["raw"]["n"] == 9 and c["raw"]["n_ties"] == 1 and c["raw"]["n_a_lower"] == 5
    assert c["raw"]["share_a_lower"] == pytest.approx(5 / 8)  # the tie (retinamnist, seed 2) is dropped
    assert c["raw"]["mean_diff"] == pytest.approx((-90.0 + 0.0 + 0.3) / 9)
    assert c["norm"]["mean_diff"] == pytest.approx((-0.9 + 0.0 + 0.3) / 9)
    assert c["verdict_raw"] == c["verdict_sign"] == "inconclusive" and c["several_datasets"]
    assert c["cases"] == ["breastmnist 1", "pathmnist 1", "retinamnist 0"]
    w = mr.pool_weights(frame, "quantum_rzry", "se")
    assert list(w["sizes"].index) == ["pathmnist 1", "breastmnist 1", "retinamnist 0"]
    assert w["sizes"].iloc[0] == pytest.approx(0.3) and w["sizes"].iloc[2] == pytest.approx(2 / 3000)
    assert w["top_are_furthest"]  # pathmnist and breastmnist have the largest mean kid_norm
    assert mr.pool_weights(frame, "se_cos", "se")["sizes"].empty
    rel = mr.relative_kid_se(frame)
    assert rel.to_dict() == pytest.approx({"breastmnist 1": 0.1, "pathmnist 1": 0.1, "retinamnist 0": 0.1})
    assert mr.relative_kid_se(frame, by=None) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown arm 'quantum'"):
        mr.pooled_comparison(frame, "quantum", "se")


def test_raw_and_normalised_pools_can_disagree():
    """Within a case the two scales give one verdict; a pool weighs the cases differently on each. Constructed: the
    circuit's pairs are consistent in raw KID but not on the normalised scale, the cosine's the other way round."""
    scales = {"pathmnist 1": 100.0, "retinamnist 0": 10000.0}
    diffs = {("pathmnist 1", "quantum_rzry"): [-50.0, -52.0, -48.0],
             ("retinamnist 0", "quantum_rzry"): [-49.0, -51.0, -50.0],
             ("pathmnist 1", "se_cos"): [-50.0, -52.0, -48.0],
             ("retinamnist 0", "se_cos"): [-4900.0, -5100.0, -5000.0]}
    rows = [{"case": case, "dataset": case.split()[0], "arm": arm, "seed": seed, "colour": True,
             "kid": 10000.0 + (diffs[(case, arm)][seed] if arm != "se" else 0.0)}
            for case in scales for arm in ("se", "quantum_rzry", "se_cos") for seed in range(3)]
    frame = pd.DataFrame(rows)
    frame["kid_norm"] = frame["kid"] / frame["case"].map(scales)
    tables = mr.case_tables(frame, mr.COMPARISONS["medmnist16"], metrics=("kid", "kid_norm"))
    raw, norm = mr.pooled_rows(tables, "quantum_rzry - se")["all colour"]
    assert mr.side_words(raw) == "lies below 0 (the circuit better)" and mr.side_words(norm) == "contains 0"
    raw, norm = mr.pooled_rows(tables, "se_cos - se")["all colour"]
    assert mr.side_words(raw) == "contains 0" and mr.side_words(norm, "se_cos") == "lies below 0 (se_cos better)"
    assert mr.favouring(tables, "quantum_rzry - se") == ["pathmnist 1", "retinamnist 0", "all colour"]
    assert mr.favouring(tables, "se_cos - se") == ["pathmnist 1", "retinamnist 0", "all colour"]
    excluded = [(g, name) for g, name, _, _ in mr.excluded_rows(tables)]
    assert ("all colour", "quantum_rzry - se") in excluded and ("all colour", "se_cos - se") in excluded
    # quantum_rzry - se_cos: 0 in pathmnist, about +4950 (+0.5 normalised) in retinamnist; pooled, neither consistent
    assert ("retinamnist 0", "quantum_rzry - se_cos") in excluded
    assert ("all colour", "quantum_rzry - se_cos") not in excluded
