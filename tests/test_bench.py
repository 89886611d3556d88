"""The benchmarks' command line (``python -m bench``): shared options, typos refused before anything runs; the
memory benchmark's plan and the study-cost projection of the performance chapter. The benchmarks themselves are
timed by ``make bench``, never here."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
import torch

from bench.__main__ import BENCHMARKS, main
from bench.bench_memory import IMPLEMENTATIONS, estimated_peak_bytes, planned
from bench.bench_training import top_operators
from bench.common import run_cost_s, sampling_steps, step_seconds, study_cost
from qdiff_lib.quantum import mps_peak_bytes, peak_bytes


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_takes_the_shared_options_and_refuses_a_typo(name, capsys):
    parser = importlib.import_module(BENCHMARKS[name]).build_parser()
    args = parser.parse_args(["--threads", "1", "--json", "out.json"])
    assert (args.threads, args.json) == (1, "out.json")
    with pytest.raises(SystemExit):
        parser.parse_args(["--treads", "1"])
    assert "unrecognized arguments: --treads" in capsys.readouterr().err


def test_options_are_checked_by_every_named_benchmark_before_the_first_runs(capsys):
    with pytest.raises(SystemExit):
        main(["noise", "metrics", "--qubits", "4"])  # --qubits is an option of noise, not of metrics
    captured = capsys.readouterr()
    assert "python -m bench metrics: error: unrecognized arguments: --qubits 4" in captured.err
    assert "== bench" not in captured.out  # nothing ran
    with pytest.raises(SystemExit, match="--json names one file"):
        main(["noise", "metrics", "--json", "out.json"])
    with pytest.raises(SystemExit, match=r"unknown benchmark\(s\) \['nosie'\]; allowed: \['quantum'"):
        main(["nosie"])


def _run(bottleneck, n_qubits=8, steps=100, n_samples=10, sampler="ddim", sample_steps=None, timesteps=1000):
    return SimpleNamespace(bottleneck=bottleneck, n_qubits=n_qubits, steps=steps, n_samples=n_samples,
                           sampler=sampler, sample_steps=sample_steps, timesteps=timesteps)


def test_step_seconds_reads_the_training_benchmark_rows():
    rows = [{"name": "none", "median_s": 0.2}, {"name": "se (8)", "median_s": 0.25},
            {"name": "quantum rzry (8q)", "median_s": 0.3}, {"name": "quantum rzry (16q)", "median_s": 0.4},
            {"name": "layer only (16q)", "median_s": 0.01}]
    assert step_seconds(rows) == {"none": 0.2, "se": 0.25, 8: 0.3, 16: 0.4}


def test_study_cost_is_steps_times_the_arm_step_plus_sampling_scaled_to_se():
    step_s = {"none": 1.0, "se": 2.0, 8: 3.0, 16: 4.0}
    assert sampling_steps(_run("se")) == 50 and sampling_steps(_run("se", timesteps=20)) == 20
    assert sampling_steps(_run("se", sampler="ddpm")) == 1000 and sampling_steps(_run("se", sample_steps=7)) == 7
    # se: 100 steps * 2 s + 10 images * 50 steps * 0.01 s; the quantum arm's sampling scaled by 3 / 2
    assert run_cost_s(_run("se"), step_s, 0.01) == pytest.approx(200 + 5)
    assert run_cost_s(_run("fourier"), step_s, 0.01) == pytest.approx(205)
    assert run_cost_s(_run("none"), step_s, 0.01) == pytest.approx(100 + 2.5)
    assert run_cost_s(_run("quantum"), step_s, 0.01) == pytest.approx(300 + 7.5)
    assert run_cost_s(_run("quantum"), step_s, 0.01, n_qubits=16) == pytest.approx(400 + 10)
    runs = [_run("se"), _run("quantum", n_qubits=16), _run("none", steps=50)]
    cost = study_cost(runs, step_s, 0.01)
    assert cost["runs"] == 3 and cost["quantum_runs"] == 1 and cost["train_steps"] == 250
    assert cost["cpu_hours"] == pytest.approx((205 + 410 + 52.5) / 3600)
    assert study_cost(runs, step_s, 0.01, n_qubits=8)["cpu_hours"] == pytest.approx((205 + 307.5 + 52.5) / 3600)
    with pytest.raises(KeyError, match="at 12 qubits"):
        run_cost_s(_run("quantum", n_qubits=12), step_s, 0.01)
    with pytest.raises(ValueError, match="options.steps is None"):
        run_cost_s(_run("se", steps=None), step_s, 0.01)


def test_memory_benchmark_measures_mps_at_every_width_and_the_alternatives_up_to_alt_max():
    pairs = planned([8, 16], alt_max=8, mps_qubits=[16, 64])
    assert [p for p in pairs if p[1] == 8] == [(impl, 8) for impl in IMPLEMENTATIONS]
    assert [p for p in pairs if p[1] == 16] == [("ours", 16), ("mps", 16)]
    assert pairs[-1] == ("mps", 64) and len(pairs) == len(IMPLEMENTATIONS) + 3
    assert estimated_peak_bytes("ours", 16, 64, 3) == peak_bytes(64, 16, 3)
    assert estimated_peak_bytes("mps", 128, 64, 3) == mps_peak_bytes(64, 128, 3)
    assert estimated_peak_bytes("lightning.qubit adjoint", 16, 64, 3) is None


def test_top_operators_are_shares_of_the_profile_and_leave_stderr_clean(capfd):
    ops = top_operators(lambda: torch.randn(64, 64) @ torch.randn(64, 64), steps=2, top=3)
    assert 1 <= len(ops) <= 3 and all(0 < op["self_cpu_share"] <= 1 for op in ops)
    assert sum(op["self_cpu_share"] for op in ops) <= 1 + 1e-9
    assert any("mm" in op["op"] for op in ops)
    captured = capfd.readouterr()
    assert captured.err == "", captured.err  # kineto's profiler_start/profiler_stop lines suppressed
    print("stderr", file=__import__("sys").stderr)  # and file descriptor 2 works again afterwards
    assert capfd.readouterr().err == "stderr\n"
