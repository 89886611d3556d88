"""Tests of the normalised KID of the experiment chapters (qdiff_lib.metrics.scale) and of the command that
computes each class's floor and ceiling (qdiff_lib.metrics.calibrate, ``python -m qdiff_lib calibrate``):
constructed calibration files (0 at the floor, 1 at the ceiling, a run summary's normalised KID, paired
differences and their pooling over classes, the error of a missing file), the classes taken from the grids, the
command's checks and resumption, and one committed file recomputed exactly."""

import json

import numpy as np
import pandas as pd
import pytest

from qdiff_lib import cli, metrics
from qdiff_lib.classifier import cache_dir, weights_sha256
from qdiff_lib.grids import MEDMNIST_CASES
from qdiff_lib.metrics import calibrate, scale
from qdiff_lib.paired_tables import comparison_table

#: Constructed scales: (dataset, label) -> (KID floor, KID ceiling). Deliberately different widths.
SCALES = {("mnist", 3): (2.0, 12.0), ("mnist", 5): (-1.0, 399.0)}


def _summary(mean: float, std: float = 0.5) -> dict:
    return {"mean": mean, "std": std, "q05": mean - std, "q95": mean + std, "draws": 4}


def _record(dataset: str, label: int, floor: float, ceiling: float, augment: str | None = None) -> dict:
    """A calibration record shaped as ``python -m qdiff_lib calibrate`` writes it (``augment`` None: as written
    before the classifier's augmentation was recorded)."""
    return {**({} if augment is None else {"classifier": {"augment": augment, "file": "x.pt"}}),
            "dataset": dataset, "label": label, "requested": {"n_samples": 500, "n_reference": 800, "draws": 4,
                                                              "seed": 0, "ceiling": "nearest"},
            "studies": ["mnist"], "n_samples": 500, "n_reference": 800, "draws": 4, "ceiling_rule": "nearest",
            "ceiling_label": 8, "ceiling_source": "test",
            "floor": {"kid": _summary(floor), "precision": _summary(0.8, 0.01)},
            "ceiling": {"kid": _summary(ceiling, 3.0), "precision": _summary(0.2, 0.01)},
            "kid_by_class": {"8": ceiling}, "classifier_test_accuracy": 0.99, "command": "constructed"}


@pytest.fixture
def cal_root(tmp_path):
    root = tmp_path / "calibration"
    for (ds, lab), (f, c) in SCALES.items():
        calibrate.write_record(_record(ds, lab, f, c), root)
    return root


def test_files_are_read_into_a_table(cal_root):
    table = scale.calibration_table(cal_root)
    assert list(table.index) == [("mnist", 3), ("mnist", 5)]
    assert set(table["classifier_augment"]) == {"none"}
    assert table.loc[("mnist", 3), "kid_floor"] == 2.0 and table.loc[("mnist", 3), "kid_ceiling"] == 12.0
    assert table.loc[("mnist", 5), "kid_scale"] == 400.0
    assert table.loc[("mnist", 3), "precision_floor"] == 0.8 and table.loc[("mnist", 3), "kid_ceiling_std"] == 3.0
    assert scale.load_calibration("mnist", 3, cal_root)["ceiling_label"] == 8
    assert list(scale.calibration_table(cal_root, [("mnist", 5)]).index) == [("mnist", 5)]


def test_normalised_kid_is_0_at_the_floor_and_1_at_the_ceiling(cal_root):
    frame = pd.DataFrame({"dataset": "mnist", "digit": [3, 3, 3, 5, 5, 5], "kid": [2.0, 12.0, 7.0, -1.0, 399.0, 99.0],
                          "kid_se": [1.0, 1.0, 1.0, 40.0, 40.0, 40.0]})
    out = scale.add_normalised_kid(frame, root=cal_root, label="digit")
    assert out["kid_norm"].tolist() == [0.0, 1.0, 0.5, 0.0, 1.0, 0.25]
    assert out["kid_norm_se"].tolist() == [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert "kid_norm" not in frame  # the input is left as it is
    # below the floor is negative, beyond the ceiling above 1: no clipping
    beyond = scale.add_normalised_kid(frame.assign(kid=[-3.0, 22.0, 7, 0, 0, 0]), root=cal_root, label="digit")
    assert beyond["kid_norm"].iloc[:2].tolist() == [-0.5, 2.0]


def test_an_arms_normalised_kid_comes_from_its_run_summary_and_its_class_file(cal_root):
    summary = {"options": {"dataset": "mnist", "label": 5, "n_train": 64}, "metrics": {"kid": {"mean": 199.0,
                                                                                           "se": 20.0}}}
    got = metrics.normalised_kid(summary, root=cal_root)
    assert got == {"mean": 0.5, "se": 0.05, "floor": -1.0, "ceiling": 399.0}
    assert metrics.normalised_kid({**summary, "metrics": {"kid": {"mean": -1.0}}}, root=cal_root)["se"] is None


def test_a_paired_difference_is_the_kid_difference_over_the_class_scale_and_pools_by_pair(cal_root):
    # two arms on two digits, two seeds each: a - b is 1 and 1.1 KID units on digit 3 (scale 10), 40 and 44 on digit 5
    # (scale 400)
    rows = []
    for digit, (base, gap) in {3: (5.0, 1.0), 5: (100.0, 40.0)}.items():
        for seed in (0, 1):
            rows += [{"dataset": "mnist", "digit": digit, "seed": seed, "arm": "a",
                      "kid": base + gap * (1 + 0.1 * seed) + seed},
                     {"dataset": "mnist", "digit": digit, "seed": seed, "arm": "b", "kid": base + seed}]
    frame = scale.add_normalised_kid(pd.DataFrame(rows), root=cal_root, label="digit")
    wide = frame.pivot_table(index=["digit", "seed"], columns="arm", values=["kid", "kid_norm"])
    diff_norm = wide[("kid_norm", "a")] - wide[("kid_norm", "b")]
    table = scale.calibration_table(cal_root)
    expected = [scale.normalised_difference(wide.loc[k, ("kid", "a")] - wide.loc[k, ("kid", "b")], table, "mnist", k[0])
                for k in wide.index]
    np.testing.assert_allclose(diff_norm.to_numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(expected, [0.1, 0.11, 0.1, 0.11], rtol=1e-12)  # the floor cancels
    raw = comparison_table(frame, [("a", "b")], "kid", ("digit", "seed"), count="digit")
    norm = comparison_table(frame, [("a", "b")], "kid_norm", ("digit", "seed"), count="digit")
    assert raw.loc["a - b", "mean diff"] == pytest.approx(21.525)  # raw: digit 5's wide scale dominates
    assert norm.loc["a - b", "mean diff"] == pytest.approx(0.105)  # normalised: every pair by its share of its scale
    joined = scale.join_normalised(raw, norm)
    assert joined.loc["a - b", "normalised mean diff"] == pytest.approx(0.105)
    assert joined.loc["a - b", "normalised 95% CI"] == norm.loc["a - b", "95% CI"]
    assert joined.loc["a - b", "mean diff"] == raw.loc["a - b", "mean diff"]
    with pytest.raises(ValueError, match="different comparisons"):
        scale.join_normalised(raw, norm.rename(index={"a - b": "b - a"}))


def test_a_missing_calibration_file_names_the_command_to_run(cal_root):
    with pytest.raises(metrics.MissingCalibration, match=r"python -m qdiff_lib calibrate --dataset mnist --label 7"):
        scale.load_calibration("mnist", 7, cal_root)
    frame = pd.DataFrame({"dataset": "mnist", "label": [3, 7, 9], "kid": [1.0, 2.0, 3.0]})
    with pytest.raises(FileNotFoundError, match=r"mnist label 7, mnist label 9 .*--dataset mnist --label 9 --out"):
        scale.add_normalised_kid(frame, root=cal_root)
    with pytest.raises(metrics.MissingCalibration, match="--label 7"):
        scale.add_normalised_kid(frame, scale.calibration_table(cal_root))
    assert scale.calibrate_command("mnist", 7) == "python -m qdiff_lib calibrate --dataset mnist --label 7"


def test_the_default_calibration_path_is_unchanged_and_an_augmented_classifier_has_its_own():
    assert scale.calibration_path("retinamnist", 0) == scale.CALIBRATION_DIR / "retinamnist-l0.json"
    assert scale.calibration_path("retinamnist", 0, augment="none") == scale.CALIBRATION_DIR / "retinamnist-l0.json"
    assert scale.calibration_path("retinamnist", 0, augment="flips") == (scale.CALIBRATION_DIR /
                                                                          "retinamnist-l0+flips.json")
    assert scale.calibration_path("pathmnist", 1, "/x", "dihedral+shift").name == "pathmnist-l1+dihedral+shift.json"
    assert scale.calibrate_command("retinamnist", 0) == "python -m qdiff_lib calibrate --dataset retinamnist --label 0"
    assert scale.calibrate_command("retinamnist", 0, augment="flips") == (
        "python -m qdiff_lib calibrate --dataset retinamnist --label 0 --classifier-augment flips")
    with pytest.raises(ValueError, match="unknown classifier augmentation 'rotate'"):
        scale.calibration_path("retinamnist", 0, augment="rotate")
    # every committed file is a default classifier's, under its old name
    for path in sorted(scale.CALIBRATION_DIR.glob("*-l*.json")):
        record = json.loads(path.read_text())
        assert scale.calibration_path(record["dataset"], record["label"], augment=scale.record_augment(record)) == path


def test_each_run_is_normalised_with_the_calibration_of_its_classifier(cal_root):
    calibrate.write_record(_record("mnist", 3, 4.0, 24.0, augment="flips"), cal_root)
    assert (cal_root / "mnist-l3+flips.json").exists() and (cal_root / "mnist-l3.json").exists()
    # the default table is unchanged by the other classifier's file beside it
    assert list(scale.calibration_table(cal_root).index) == [("mnist", 3), ("mnist", 5)]
    flips = scale.calibration_table(cal_root, augment="flips")
    assert list(flips.index) == [("mnist", 3)] and flips.loc[("mnist", 3), "kid_scale"] == 20.0
    assert scale.load_calibration("mnist", 3, cal_root, augment="flips")["floor"]["kid"]["mean"] == 4.0
    frame = pd.DataFrame({"dataset": "mnist", "label": [3, 3, 5], "kid": [14.0, 7.0, 199.0],
                          "classifier_augment": ["flips", None, "none"]})
    out = scale.add_normalised_kid(frame, root=cal_root)
    assert out["kid_norm"].tolist() == [0.5, 0.5, 0.5]  # (14-4)/20 with flips; (7-2)/10 and (199+1)/400 default
    assert scale.add_normalised_kid(frame.drop(columns="classifier_augment"), root=cal_root)["kid_norm"].iloc[0] == 1.2
    with pytest.raises(ValueError, match=r"classifier with augmentation 'none'.*trained with \['flips'\]"):
        scale.add_normalised_kid(frame, scale.calibration_table(cal_root))
    with pytest.raises(metrics.MissingCalibration,
                       match=r"mnist label 5 \(classifier flips\).*--classifier-augment flips"):
        scale.add_normalised_kid(frame.assign(classifier_augment="flips"), root=cal_root)
    summary = {"options": {"dataset": "mnist", "label": 3, "classifier_augment": "flips"},
               "metrics": {"kid": {"mean": 14.0, "se": 2.0}}}
    assert metrics.normalised_kid(summary, root=cal_root) == {"mean": 0.5, "se": 0.1, "floor": 4.0, "ceiling": 24.0}
    with pytest.raises(ValueError, match="scored by the classifier with augmentation 'flips'"):
        metrics.normalised_kid(summary, scale.calibration_table(cal_root))
    (cal_root / "mnist-l3.json").write_text((cal_root / "mnist-l3+flips.json").read_text())
    with pytest.raises(ValueError, match=r"holds mnist label 3 \(classifier flips\), not mnist label 3 \(classifier "):
        scale.load_calibration("mnist", 3, cal_root)


def test_the_classes_come_from_the_studies_at_their_sizes():
    cases = calibrate.calibration_cases()
    # every class the studies use has the default classifier's file; medmnist16's cases also their adopted one's
    retina = cases[("retinamnist", 0)]
    assert retina["augments"] == {"none": ["medmnist"], "flips": ["medmnist16"]}
    assert cases[("mnist", 3)]["augments"] == {"none": cases[("mnist", 3)]["studies"]}
    assert calibrate.calibration_files(cases, [("retinamnist", 0), ("mnist", 3)]) == [
        ("retinamnist", 0, "none"), ("retinamnist", 0, "flips"), ("mnist", 3, "none")]
    assert calibrate.calibration_files(cases, [("retinamnist", 0), ("mnist", 3)], "flips") == [
        ("retinamnist", 0, "flips"), ("mnist", 3, "flips")]
    assert {(ds, lab) for ds, lab in cases if ds == "mnist"} == {("mnist", d) for d in range(10)}
    assert {c for c in cases if c[0] != "mnist"} == set(MEDMNIST_CASES)
    assert cases[("mnist", 3)]["n_samples"] == 500 and cases[("mnist", 3)]["n_reference"] == 800
    assert {"mnist", "mnist16", "scaling16"} <= set(cases[("mnist", 3)]["studies"])
    assert cases[("pathmnist", 1)]["n_reference"] == 1000 and cases[("pathmnist", 1)]["studies"] == ["medmnist",
                                                                                                     "medmnist16"]
    # the floor and ceiling come from where the runs' reference comes from: medmnist16 draws every held-out image
    assert {(c["reference_pool"], c["n_train"]) for (ds, _), c in cases.items() if ds == "mnist"} == {("test", 0)}
    assert {(c["reference_pool"], c["n_train"]) for (ds, _), c in cases.items() if ds != "mnist"} == {
        ("held_out", 64)}
    assert calibrate.select_cases(cases, "mnist", 4) == [("mnist", 4)]
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*allowed: \['breastmnist', 'mnist'"):
        calibrate.select_cases(cases, "cifar")
    with pytest.raises(ValueError, match=r"label 0 is not a class the studies use in pathmnist; allowed: \[1, 8\]"):
        calibrate.select_cases(cases, "pathmnist", 0)


def test_the_command_checks_its_options(capsys, tmp_path):
    for argv, message in ((["--dataset", "cifar"], "unknown dataset 'cifar'"),
                          (["--dataset", "mnist", "--label", "12"], r"label 12 is not a class.*allowed: \[0, 1,"),
                          (["--draws", "1"], "--draws must be an integer >= 2")):
        with pytest.raises(SystemExit):
            cli.main(["calibrate", *argv, "--out", str(tmp_path), "--no-progress"])
        assert message.split(".*")[0].replace("\\", "") in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_command_writes_one_file_per_class_and_resumes(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_record(dataset, label, n_samples, n_reference, draws, seed, studies, command, classifier, stamp,
                    classifier_augment="none", reference_pool="test", n_train=0):
        calls.append((dataset, label, n_samples, n_reference, draws, seed))
        assert (reference_pool, n_train) == (("test", 0) if dataset == "mnist" else ("held_out", 64))
        assert classifier == ("classifier", dataset, classifier_augment)
        augment = None if classifier_augment == "none" else classifier_augment
        return {**_record(dataset, label, 0.0, 10.0 + label, augment), "studies": studies, "command": command,
                "seconds": 0.1, **stamp}

    def fake_provenance():  # "dirty" once the command has written a file, as git status would say
        return {"git_dirty": any(tmp_path.iterdir())}

    monkeypatch.setattr(calibrate, "calibration_record", fake_record)
    monkeypatch.setattr("qdiff_lib.experiment.provenance", fake_provenance)
    monkeypatch.setattr("qdiff_lib.classifier.get_classifier",
                        lambda dataset, progress=False, augment="none": ("classifier", dataset, augment))
    argv = ["calibrate", "--dataset", "mnist", "--out", str(tmp_path), "--no-progress", "--draws", "3"]
    assert cli.main(argv) == 0
    assert calls == [("mnist", d, 500, 800, 3, 0) for d in range(10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"mnist-l{d}.json" for d in range(10))
    assert json.loads((tmp_path / "mnist-l4.json").read_text())["ceiling"]["kid"]["mean"] == 14.0
    # every file records the tree as it was before the command's own writes
    assert {json.loads(p.read_text())["git_dirty"] for p in tmp_path.iterdir()} == {False}
    assert cli.main(argv) == 0 and len(calls) == 10  # resumed: every file exists, nothing recomputed
    assert "10 already calibrated" in capsys.readouterr().out
    assert cli.main([*argv, "--label", "2", "--force"]) == 0 and calls[-1][:2] == ("mnist", 2) and len(calls) == 11
    assert cli.main(["calibrate", "--out", str(tmp_path), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "mnist label 3: 500 samples, 800 reference" in listed and "pathmnist label 8" in listed
    assert "mnist label 9: 500 samples, 800 reference (mnist, mnist16, released16): done" in listed
    # a class of medmnist16 also gets the file of its adopted classifier, beside the default one
    held = "1000 reference from the held-out pool (n_train 64)"
    assert f"retinamnist label 0: 500 samples, {held} (medmnist): missing" in listed
    assert f"retinamnist label 0 (classifier flips): 500 samples, {held} (medmnist16): missing" in listed
    assert f"pathmnist label 8 (classifier dihedral+shift): 500 samples, {held} (medmnist16)" in listed
    argv = ["calibrate", "--dataset", "retinamnist", "--out", str(tmp_path), "--no-progress", "--draws", "3"]
    assert cli.main([*argv, "--classifier-augment", "flips"]) == 0 and calls[-1][:2] == ("retinamnist", 0)
    assert (tmp_path / "retinamnist-l0+flips.json").exists() and not (tmp_path / "retinamnist-l0.json").exists()
    written = json.loads((tmp_path / "retinamnist-l0+flips.json").read_text())
    assert written["studies"] == ["medmnist16"] and scale.record_augment(written) == "flips"
    assert cli.main(argv) == 0 and (tmp_path / "retinamnist-l0.json").exists() and len(calls) == 13
    assert json.loads((tmp_path / "retinamnist-l0.json").read_text())["studies"] == ["medmnist"]


def _cost(record: dict) -> tuple:
    """Cheapest first: a classifier already cached (training one takes minutes), then MNIST's (which the rest of
    the suite trains anyway), then a default classifier (the chapters train those), then the fewest images scored."""
    n_classes = len(record["kid_by_class"]) + 1
    return (not (cache_dir() / record["classifier"]["file"]).exists(), record["dataset"] != "mnist",
            scale.record_augment(record) != "none",
            n_classes * record["draws"] * (record["n_samples"] + record["n_reference"]))


@pytest.mark.parametrize("pool", ["test", "held_out"])
def test_a_committed_calibration_file_is_reproduced_exactly(pool):
    """The cheapest committed file of each reference pool (``test``: the MNIST files; ``held_out``: the MedMNIST
    files, drawn from every held-out image of the class) recomputed from its own settings, bit for bit (pinned
    numerics). With nothing cached, the held-out one is PathMNIST's default classifier's, the smallest pool, a
    classifier the metrics chapter trains anyway."""
    records = [json.loads(p.read_text()) for p in sorted(scale.CALIBRATION_DIR.glob("*-l*.json"))]
    local = [r for r in records if r["data_file"] == calibrate.data_file(r["dataset"])
             and r["requested"].get("reference_pool", "test") == pool]
    assert local, f"no committed {pool}-pool calibration file under {scale.CALIBRATION_DIR} whose data is here"
    record = min(local, key=_cost)
    assert calibrate.recheck(record) == [], f"{record['dataset']} label {record['label']} not reproduced"


def test_the_classifier_checksum_sees_any_changed_weight():
    import types

    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    clf = types.SimpleNamespace(net=net)
    before = weights_sha256(clf)
    assert weights_sha256(clf) == before and len(before) == 64
    with torch.no_grad():
        net[2].bias[1] += 1e-6
    assert weights_sha256(clf) != before
