"""python -m qdiff_lib study: listing, selection, bad values, resumable execution into a chosen root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qdiff_lib import cli, data, experiment, numerics, study


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


# ------------------------------------------------------------------------------ parallel and distributed execution

needs_mnist = pytest.mark.skipif(data.find_file("mnist.npz") is None, reason="mnist.npz is not on disk")

#: A run of a fraction of a second: 3 steps on 8 images, 4 samples in 2 DDIM steps, no metrics.
TINY = dict(label=3, n_train=8, n_ref=8, steps=3, timesteps=20, n_samples=4, sample_steps=2, n_qubits=4,
            checkpoint_every=1, metrics=False, device="cpu")


def _tiny_grid(monkeypatch, *extra) -> list:
    """The ci mnist grid cut to three arms of one seed with tiny budgets (plus ``extra`` runs)."""
    runs = [study.arm_options(arm, **TINY) for arm in ("none", "se", "quantum_rzry")] + list(extra)
    monkeypatch.setitem(study.STUDIES, "mnist", lambda p: runs)
    return runs


def _study(root: Path, *options: str) -> int:
    return cli.main(["study", "--profile", "ci", "--study", "mnist", "--results-root", str(root),
                     "--runs-root", str(root / "runs"), *options])


def _without_timings(root: Path) -> dict[str, dict]:
    out = {}
    for path in sorted((root / "ci" / "mnist").glob("*.json")):
        summary = json.loads(path.read_text())
        summary.pop("timings")
        out[path.name] = summary
    return out


def _samples(root: Path, key: str) -> np.ndarray:
    with np.load(root / "runs" / key / experiment.SAMPLES_NAME) as f:
        return f["samples"]


@needs_mnist
def test_local_and_dask_cluster_give_identical_result_files(tmp_path, monkeypatch):
    """The same grid computed in this process and by a two-worker Dask cluster (reached through --scheduler, as a
    cluster on other machines would be): identical files but for the timings, identical samples."""
    from distributed import LocalCluster

    runs = _tiny_grid(monkeypatch)
    assert _study(tmp_path / "local", "--workers", "1", "--no-progress") == 0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert _study(tmp_path / "dask", "--scheduler", cluster.scheduler_address, "--no-progress") == 0
    local, dask = _without_timings(tmp_path / "local"), _without_timings(tmp_path / "dask")
    assert sorted(local) == sorted(f"{study.run_key(o)}.json" for o in runs)
    assert local == dask
    assert all(s["numerics"]["exact"] == (not numerics.check()) and s["torch_threads"] == 1 for s in dask.values())
    for key in (study.run_key(o) for o in runs):
        assert np.array_equal(_samples(tmp_path / "local", key), _samples(tmp_path / "dask", key))


@needs_mnist
def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, monkeypatch, capsys):
    bad = study.arm_options("se", **{**TINY, "n_ref": 100_000})  # more reference images than digit 3 has
    runs = _tiny_grid(monkeypatch, bad)
    assert _study(tmp_path, "--workers", "2") == 1
    captured = capsys.readouterr()
    assert f"run {study.run_key(bad)} failed: ValueError: n=100000 is larger than the" in captured.err
    assert "1 run failed" in captured.err and "4/4" in captured.err  # the progress bar counted every run
    done = {p.stem for p in (tmp_path / "ci" / "mnist").glob("*.json")}
    assert done == {study.run_key(o) for o in runs[:3]}
    assert "mnist (ci): 3/4 runs done" in captured.out


@needs_mnist
def test_an_interrupted_study_resumes_without_recomputing_finished_runs(tmp_path, monkeypatch):
    runs = _tiny_grid(monkeypatch)
    keys = [study.run_key(o) for o in runs]
    real_draw = experiment._draw_samples
    draws = []

    def interrupted_draw(*args, **kwargs):  # Ctrl-C while the second run samples (its training is finished)
        draws.append(1)
        if len(draws) == 2:
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(experiment, "_draw_samples", interrupted_draw)
    with pytest.raises(KeyboardInterrupt):
        _study(tmp_path / "resumed", "--workers", "1", "--no-progress")
    results = tmp_path / "resumed" / "ci" / "mnist"
    assert [p.stem for p in results.glob("*.json")] == keys[:1]
    first = (results / f"{keys[0]}.json").stat().st_mtime_ns
    assert (tmp_path / "resumed" / "runs" / keys[1] / experiment.CHECKPOINT_DIR).is_dir()

    monkeypatch.setattr(experiment, "_draw_samples", real_draw)
    trained = []
    real_train = experiment.train
    monkeypatch.setattr(experiment, "train", lambda model, images, config, **kw: trained.append(1) or real_train(
        model, images, config, **kw))
    assert _study(tmp_path / "resumed", "--workers", "1", "--no-progress") == 0
    assert (results / f"{keys[0]}.json").stat().st_mtime_ns == first and len(trained) == 2  # run 1 not redone
    record = json.loads((tmp_path / "resumed" / "runs" / keys[1] / experiment.RESULT_NAME).read_text())
    assert record["train"]["resumed_from"] == TINY["steps"]  # run 2 resumed from its last checkpoint
    assert _study(tmp_path / "fresh", "--workers", "1", "--no-progress") == 0
    assert _without_timings(tmp_path / "resumed") == _without_timings(tmp_path / "fresh")
