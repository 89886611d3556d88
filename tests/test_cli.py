"""The command line ``python -m qdiff_lib run`` (qdiff_lib.cli)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from qdiff_lib import REPO_ROOT, data, experiment
from qdiff_lib.cli import CHECKPOINT_DIR, RESULT_NAME, SAMPLES_NAME, RunOptions, build_parser, main
from qdiff_lib.train import TrainConfig

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(data.find_file("mnist.npz") is None, reason="mnist.npz is not on disk"),
]

TINY = [
    "run", "--dataset", "mnist", "--label", "3", "--n-train", "6", "--n-ref", "8", "--bottleneck", "se",
    "--n-qubits", "4", "--steps", "4", "--batch-size", "4", "--timesteps", "20", "--checkpoint-every", "2",
    "--n-samples", "3", "--sampler", "ddim", "--sample-steps", "4", "--seed", "1", "--device", "cpu",
    "--no-metrics", "--no-progress",
]
REQUIRED_OPTIONS = [
    "--dataset", "--label", "--n-train", "--bottleneck", "--ansatz", "--n-qubits", "--n-layers", "--schedule",
    "--noise", "--steps", "--n-samples", "--sampler", "--sample-steps", "--seed", "--device", "--out", "--force",
    "--no-metrics",
]


def _read(out):
    record = json.loads((out / RESULT_NAME).read_text())
    with np.load(out / SAMPLES_NAME) as f:
        samples = f["samples"]
    return record, samples


def test_help_documents_every_option():
    proc = subprocess.run([sys.executable, "-m", "qdiff_lib", "run", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in REQUIRED_OPTIONS:
        assert option in proc.stdout, option
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    for action in run_parser._actions:
        assert action.help, action.option_strings  # every option says what it does


def test_options_are_generated_from_the_run_options():
    """One option per RunOptions field (dest = field), defaults equal to the field's, and the training settings are
    the fields TrainConfig shares with RunOptions: the run configuration is written once."""
    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    by_dest = {a.dest: a for a in run_parser._actions if a.option_strings}
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    assert fields <= set(by_dest) and set(by_dest) - fields == {"help", "threads", "out", "force", "no_progress"}
    assert by_dest["ema_warmup"].option_strings == ["--no-ema-warmup"]
    assert by_dest["metrics"].option_strings == ["--no-metrics"]
    assert by_dest["freeze_squeeze"].option_strings == ["--freeze-squeeze"]
    assert by_dest["noise_kwargs"].option_strings == ["--noise-kwargs"]
    assert list(by_dest["sampler"].choices) == ["ddpm", "ddim"]
    args = run_parser.parse_args(["--out", "x"])
    assert experiment.options_from_args(args) == RunOptions()
    assert experiment.options_from_args(run_parser.parse_args(["--out", "x", "--epochs", "2"])).steps is None
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= fields
    o = RunOptions(lr=1e-3, noise_kwargs={"n_qubits": 4}, epochs=2.0, steps=None)
    assert o.train_config() == TrainConfig(**{f.name: getattr(o, f.name) for f in dataclasses.fields(TrainConfig)})
    assert o.train_config().noise_kwargs is not o.noise_kwargs
    assert experiment.KEY_NEUTRAL == {"freeze_squeeze": False, "freeze_circuit": False, "quantum_backend": "auto",
                                     "reference_pool": "test", "score_at": "", "classifier_augment": "none"}


def test_the_classifier_augmentation_round_trips_through_the_command_line(capsys):
    from qdiff_lib.classifier import AUGMENTATIONS

    run_parser = build_parser()._subparsers._group_actions[0].choices["run"]
    action = next(a for a in run_parser._actions if a.dest == "classifier_augment")
    assert action.option_strings == ["--classifier-augment"] and tuple(action.choices) == AUGMENTATIONS
    assert action.container.title == "sampling and metrics"
    for value in AUGMENTATIONS:
        options = experiment.options_from_args(run_parser.parse_args(["--out", "x", "--classifier-augment", value]))
        assert options.classifier_augment == value
        options.validate()
    assert experiment.options_from_args(run_parser.parse_args(["--out", "x"])).classifier_augment == "none"
    with pytest.raises(SystemExit):
        run_parser.parse_args(["--out", "x", "--classifier-augment", "rotate"])
    assert "invalid choice: 'rotate'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown classifier augmentation 'rotate'"):
        RunOptions(classifier_augment="rotate").validate()
    calibrate = build_parser()._subparsers._group_actions[0].choices["calibrate"]
    assert calibrate.parse_args(["--classifier-augment", "flips"]).classifier_augment == "flips"
    assert calibrate.parse_args([]).classifier_augment is None


def test_run_writes_result_and_samples_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out)]) == 0
    record, samples = _read(out)
    assert {"config", "loss_history", "metrics", "versions", "git_commit", "timings", "device"} <= set(record)
    assert len(record["loss_history"]) == 4 and record["metrics"] == {}
    assert record["config"]["options"]["label"] == 3 and record["config"]["train"]["timesteps"] == 20
    assert set(record["versions"]) >= {"torch", "pennylane", "qdiff_lib"}
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    assert record["train"]["epochs"] == pytest.approx(4 * 4 / 6)
    assert samples.shape == (3, 1, 28, 28) and samples.dtype == np.float32
    assert samples.min() >= -1 and samples.max() <= 1
    assert sorted(p.name for p in out.iterdir()) == sorted([CHECKPOINT_DIR, RESULT_NAME, SAMPLES_NAME])

    before = (out / RESULT_NAME).read_bytes()
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--out", str(out)])
    assert info.value.code == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / RESULT_NAME).read_bytes() == before

    assert main([*TINY, "--out", str(out), "--force"]) == 0
    again, samples_again = _read(out)
    assert again["loss_history"] == record["loss_history"]  # same seed, same numbers
    assert np.array_equal(samples_again, samples)
    assert again["train"]["resumed_from"] == 0  # --force discarded the old checkpoint


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), "--steps", "2"]) == 0  # the first 2 steps: a checkpoint at step 2
    (out / RESULT_NAME).unlink()
    (out / SAMPLES_NAME).unlink()
    with pytest.raises(SystemExit):  # other settings: refused before any work, the checkpoint kept
        main([*TINY, "--out", str(out), "--steps", "3"])
    assert "was written with other settings" in capsys.readouterr().err
    assert main([*TINY, "--out", str(out), "--steps", "2"]) == 0
    resumed, samples = _read(out)
    assert resumed["train"]["resumed_from"] == 2
    fresh = tmp_path / "fresh"
    assert main([*TINY, "--out", str(fresh), "--steps", "2"]) == 0
    reference, reference_samples = _read(fresh)
    assert resumed["loss_history"] == reference["loss_history"]
    assert np.array_equal(samples, reference_samples)


def test_divergence_is_reported_and_the_last_good_checkpoint_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), "--lr", "1e30", "--steps", "20", "--checkpoint-every", "1"]) == 1
    assert "training diverged: loss is" in capsys.readouterr().err
    assert not (out / RESULT_NAME).exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (["--bottleneck", "classical"], "invalid choice: 'classical'"),
        (["--sampler", "euler"], "invalid choice: 'euler'"),
        (["--label", "10"], "label 10 is not a class of mnist; allowed: 0..9"),
        (["--n-train", "0"], "n-train must be an integer >= 1"),
        (["--steps", "0"], "steps must be an integer >= 1"),
        (["--sample-steps", "21"], "sample-steps must lie in 1..20"),
        (["--sampler", "ddpm", "--sample-steps", "5"], "the ddpm sampler runs all 20 timesteps"),
        (["--n-qubits", "0"], "n_qubits must be a positive integer"),
        (["--noise", "quantum", "--noise-kwargs", '{"colour": 1}'], "bad --noise-kwargs for noise 'quantum'"),
        (["--noise-kwargs", "[1]"], "--noise-kwargs: expected a JSON object such as '{\"n_qubits\": 8}', got '[1]' "
                                    "(an array)"),
        (["--noise-kwargs", "{bad"], "--noise-kwargs: expected a JSON object such as '{\"n_qubits\": 8}', got '{bad' "
                                     "(Expecting property name"),
        (["--label", "three"], "argument --label: expected an integer, got 'three'"),
        (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
        (["--device", "tpu"], "unknown device 'tpu'; allowed:"),
        (["--n-train", "100000"], "allowed: 1.."),
        (["--steps", "3", "--epochs", "2"], "not allowed with argument"),
    ],
)
def test_bad_values_stop_before_any_work(tmp_path, capsys, change, message):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        main([*TINY, "--out", str(out), *change])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_forty_qubits_run_on_the_exact_tensor_network_and_an_impossible_width_says_so(tmp_path, capsys):
    """The default backend ("auto") runs the 40-qubit circuit exactly as an MPS; the statevector at that width would
    need petabytes, and the command says so in one line, in readable units, before allocating anything."""
    wide = [a if a != "se" else "quantum" for a in TINY]
    wide[wide.index("--n-qubits") + 1] = "40"
    assert main([*wide, "--out", str(tmp_path / "mps")]) == 0
    record, samples = _read(tmp_path / "mps")
    assert record["config"]["quantum_backend"] == "mps" and np.isfinite(samples).all()
    capsys.readouterr()
    assert main([*wide, "--quantum-backend", "torch", "--out", str(tmp_path / "sv")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "not enough memory" in err and "832.0 TiB" in err and "(4.0 GiB)" in err  # batch 4


def test_a_run_scores_its_samples_with_the_classifier_it_names(tmp_path, monkeypatch):
    from qdiff_lib import metrics

    seen = []
    monkeypatch.setattr(metrics, "evaluate", lambda *a, **kw: seen.append(kw["classifier_augment"]) or {})
    args = build_parser().parse_args([*TINY, "--out", str(tmp_path / "r"), "--classifier-augment", "flips"])
    prepared = experiment.prepare(experiment.options_from_args(args), args.out)
    prepared.options.metrics = True
    prepared.score(np.zeros((3, 1, 28, 28), dtype=np.float32))
    assert seen == ["flips"]
