"""Rescoring finished runs from their kept samples (qdiff_lib.rescore, ``study --rescore``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from qdiff_lib import cli, experiment, metrics, rescore, study
from qdiff_lib.study import arm_options, run_key, run_one


def _options():
    """A 2-step run that is scored (16 samples against 16 held-out images): a few seconds."""
    return arm_options("se", dataset="mnist", label=3, n_train=8, n_ref=16, steps=2, n_samples=16, sample_steps=2,
                       checkpoint_every=0, n_qubits=4, device="cpu")


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A one-run study ``tiny`` computed into tmp_path: (key, summary path, runs root, results root)."""
    monkeypatch.setitem(study.STUDIES, "tiny", lambda profile: [_options()])
    results, runs = tmp_path / "results", tmp_path / "runs"
    out = study.results_dir("ci", "tiny", results)
    run_one(_options(), out, runs_root=runs, command="cmd")
    key = run_key(_options())
    return key, out / f"{key}.json", runs, results


def test_a_run_records_its_samples_checksum_and_metrics_version(finished):
    key, path, runs, _ = finished
    summary = json.loads(path.read_text())
    with np.load(runs / key / experiment.SAMPLES_NAME) as f:
        samples = f["samples"]
    assert summary["samples"]["sha256"] == experiment.samples_sha256(samples)
    assert summary["samples"]["shape"] == [16, 1, 28, 28]
    assert summary["metrics_version"] == metrics.METRICS_VERSION
    assert summary["metrics"]["kid"]["mean"] == summary["metrics"]["kid"]["mean"]  # a number, not NaN


def test_rescore_recomputes_only_stale_metrics_and_keeps_the_training_record(finished):
    key, path, runs, results = finished
    original = json.loads(path.read_text())
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False)
    assert report.current == [key] and not report.rescored and not report.failed
    assert json.loads(path.read_text()) == original, "a current summary was rewritten"

    # metrics from an older version of the library (here: made-up numbers, version 0) are recomputed
    stale = {**original, "metrics": {"kid": {"mean": 999.0, "se": 1.0}}, "metrics_version": 0}
    path.write_text(json.dumps(stale))
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False, command="rescore")
    assert report.rescored == [key] and not report.failed
    new = json.loads(path.read_text())
    assert new["metrics"] == original["metrics"], "the same samples and reference must give the same metrics"
    assert new["metrics_version"] == metrics.METRICS_VERSION
    assert new["rescored"]["previous_metrics_version"] == 0 and new["rescored"]["command"] == "rescore"
    for unchanged in ("options", "loss_curve", "final_loss", "timings", "preview", "git_commit", "samples"):
        assert new[unchanged] == original[unchanged], unchanged
    record = json.loads((runs / key / experiment.RESULT_NAME).read_text())
    assert record["metrics"] == new["metrics"] and record["metrics_version"] == metrics.METRICS_VERSION


def test_rescore_of_a_version_2_summary_adds_the_paper_protocol_and_keeps_the_rest(finished):
    key, path, runs, results = finished
    original = json.loads(path.read_text())
    assert "paper_protocol" in original["metrics"]
    # a summary scored by metrics version 2: everything but the paper's protocol
    old = {**original, "metrics_version": 2,
           "metrics": {k: v for k, v in original["metrics"].items() if k != "paper_protocol"}}
    path.write_text(json.dumps(old))
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False)
    assert report.rescored == [key] and not report.failed
    new = json.loads(path.read_text())
    assert new["metrics_version"] == metrics.METRICS_VERSION == 3
    assert new["rescored"]["previous_metrics_version"] == 2
    assert new["metrics"]["paper_protocol"] == original["metrics"]["paper_protocol"]
    p = new["metrics"]["paper_protocol"]
    assert p["n"] == 13 and len(p["any_class"]["fid"]["values"]) == p["draws"]
    assert {k: v for k, v in new["metrics"].items() if k != "paper_protocol"} == old["metrics"], (
        "the version-2 entries changed")
    for unchanged in ("options", "loss_curve", "final_loss", "timings", "preview", "git_commit", "samples",
                      "n_parameters", "n_reference"):
        assert new[unchanged] == old[unchanged], unchanged


def test_rescore_refuses_samples_that_are_not_the_scored_ones(finished):
    key, path, runs, results = finished
    stale = {**json.loads(path.read_text()), "metrics_version": 0}
    path.write_text(json.dumps(stale))
    samples_path = runs / key / experiment.SAMPLES_NAME
    with np.load(samples_path) as f:
        samples = f["samples"].copy()
    samples[0, 0, 0, 0] += 0.5
    np.savez(samples_path, samples=samples)
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False)
    assert not report.rescored and "sha256" in report.failed[key]
    assert json.loads(path.read_text()) == stale, "a summary was changed although its run could not be rescored"

    samples_path.unlink()
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False)
    assert str(samples_path) in report.failed[key]

    # a summary from before samples were kept says so
    path.write_text(json.dumps({k: v for k, v in stale.items() if k != "samples"}))
    report = rescore.rescore_study("tiny", "ci", root=results, runs_root=runs, progress=False)
    assert "no samples checksum" in report.failed[key]


def test_cli_rescore_exit_status_and_flags(finished, capsys):
    key, path, runs, results = finished
    argv = ["study", "--rescore", "--study", "tiny", "--profile", "ci", "--results-root", str(results),
            "--runs-root", str(runs), "--no-progress"]
    assert cli.main(argv) == 0
    assert "0 runs rescored, 1 already current, 0 could not be rescored" in capsys.readouterr().out
    assert cli.main([*argv, "--force-rescore"]) == 0
    assert "1 run rescored" in capsys.readouterr().out
    (runs / key / experiment.SAMPLES_NAME).unlink()
    assert cli.main([*argv, "--force-rescore"]) == 1
    err = capsys.readouterr().err
    assert key in err and "not on this machine" in err
    with pytest.raises(SystemExit):
        cli.main(["study", "--force-rescore", "--study", "tiny", "--profile", "ci"])
    assert "--force-rescore needs --rescore" in capsys.readouterr().err


# ------------------------------------------------------------------------ scores at intermediate steps (score_at)


def _scored_run_options(**overrides):
    base = dict(dataset="mnist", label=3, n_train=8, n_ref=16, steps=4, n_samples=16, sample_steps=2,
                checkpoint_every=0, n_qubits=4, device="cpu")
    return arm_options("se", **{**base, **overrides})


def test_score_at_scores_the_model_of_that_step_without_changing_training(tmp_path):
    plain = experiment.run(_scored_run_options(), tmp_path / "plain", progress=False)
    scored = experiment.run(_scored_run_options(score_at="2"), tmp_path / "scored", progress=False)
    assert scored["loss_history"] == plain["loss_history"], "scoring at step 2 changed the training"
    assert scored["metrics"] == plain["metrics"] and scored["samples"]["sha256"] == plain["samples"]["sha256"]
    # the model after 2 of 4 steps is the model of a 2-step run: same samples, same metrics
    short = experiment.run(_scored_run_options(steps=2), tmp_path / "short", progress=False)
    assert scored["samples_at"]["2"]["sha256"] == short["samples"]["sha256"]
    assert scored["metrics_at"]["2"] == short["metrics"]
    assert (tmp_path / "scored" / "samples_step2.npz").exists()


def test_score_at_survives_a_resume_and_is_rescored(tmp_path, monkeypatch):
    from qdiff_lib import train as train_module

    real_train = train_module.train

    def interrupted(*args, **kwargs):  # stop after step 3, once step 2 was scored
        def stop(step, loss, model):
            if step == 3:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "callback": stop})

    options = _scored_run_options(score_at="2", checkpoint_every=1)
    monkeypatch.setattr(experiment, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(options, tmp_path / "run", progress=False)
    monkeypatch.setattr(experiment, "train", real_train)
    stamp = (tmp_path / "run" / "samples_step2.npz").stat().st_mtime_ns
    resumed = experiment.run(options, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "samples_step2.npz").stat().st_mtime_ns == stamp, "step 2 was scored again"
    uninterrupted = experiment.run(options, tmp_path / "again", progress=False)
    assert resumed["metrics_at"] == uninterrupted["metrics_at"] and resumed["metrics"] == uninterrupted["metrics"]

    summary = {**study._summary(resumed, "cmd"), "metrics_version": 0,
               "metrics_at": {"2": {"kid": {"mean": 1.0, "se": 1.0}}}}
    new = rescore.rescore_summary(summary, tmp_path / "run")
    assert new["metrics_at"] == resumed["metrics_at"] and new["metrics"] == resumed["metrics"]


def test_score_at_is_checked_before_training():
    for bad in ("4", "0", "a,b", "2,9"):
        with pytest.raises(ValueError, match="score-at"):
            _scored_run_options(score_at=bad).validate()
    assert _scored_run_options(score_at="3, 1,3").score_steps() == (1, 3)


def test_rescore_stamps_every_run_with_the_state_before_its_own_writes(tmp_path, monkeypatch):
    """Rescoring writes into the results it rescores (inside the repository, a dirty working tree): every run of one
    command must record the provenance taken before the first write, not a tree its own earlier writes dirtied."""
    runs_list = [_options(), dataclasses.replace(_options(), seed=1)]
    monkeypatch.setitem(study.STUDIES, "tiny2", lambda profile: runs_list)
    results, runs = tmp_path / "results", tmp_path / "runs"
    out = study.results_dir("ci", "tiny2", results)
    for o in runs_list:
        run_one(o, out, runs_root=runs, command="cmd")
    for p in out.glob("*.json"):  # scored by an older version: both need rescoring
        p.write_text(json.dumps({**json.loads(p.read_text()), "metrics_version": 0}))

    def fake_provenance():  # "dirty" once any result file carries a rescore record, as git status would say
        return {"git_dirty": any("rescored" in json.loads(p.read_text()) for p in out.glob("*.json"))}

    monkeypatch.setattr(rescore, "provenance", fake_provenance)
    report = rescore.rescore_study("tiny2", "ci", root=results, runs_root=runs, progress=False)
    assert len(report.rescored) == 2
    assert [json.loads(p.read_text())["rescored"]["git_dirty"] for p in sorted(out.glob("*.json"))] == [False, False]


def test_rescore_scores_with_the_classifier_the_run_names(finished, monkeypatch):
    """The run's option ``classifier_augment`` reaches evaluate (summaries written before the option existed: the
    default classifier), so that a rescored run keeps its feature space."""
    key, path, runs, _ = finished
    original = json.loads(path.read_text())
    seen = []

    def fake_evaluate(samples, dataset, label, images, **kw):
        seen.append(kw["classifier_augment"])
        return {"kid": {"mean": 0.0}}

    monkeypatch.setattr(metrics, "evaluate", fake_evaluate)
    flips = {**original, "options": {**original["options"], "classifier_augment": "flips"}}
    assert rescore.rescore_summary(flips, runs / key)["metrics"] == {"kid": {"mean": 0.0}}
    older = {**original, "options": {k: v for k, v in original["options"].items() if k != "classifier_augment"}}
    rescore.rescore_summary(older, runs / key)
    assert seen == ["flips", "none"]
