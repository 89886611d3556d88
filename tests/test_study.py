"""Tests of qdiff_lib.study (grids, run keys, resume, result files) and the CI re-checks of committed full runs.

Two re-checks recompute committed full-profile runs produced under the pinned numerics from their recorded options,
exactly where this machine runs the pinned numerics and within stated tolerances elsewhere:

- :func:`test_committed_run_prefixes_are_reproduced` (``make test``): the first windows of the loss curves of the
  cheapest pinned run and of the cheapest pinned run with a circuit (:func:`qdiff_lib.recheck.prefix_candidates`);
- :func:`test_committed_full_run_is_reproduced` (marker ``full_recheck``: ``make recheck``, which CI runs after
  ``make test``): the cheapest pinned run end to end, training, sampling and scoring, every number compared
  (:func:`qdiff_lib.study.recheck_differences`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qdiff_lib import REPO_ROOT, cli, data, experiment, grids, numerics, recheck, study
from qdiff_lib.study import ARMS, PROFILES, STUDIES, arm_options, load_results, run_key, run_one, study_runs

#: Expected number of runs per (study, profile): digits x arms x seeds, cases x arms x seeds, N x arms x seeds, ...
GRID_SIZES = {
    ("mnist", "ci"): 1 * 5 * 1,
    ("mnist", "full"): 10 * 5 * 3,
    ("medmnist", "ci"): 1 * 3 * 1,
    ("medmnist", "full"): 5 * 3 * 3,
    ("scaling", "ci"): 2 * 3 * 1,
    ("scaling", "full"): 6 * 3 * 3,
    ("noise_schedules", "ci"): 4 * 1,
    ("noise_schedules", "full"): 4 * 3,
    ("mnist16", "ci"): 1 * 7 * 1,
    ("mnist16", "full"): 10 * 7 * 3,
    ("scaling16", "ci"): 2 * 3 * 1,
    ("scaling16", "full"): 5 * 3 * 3,
    ("medmnist16", "ci"): 1 * 4 * 1,
    ("medmnist16", "full"): 5 * 4 * 3,
    ("released16", "ci"): 1 * 2,
    ("released16", "full"): 10 * 2,
    ("convergence16", "ci"): 3 * 1,
    ("convergence16", "full"): 3 * 2,
    ("tuning16", "ci"): 2 * 3 * 1,
    ("tuning16", "full"): 2 * 3 * 2,
}


def _tiny(**overrides) -> cli.RunOptions:
    """A run that trains for 2 steps on 8 images and skips the metrics (a fraction of a second)."""
    base = dict(dataset="mnist", label=3, n_train=8, n_ref=8, steps=2, n_samples=4, sample_steps=2,
                checkpoint_every=0, metrics=False, n_qubits=4, device="cpu")
    return arm_options("se", **{**base, **overrides})


# --------------------------------------------------------------------------------------------- grids and keys


@pytest.mark.parametrize("name, profile", sorted(GRID_SIZES))
def test_grid_sizes(name, profile):
    runs = study_runs(name, profile)
    assert len(runs) == GRID_SIZES[(name, profile)]
    assert len({run_key(o) for o in runs}) == len(runs), "two runs of a grid share a key"


def test_grids_follow_the_profile_budgets():
    for profile_name, p in PROFILES.items():
        for name in STUDIES:
            second_edition = name.endswith("16")
            width = study.PAPER_N_QUBITS if second_edition and profile_name == "full" else p.n_qubits
            steps = p.steps if name != "convergence16" else (grids.CONVERGENCE_STEPS if profile_name == "full"
                                                             else 2 * p.steps)
            for o in study_runs(name, profile_name):
                assert (o.steps, o.n_samples, o.n_qubits, o.sample_steps) == (steps, p.n_samples, width,
                                                                               p.sample_steps)
                assert o.seed in p.seeds
    full = PROFILES["full"]
    assert full.steps == 2000 and len(full.seeds) >= 3 and full.n_samples >= 500  # the full profile's budgets
    mnist = study_runs("mnist", "full")
    assert sorted({o.label for o in mnist}) == list(range(10)), "all ten digits, 0 included"
    arms = {(o.bottleneck, o.ansatz if o.bottleneck == "quantum" else None) for o in mnist}
    assert arms == {("none", None), ("se", None), ("se_frozen", None), ("quantum", "paper"), ("quantum", "rzry")}
    assert sorted({o.n_train for o in study_runs("scaling", "full")}) == [10, 25, 50, 100, 250, 1000]


def test_second_edition_grids():
    """The grids of the study issue: scaling to the full class, MedMNIST with every held-out image up to the cap,
    the released model at the paper's width; and the order that lets a partial study be read over every digit."""
    from qdiff_lib import data

    scaling = study_runs("scaling16", "full")
    full_class = len(data.load_images("mnist", "train", 3))
    assert sorted({o.n_train for o in scaling}) == [*study.SCALING16_N, full_class]
    assert {study.arm_of(o) for o in scaling} == set(study.SCALING16_ARMS)
    med = study_runs("medmnist16", "full")
    assert {(o.dataset, o.label) for o in med} == set(study.MEDMNIST_CASES)
    assert {o.reference_pool for o in med} == {"held_out"} and {o.n_ref for o in med} == {
        study.MEDMNIST_REFERENCE_CAP}
    assert {study.arm_of(o) for o in med} == set(study.MEDMNIST16_ARMS)
    released = study_runs("released16", "full")
    assert {study.arm_of(o) for o in released} == set(study.RELEASED16_ARMS) and {o.seed for o in released} == {0}
    convergence = study_runs("convergence16", "full")
    assert {o.score_steps() for o in convergence} == {grids.CONVERGENCE_SCORE_AT}
    for profile_name in ("full", "ci"):  # the first steps of a convergence run are the mnist16 run of the same seed,
        # scored at that run's budget (in ci too, so that the ci profile takes the full profile's path)
        budget = study.PROFILES[profile_name].steps
        twins = {run_key(o) for o in study_runs("mnist16", profile_name)}
        for o in study_runs("convergence16", profile_name):
            assert budget in (*o.score_steps(), o.steps) and o.steps > budget
            assert run_key(dataclasses.replace(o, steps=budget, score_at="")) in twins
    mnist16 = {run_key(o) for o in study_runs("mnist16", "full")}
    for o in study_runs("tuning16", "full"):  # the default learning rate is mnist16's run, not recomputed
        assert o.lr != cli.RunOptions().lr and run_key(dataclasses.replace(o, lr=cli.RunOptions().lr)) in mnist16
    first_seed = study_runs("mnist16", "full")[: 10 * len(study.MNIST16_ARMS)]
    assert {o.seed for o in first_seed} == {0} and {o.label for o in first_seed} == set(range(10))


def test_held_out_reference_pool_is_disjoint_from_training_and_capped():
    train, ref = data.few_shot_split("breastmnist", 1, 64, None, seed=0, pool="held_out")
    _, test_only = data.few_shot_split("breastmnist", 1, 64, None, seed=0)
    flat = {tuple(x.flatten().tolist()) for x in train}
    assert not any(tuple(x.flatten().tolist()) in flat for x in ref), "a training image in the reference"
    assert len(ref) > len(test_only) + 64  # unused training images and val added to the test split
    _, capped = data.few_shot_split("breastmnist", 1, 64, 100, seed=0, pool="held_out")
    assert len(capped) == 100
    with pytest.raises(ValueError, match="reference pool"):
        data.few_shot_split("breastmnist", 1, 64, 100, seed=0, pool="everything")
    # the uncapped reference is the whole held-out pool: every image of the class but the run's training images
    pool = data.held_out_pool("breastmnist", 1, 64, seed=0)
    assert torch.equal(pool, ref)
    every = sum(len(data.load_images("breastmnist", split, 1)) for split in ("train", "val", "test"))
    assert len(data.held_out_pool("breastmnist", 1)) == every == len(pool) + 64
    with pytest.raises(ValueError, match=r"n_train must be an integer >= 0, got -1"):
        data.held_out_pool("breastmnist", 1, -1)


def test_full_mnist_grids_ask_for_available_reference_images():
    """Every MNIST run of a full grid can draw its held-out reference (digit 5 has only 892 test images)."""
    available = {d: len(data.load_images("mnist", "test", d)) for d in range(10)}
    short = sorted({(o.label, o.n_ref, available[o.label]) for name in ("mnist", "scaling", "noise_schedules")
                    for o in study_runs(name, "full") if o.n_ref > available[o.label]})
    assert not short, f"(digit, n_ref, available) with too few test images: {short}"


def test_run_key_is_stable_and_separates_every_option():
    o = _tiny()
    assert run_key(o) == run_key(_tiny()), "same options, same key"
    assert run_key(o).startswith("mnist-l3-n8-se-s0-")
    assert run_key(arm_options("quantum_rzry", label=3)).split("-")[3] == "quantum_rzry"
    # a change of any single option changes the key
    changed = dict(dataset="pathmnist", label=4, n_train=9, n_ref=9, bottleneck="none", ansatz="paper", n_qubits=6,
                   n_layers=2, gate="sigmoid", nonlinearity="relu", angle_scaling="pi", schedule="linear",
                   timesteps=500, noise="quantum", noise_kwargs={"n_qubits": 8},
                   timestep_distribution="logsnr_gaussian", steps=3, epochs=1.0, batch_size=32, lr=1e-3,
                   ema_decay=0.99, ema_warmup=False, checkpoint_every=1, n_samples=5, sampler="ddpm", sample_steps=3,
                   eta=0.5, seed=1,
                   device="cuda", metrics=True, freeze_squeeze=True, freeze_circuit=True, quantum_backend="mps",
                   reference_pool="held_out", score_at="1", classifier_augment="flips")
    assert set(changed) == {f.name for f in dataclasses.fields(cli.RunOptions)}, "a RunOptions field is untested"
    keys = {run_key(dataclasses.replace(o, **{name: value})) for name, value in changed.items()}
    assert len(keys) == len(changed) and run_key(o) not in keys


def test_run_key_fixed_value():
    """The key of a default run must not change silently: committed result files are named by it."""
    key = run_key(arm_options("none", dataset="mnist", label=3, n_train=64, seed=0, steps=2000, n_samples=500,
                              n_ref=800, n_qubits=8, sample_steps=50, sampler="ddim"))
    assert key == "mnist-l3-n64-none-s0-a00869191e"
    assert key in {run_key(o) for o in study_runs("mnist", "full")}


def test_bad_names_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown arm 'quantum'.*allowed.*'quantum_rzry'"):
        arm_options("quantum")
    with pytest.raises(ValueError, match=r"unknown run option\(s\) \['n_steps'\].*allowed.*'steps'"):
        arm_options("se", n_steps=10)
    with pytest.raises(ValueError, match=r"unknown study 'cifar'.*allowed.*'scaling'"):
        study_runs("cifar", "ci")
    with pytest.raises(ValueError, match=r"unknown profile 'fast'.*allowed.*'full'"):
        study_runs("mnist", "fast")
    assert set(ARMS) == {"none", "se", "se_frozen", "quantum_paper", "quantum_rzry", "se_cos", "quantum_rzry_frozen",
                         "quantum_rzry_separable", "quantum_paper_released", "fourier"}
    assert {study.arm_of(o) for o in study_runs("mnist", "full")} == set(study.MNIST_V1_ARMS)
    assert {study.arm_of(o) for o in study_runs("mnist16", "full")} == set(study.MNIST16_ARMS)


def test_arm_options_overrides_but_keeps_the_arm():
    o = arm_options("quantum_paper", n_qubits=5, seed=7)
    assert (o.bottleneck, o.ansatz, o.n_qubits, o.seed) == ("quantum", "paper", 5, 7)


def test_every_arm_is_named_back_from_its_options_and_builds_its_model():
    """arm_of inverts ARMS, and each arm's model differs from se only where the arm says (matched controls)."""
    from qdiff_lib.unet import UNet, count_parameters

    counts = {}
    for arm in ARMS:
        o = arm_options(arm, n_qubits=4, n_layers=2)
        assert study.arm_of(o) == arm and study.arm_of(dataclasses.asdict(o)) == arm
        assert f"-{arm}-s0-" in run_key(o)
        model = UNet(**o.model_kwargs(1))
        counts[arm] = (count_parameters(model), count_parameters(model, trainable_only=True))
    circuit = 2 * 4 * 2  # rzry weights: layers x qubits x 2
    assert counts["se_cos"] == counts["se"]
    assert counts["quantum_rzry"][0] == counts["se"][0] + circuit == counts["fourier"][0]
    assert counts["quantum_rzry_frozen"] == (counts["quantum_rzry"][0], counts["se"][1])
    assert counts["quantum_rzry_separable"] == counts["quantum_rzry"]
    squeeze = 128 * 4 + 4
    assert counts["quantum_paper_released"][1] == counts["quantum_paper"][1] - squeeze
    assert study.arm_of(arm_options("se", nonlinearity="relu")) == "se_relu"


def test_run_keys_of_committed_files_are_stable():
    """Options added after the first study (KEY_NEUTRAL) leave the names of earlier runs unchanged."""
    for path in _committed_full_runs():
        options = json.loads(path.read_text())["options"]
        assert not set(cli.KEY_NEUTRAL) & set(options) or path.stem == run_key(cli.RunOptions(**options))
        if any(options.get(k, v) != v for k, v in cli.KEY_NEUTRAL.items()):
            continue  # a run that uses a newer option (a new arm): its name includes it
        legacy = {k: v for k, v in options.items() if k not in cli.KEY_NEUTRAL}
        assert path.stem == run_key(cli.RunOptions(**legacy)), f"{path.name} would be renamed"
    assert run_key(arm_options("se", quantum_backend="mps")) != run_key(arm_options("se"))


# ------------------------------------------------------------------------------------------ resume and files


def test_run_one_writes_a_summary_and_resumes_without_recomputing(tmp_path, monkeypatch):
    calls = []
    real_run = experiment.run

    def counting_run(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(experiment, "run", counting_run)
    o = _tiny()
    out, runs = tmp_path / "results", tmp_path / "runs"
    first = run_one(o, out, runs_root=runs, command="cmd")
    path = out / f"{run_key(o)}.json"
    assert path.exists() and len(calls) == 1
    assert first == json.loads(path.read_text())
    assert first["options"] == dataclasses.asdict(o) and first["command"] == "cmd"
    assert len(first["loss_curve"]) == 2 and first["final_loss"] == first["loss_curve"][-1][1]
    assert first["n_parameters"]["total"] > 0
    stamp = path.stat().st_mtime_ns

    again = run_one(o, out, runs_root=runs)
    assert again == first and len(calls) == 1 and path.stat().st_mtime_ns == stamp, "a finished run was recomputed"

    # the summary keeps a uint8 preview of the first samples
    with np.load(runs / run_key(o) / cli.SAMPLES_NAME) as f:
        samples = torch.from_numpy(f["samples"])
    shown = study.decode_preview(first["preview"])
    assert shown.shape == samples.shape == (4, 1, 28, 28)
    assert (shown - samples.clamp(-1, 1)).abs().max() <= 0.5 / 127.5 + 1e-6

    # a summary written before previews existed gets one from the run folder, without recomputing
    path.write_text(json.dumps({k: v for k, v in first.items() if k != "preview"}))
    backfilled = run_one(o, out, runs_root=runs)
    assert backfilled == first and json.loads(path.read_text()) == first and len(calls) == 1
    stamp = path.stat().st_mtime_ns

    # the summary is lost but the run folder is intact: the summary is rebuilt from result.json, not retrained
    path.unlink()
    rebuilt = run_one(o, out, runs_root=runs, command="cmd")
    assert len(calls) == 1 and rebuilt["loss_curve"] == first["loss_curve"]

    # a run folder left by different options under the same key is not trusted: it is recomputed
    record = json.loads((runs / run_key(o) / cli.RESULT_NAME).read_text())
    record["config"]["options"]["lr"] = 1.0
    (runs / run_key(o) / cli.RESULT_NAME).write_text(json.dumps(record))
    path.unlink()
    recomputed = run_one(o, out, runs_root=runs, command="cmd")
    assert len(calls) == 2 and recomputed["loss_curve"] == first["loss_curve"]


def test_preview_quantises_within_half_a_level_and_round_trips():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 28, 28, generator=g) * 2.4 - 1.2  # also outside [-1, 1]: clipped
    p = study.encode_preview(x)
    assert p["shape"] == [study.PREVIEW_N, 3, 28, 28]
    y = study.decode_preview(p)
    assert y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    assert (y - x[: study.PREVIEW_N].clamp(-1, 1)).abs().max() <= 0.5 / 127.5 + 1e-6
    assert torch.equal(study.decode_preview(study.encode_preview(y)), y), "decoding is exact on the grid"
    assert study.encode_preview(x, n=3)["shape"] == [3, 3, 28, 28]
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        study.encode_preview(x[0])


def test_downsample_means_windows():
    values = [float(i) for i in range(250)]
    curve = study._downsample(values, points=100)
    assert len(curve) == 84  # windows of ceil(250/100) = 3 steps
    assert curve[0] == [3, 1.0] and curve[-2] == [249, 247.0] and curve[-1] == [250, 249.0]  # a short last window
    assert study._downsample([], 10) == []
    assert study._downsample([1.0, 2.0], 10) == [[1, 1.0], [2, 2.0]]


def test_load_results_flattens_metrics(tmp_path):
    o = _tiny()
    summary = {
        "options": dataclasses.asdict(dataclasses.replace(o, bottleneck="quantum", ansatz="rzry")),
        "metrics": {"kid": {"mean": 0.1, "se": 0.01, "subset_std": 0.2}, "fid": {"mean": 30.0},
                    "class_consistency": {"mean": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 64},
                    "n_samples": 64, "seed": 0},
        "loss_curve": [[1, 0.5]], "final_loss": 0.5, "n_parameters": {"total": 1, "trainable": 1},
        "n_reference": 8, "timings": {"train_s": 1.5}, "device": "cpu", "versions": {}, "git_commit": None,
        "command": "",
    }
    folder = study.results_dir("ci", "mnist", tmp_path)
    folder.mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(summary))
    other = {**summary, "options": {**summary["options"], "seed": 1, "bottleneck": "se"},
             "metrics": {**summary["metrics"], "seed": 1}}  # evaluate() records the run's seed
    (folder / "b.json").write_text(json.dumps(other))
    df = load_results("ci", "mnist", tmp_path)
    assert list(df["arm"]) == ["quantum_rzry", "se"] and list(df["seed"]) == [0, 1]
    assert list(df["key"]) == ["a", "b"]
    row = df.iloc[0]
    assert (row["kid"], row["kid_se"], row["fid"], row["class_consistency"]) == (0.1, 0.01, 30.0, 0.9)
    assert row["n_samples"] == 4  # the option, not the metrics' bookkeeping
    assert row["train_s"] == 1.5 and row["final_loss"] == 0.5
    assert "fid_se" not in df.columns and "subset_std" not in df.columns
    assert load_results("full", "mnist", tmp_path).empty


def test_flatten_carries_the_classifier_augment_option():
    """Each row names the classifier that scored it: ``none`` for a summary written before the option existed."""
    options = dataclasses.asdict(_tiny())
    del options["classifier_augment"]
    summary = {"options": options, "metrics": {"kid": {"mean": 0.1, "se": 0.01}}, "final_loss": 0.5,
               "timings": {"train_s": 1.0}, "device": "cpu"}
    assert study.flatten_summary(summary)["classifier_augment"] == "none"
    flips = {**summary, "options": {**options, "classifier_augment": "flips"}}
    assert study.flatten_summary(flips)["classifier_augment"] == "flips"


# ------------------------------------------------------------------------------ CI re-check of committed results


def test_recompute_cost_counts_every_step_of_a_resumed_run():
    options = {"steps": 2000}
    fresh = {"options": options, "timings": {"train_s": 200.0, "per_step_s": 0.1, "sample_s": 12.0,
                                             "metrics_s": 1.0, "total_s": 213.0}}
    # resumed at step 1500: the call trained 500 steps in 50 s, but recomputing means all 2000 steps
    resumed = {"options": options, "timings": {"train_s": 50.0, "per_step_s": 0.1, "sample_s": 12.0,
                                               "metrics_s": 1.0, "total_s": 63.0}}
    assert study.recompute_cost_s(fresh) == pytest.approx(213.0)
    assert study.recompute_cost_s(resumed) == pytest.approx(213.0)
    # a call that found training finished (per_step_s None) says nothing about the cost of training
    done = {"options": options, "timings": {"train_s": 0.1, "per_step_s": None, "sample_s": 12.0,
                                            "metrics_s": 1.0, "total_s": 13.1}}
    assert study.recompute_cost_s(done) is None


def _summary_for_recheck(per_step_s=0.1, pinned=True, **metrics):
    return {
        "options": {"steps": 100}, "device": "cpu", "n_parameters": {"total": 5, "trainable": 5}, "n_reference": 8,
        "timings": {"per_step_s": per_step_s, "sample_s": 1.0, "metrics_s": 1.0},
        "numerics": {"mode": "pinned", "exact": True} if pinned else None,
        "loss_curve": [[20, 0.5], [40, 0.25]], "final_loss": 0.25,
        "metrics": metrics or {"kid": {"mean": 100.0, "se": 10.0}, "fid": {"mean": 30.0}},
        "preview": {"data": "AAAA"},
    }


def test_recheck_candidate_is_the_cheapest_pinned_run_with_a_real_step_time():
    summaries = {
        "old-cheap": _summary_for_recheck(per_step_s=0.01, pinned=False),  # before the pinning: never chosen
        "resumed": _summary_for_recheck(per_step_s=None),  # no per-step time: never chosen
        "pinned-b": _summary_for_recheck(per_step_s=0.2),
        "pinned-a": _summary_for_recheck(per_step_s=0.1),
    }
    assert study.recheck_candidate(summaries) == "pinned-a"
    gpu = {**_summary_for_recheck(), "device": "cuda"}
    assert study.recheck_candidate({"old": summaries["old-cheap"], "gpu": gpu}) is None


def test_recheck_exact_mode_catches_one_changed_number():
    ref = _summary_for_recheck()
    assert study.recheck_differences(ref, json.loads(json.dumps(ref)), "exact") == []
    for change in (
        lambda s: s["loss_curve"][1].__setitem__(1, 0.25000000000000006),
        lambda s: s.__setitem__("final_loss", 0.2500001),
        lambda s: s["metrics"]["fid"].__setitem__("mean", 30.000001),
        lambda s: s["preview"].__setitem__("data", "AAAB"),
        lambda s: s["n_parameters"].__setitem__("total", 6),
    ):
        got = json.loads(json.dumps(ref))
        change(got)
        assert len(study.recheck_differences(ref, got, "exact")) == 1
    # a metric added since the committed file was scored is not compared; one it had must still be there
    newer = {**json.loads(json.dumps(ref)), "metrics_version": 2}
    newer["metrics"]["speckle"] = {"mean": 0.01}
    assert study.recheck_differences({**ref, "metrics_version": 1}, newer, "exact") == []
    assert len(study.recheck_differences({**ref, "metrics_version": 2}, newer, "exact")) == 1
    del newer["metrics"]["fid"]
    assert len(study.recheck_differences({**ref, "metrics_version": 1}, newer, "exact")) == 1
    short = {**ref, "loss_curve": ref["loss_curve"][:1]}  # a run cut short: the curves agree as far as they go
    assert study.recheck_differences(ref, short, "exact") == ["loss curve has 1 windows, the committed one 2"]
    with pytest.raises(ValueError, match="allowed: \\['exact', 'tolerance'\\]"):
        study.recheck_differences(ref, ref, "approximate")


def test_window_means_is_the_committed_loss_curve_arithmetic():
    values = [0.1 * k + 1e-17 * k * k for k in range(1, 48)]
    assert study._downsample(values) == recheck.window_means(values, 1)
    assert study._downsample(values, points=10) == recheck.window_means(values, 5)
    assert recheck.window_means([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [[2, 1.5], [4, 3.5], [5, 5.0]]
    with pytest.raises(ValueError, match="width 0"):
        recheck.window_means(values, 0)


def test_prefix_candidates_are_the_cheapest_run_and_the_cheapest_circuit_run():
    cheap, circuit, dear = (_summary_for_recheck(per_step_s=t) for t in (0.1, 0.3, 0.5))
    circuit["quantum_backend"] = dear["quantum_backend"] = "mps"
    old = {**_summary_for_recheck(per_step_s=0.01, pinned=False), "quantum_backend": "mps"}
    assert recheck.prefix_candidates({"c": cheap, "q": circuit, "d": dear, "old": old}) == ["c", "q"]
    assert recheck.prefix_candidates({"q": circuit, "d": dear}) == ["q"]  # the cheapest has a circuit: one run
    assert recheck.prefix_candidates({"c": cheap}) == ["c"]
    assert recheck.prefix_candidates({"old": old}) == []


def test_prefix_differences_catch_one_changed_loss():
    losses = [1.0 / k for k in range(1, 101)]
    ref = {"loss_curve": study._downsample(losses + [0.01] * 900)}  # a 1000-step run: windows of 10 steps
    assert recheck.prefix_steps(ref, 3) == 30
    assert recheck.prefix_differences(ref, losses, windows=3) == []
    assert recheck.prefix_differences(ref, losses[:30], windows=3) == []
    assert recheck.prefix_differences(ref, losses[:29], windows=3) == ["29 losses recomputed; the first 3 windows "
                                                                       "need 30"]
    bent = list(losses)
    bent[17] *= 1 + 1e-12  # one step, in its 12th digit
    assert [p.split(":")[0] for p in recheck.prefix_differences(ref, bent, windows=3)] == [
        "loss window ending at step 20"]
    assert recheck.prefix_differences(ref, bent, "tolerance", windows=3) == []
    far = [v * 1.2 for v in losses]
    assert len(recheck.prefix_differences(ref, far, "tolerance", windows=3)) == 3
    with pytest.raises(ValueError, match="the committed loss curve has 100"):
        recheck.prefix_steps(ref, 101)
    with pytest.raises(ValueError, match="allowed: \\['exact', 'tolerance'\\]"):
        recheck.prefix_differences(ref, losses, "approximate")


@pytest.mark.parametrize("arm", ["se", "quantum_rzry"])
def test_training_losses_are_the_first_losses_of_the_run(arm, tmp_path):
    """The prefix re-check's recomputation is the run's own training: its losses equal those of run()."""
    options = arm_options(arm, dataset="mnist", label=3, n_train=8, seed=2, steps=7, n_samples=2, n_ref=8,
                          n_qubits=4, sample_steps=2, metrics=False, device="cpu")
    record = experiment.run(options, tmp_path / arm, progress=False)
    assert experiment.training_losses(options, 4) == record["loss_history"][:4]
    assert experiment.training_losses(options, 7) == record["loss_history"]
    with pytest.raises(ValueError, match="steps 8: expected an integer in 1..7"):
        experiment.training_losses(options, 8)


def test_recheck_tolerance_mode_compares_as_another_draw():
    ref = _summary_for_recheck()
    near = _summary_for_recheck(kid={"mean": 150.0, "se": 10.0}, fid={"mean": 90.0})  # 3.5 combined se; fid: no se
    near["final_loss"] = 0.27  # 8% apart
    assert study.recheck_differences(ref, near, "tolerance") == []
    assert study.recheck_differences(ref, near, "exact") != []
    far = _summary_for_recheck(kid={"mean": 160.0, "se": 10.0})  # 4.2 combined se
    assert [p.split(":")[0] for p in study.recheck_differences(ref, far, "tolerance")] == ["metric kid"]
    far["final_loss"] = 0.3
    assert len(study.recheck_differences(ref, far, "tolerance")) == 2


def _committed_full_runs() -> list[Path]:
    return sorted((REPO_ROOT / "results" / "full").glob("*/*.json"))


def test_committed_full_results_are_consistent():
    """Every committed full-profile file is a run of a full-profile grid, named by its key, with its provenance."""
    files = _committed_full_runs()
    if not files:
        pytest.skip("no full-profile result committed under results/full/ yet (run `make study`)")
    for path in files:
        s = json.loads(path.read_text())
        options = cli.RunOptions(**s["options"])
        assert path.stem == run_key(options), f"{path.name} is not named by its options' key"
        grid = {run_key(o) for o in study_runs(path.parent.name, "full")}
        assert path.stem in grid, f"{path} is not a run of the full {path.parent.name} grid"
        assert s["command"].startswith("python -m qdiff_lib study --profile full")
        assert s["git_commit"] and len(s["loss_curve"]) >= 1 and math.isfinite(s["final_loss"])
        assert study.decode_preview(s["preview"]).shape[0] == study.PREVIEW_N, f"{path.name} has no sample preview"


@pytest.mark.slow
@pytest.mark.full_recheck
def test_committed_full_run_is_reproduced(tmp_path, capsys):
    """Recompute the cheapest committed full-profile run produced under the pinned numerics and compare it with its
    committed file: exactly where this process runs the pinned numerics (any x86-64 CPU with AVX2), within the
    statistical tolerance of :func:`qdiff_lib.study.recheck_differences` elsewhere. Prints the mode it used.

    The run is recomputed on the CPU with the torch threads it recorded, as committed runs are produced. Never
    skipped: with no pinned run committed, it fails.
    """
    files = _committed_full_runs()
    committed = {p: json.loads(p.read_text()) for p in files}
    path = study.recheck_candidate(committed)
    assert path is not None, (
        f"none of the {len(files)} committed full-profile runs under results/full/ was produced under the pinned "
        "numerics with a real per-step time: recompute one with `python -m qdiff_lib study --profile full ...`"
    )
    ref = committed[path]
    mode = study.recheck_mode(ref)
    with capsys.disabled():
        print(f"\nre-check of {path.parent.name}/{path.name}: {mode} comparison "
              f"({'pinned numerics here' if mode == 'exact' else 'numerics here: ' + '; '.join(numerics.check())})")
    options = dataclasses.replace(cli.RunOptions(**ref["options"]), device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(ref["numerics"]["torch_threads"])
    try:
        got = run_one(options, tmp_path / "summary", runs_root=tmp_path / "runs", command=ref["command"])
    finally:
        torch.set_num_threads(threads)
    problems = study.recheck_differences(ref, got, mode)
    assert not problems, f"{path.name} ({mode} re-check):\n" + "\n".join(problems)


def test_committed_run_prefixes_are_reproduced(capsys):
    """Recompute the first :data:`~qdiff_lib.recheck.PREFIX_WINDOWS` loss-curve windows of the cheapest pinned
    committed run and of the cheapest pinned committed run with a circuit, and compare them with the committed
    curves: exactly where this process runs the pinned numerics, within a relative tolerance elsewhere. Recomputed
    on the CPU with the torch threads each run recorded. Never skipped: with no pinned run committed, it fails."""
    files = _committed_full_runs()
    committed = {p: json.loads(p.read_text()) for p in files}
    paths = recheck.prefix_candidates(committed)
    assert paths, f"none of the {len(files)} committed full-profile runs under results/full/ is pinned"
    threads = torch.get_num_threads()
    failures = []
    try:
        for path in paths:
            ref = committed[path]
            mode = study.recheck_mode(ref)
            steps = recheck.prefix_steps(ref)
            with capsys.disabled():
                print(f"\nprefix re-check of {path.parent.name}/{path.name}: first {steps} steps, {mode} comparison")
            torch.set_num_threads(ref["numerics"]["torch_threads"])
            options = dataclasses.replace(cli.RunOptions(**ref["options"]), device="cpu")
            problems = recheck.prefix_differences(ref, experiment.training_losses(options, steps), mode)
            failures += [f"{path.name} ({mode}): {p}" for p in problems]
    finally:
        torch.set_num_threads(threads)
    assert not failures, "\n".join(failures)
