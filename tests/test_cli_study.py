"""python -m qdiff_lib study: listing, selection, bad values, resumable execution into a chosen root."""

from __future__ import annotations

import json

import pytest

from qdiff_lib import cli, study


def test_list_reports_progress_without_running(tmp_path, capsys):
    assert cli.main(["study", "--profile", "full", "--list", "--results-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in study.STUDIES:
        n = len(study.study_runs(name, "full"))
        assert f"{name} (full): 0/{n} runs done" in out
    assert not any(tmp_path.iterdir())


def test_bad_study_and_profile_are_refused(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["study", "--study", "cifar"])
    assert err.value.code == 2
    assert "invalid choice: 'cifar'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["study", "--profile", "huge"])


def test_limit_zero_computes_nothing(tmp_path, capsys):
    assert cli.main(["study", "--profile", "ci", "--study", "mnist", "--limit", "0",
                     "--results-root", str(tmp_path), "--runs-root", str(tmp_path / "runs")]) == 0
    assert "0/5 runs done" in capsys.readouterr().out
    assert not (tmp_path / "ci").exists()


def test_summary_records_the_command_that_produced_it(tmp_path, monkeypatch):
    # the smallest possible study: one ci run of the mnist grid with a tiny budget
    tiny = dict(steps=3, n_samples=4, sample_steps=2, n_ref=8, timesteps=20, metrics=False, n_train=8)
    monkeypatch.setitem(study.STUDIES, "mnist", lambda p: [study.arm_options("se", label=3, **tiny)])
    assert cli.main(["study", "--profile", "ci", "--study", "mnist", "--no-progress",
                     "--results-root", str(tmp_path), "--runs-root", str(tmp_path / "runs")]) == 0
    (summary,) = (tmp_path / "ci" / "mnist").glob("*.json")
    record = json.loads(summary.read_text())
    assert record["command"] == "python -m qdiff_lib study --profile ci --study mnist"
    assert record["options"]["steps"] == 3 and len(record["loss_curve"]) == 3
    mtime = summary.stat().st_mtime_ns
    assert cli.main(["study", "--profile", "ci", "--study", "mnist", "--no-progress",
                     "--results-root", str(tmp_path), "--runs-root", str(tmp_path / "runs")]) == 0
    assert summary.stat().st_mtime_ns == mtime  # finished runs are not recomputed


def test_filter_selects_runs_and_rejects_unknown_keys(tmp_path, capsys):
    assert cli.main(["study", "--profile", "full", "--study", "mnist", "--filter", "label=3", "--list",
                     "--results-root", str(tmp_path)]) == 0
    assert "mnist (full): 0/15 runs done" in capsys.readouterr().out  # 5 arms x 3 seeds of digit 3
    assert len(study.select(study.study_runs("mnist", "full"), {"label": 3, "bottleneck": "se"})) == 3
    with pytest.raises(SystemExit):
        cli.main(["study", "--filter", "colour=red", "--list"])
    assert "bad filter 'colour=red'" in capsys.readouterr().err
