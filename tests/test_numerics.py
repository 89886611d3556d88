"""Pinned CPU numerics (qdiff_lib.numerics): what is set, what is reported, and the same bits on every CPU.

The cross-CPU check: ``tests/reference/avx2-reference.json`` holds the loss histories and sample checksums of two
300-step runs computed on an AVX2-only CPU; :func:`test_reproduces_the_avx2_reference_bits` re-runs them with the
project's command and requires identical bits on whatever CPU runs the tests. On an AVX-512 CPU,
:func:`test_native_kernels_do_not_reproduce_the_reference` shows that the check can fail: without the pin the
losses differ within the first steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from qdiff_lib import REPO_ROOT, numerics

REFERENCE = json.loads((REPO_ROOT / "tests" / "reference" / "avx2-reference.json").read_text())


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without any numerics setting, so that the command must pin by itself."""
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k != numerics.SWITCH}
    env.pop("OMP_NUM_THREADS", None)
    return {**env, **extra}


def _run_reference(arm: str, out, steps: int | None = None, **env: str) -> tuple[list[float], str]:
    """Run the reference command of ``arm`` (optionally fewer steps) into ``out``; return (losses, samples sha256)."""
    command = REFERENCE["runs"][arm]["command"].split()
    assert command[:3] == ["python", "-m", "qdiff_lib"]
    args = [sys.executable, *command[1:]]
    args[args.index("OUT")] = str(out)
    if steps is not None:
        args[args.index("--steps") + 1] = str(steps)
    subprocess.run([*args, "--no-progress"], check=True, cwd=REPO_ROOT, env=_clean_env(**env),
                   capture_output=True, timeout=1200)
    record = json.loads((out / "result.json").read_text())
    with np.load(out / "samples.npz") as f:
        samples = f["samples"]
    dtype, shape = REFERENCE["runs"][arm]["samples_dtype_shape"]
    assert samples.dtype == np.dtype(dtype) and list(samples.shape) == shape
    return record["loss_history"], hashlib.sha256(samples.tobytes()).hexdigest()


def test_this_test_process_runs_the_pinned_numerics():
    """conftest imports qdiff_lib first, so the tests run what committed results and chapters run."""
    state = numerics.state()
    if numerics.can_pin():
        assert state["problems"] == [] and state["exact"], state["problems"]
        assert state["cpu_capability"] == "AVX2"
        assert state["openblas"] and {a.lower() for a in state["openblas"].values()} == {"haswell"}
    else:  # ARM, or an x86-64 CPU without AVX2: exactness is not claimed, and the state says why
        assert not state["exact"] and state["problems"]


def test_pin_sets_only_what_the_user_did_not_set(monkeypatch):
    if not numerics.can_pin():
        pytest.skip("pin() does nothing on a CPU without AVX2 (tested by test_pin_does_nothing_where_it_cannot)")
    for name in numerics.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    applied = numerics.pin()
    assert applied == {k: v for k, v in numerics.PINNED_ENV.items() if k != "MKL_CBWR"}
    assert os.environ["MKL_CBWR"] == "AUTO"
    assert any("MKL_CBWR=AUTO overrides" in p for p in numerics.check())


def test_native_mode_sets_nothing_and_says_so(monkeypatch):
    for name in numerics.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(numerics.SWITCH, "native")
    assert numerics.pin() == {}
    assert all(name not in os.environ for name in numerics.PINNED_ENV)
    assert numerics.check() == ["QDIFF_NUMERICS=native: the CPU's native kernels are used"]


def test_pin_does_nothing_where_it_cannot(monkeypatch):
    for name in numerics.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(numerics, "cpu_flags", lambda: frozenset({"sse2"}))  # an x86-64 CPU without AVX2
    assert numerics.pin() == {}
    if numerics._is_x86_64():
        assert numerics.check() == ["the CPU lacks AVX2 or FMA: the pinned kernels cannot run here"]


def test_a_bad_mode_names_the_allowed_ones(monkeypatch):
    monkeypatch.setenv(numerics.SWITCH, "fast")
    with pytest.raises(ValueError, match=r"QDIFF_NUMERICS='fast'.*allowed: \['pinned', 'native'\]"):
        numerics.mode()


def test_check_reports_libraries_initialised_before_the_pin():
    if not numerics.can_pin():
        pytest.skip("the pinned kernels do not exist on this CPU")
    problems = numerics.check(capability="AVX512", openblas={"libopenblas.so": "SkylakeX"})
    assert len(problems) == 2
    assert "capability is AVX512" in problems[0] and "import qdiff_lib first" in problems[0]
    assert "SkylakeX" in problems[1]
    assert numerics.check(capability="AVX2", openblas={"libopenblas.so": "Haswell"}) == []


def test_the_command_records_its_numerics_and_versions(tmp_path):
    """Typed by a user with no variable set, ``python -m qdiff_lib run`` pins itself and records it."""
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "qdiff_lib", "run", "--dataset", "mnist", "--label", "3", "--n-train", "8",
         "--bottleneck", "se", "--n-qubits", "4", "--steps", "2", "--n-samples", "2", "--sample-steps", "2",
         "--no-metrics", "--no-progress", "--device", "cpu", "--out", str(out)],
        check=True, cwd=REPO_ROOT, env=_clean_env(), capture_output=True, timeout=600,
    )
    record = json.loads((out / "result.json").read_text())
    state = record["numerics"]
    assert state["torch_threads"] == 1  # the command's default --threads
    assert state["exact"] == numerics.can_pin()
    if numerics.can_pin():
        assert state["settings"] == numerics.PINNED_ENV and state["cpu_capability"] == "AVX2"
    assert set(record["versions"]) >= {"python", "qdiff_lib", "torch", "torchmetrics", "scipy", "numpy",
                                       "pennylane", "medmnist"}
    assert isinstance(record["git_dirty"], bool)


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["se", "quantum"])
def test_reproduces_the_avx2_reference_bits(arm, tmp_path):
    """Every loss of 300 steps and the samples' sha256 equal those computed on an AVX2-only CPU."""
    if not numerics.can_pin():
        pytest.skip(f"bit-exactness is promised on x86-64 CPUs with AVX2 only, not on this {platform.machine()}")
    want = REFERENCE["runs"][arm]
    losses, sha = _run_reference(arm, tmp_path / arm)
    first = next((i for i, (a, b) in enumerate(zip(losses, want["loss_history"], strict=False)) if a != b), None)
    assert first is None, (f"{arm}: loss of step {first + 1} is {losses[first]!r}, the AVX2 CPU's "
                           f"{want['loss_history'][first]!r}")
    assert len(losses) == len(want["loss_history"])
    assert sha == want["samples_sha256"], f"{arm}: the samples differ from the AVX2 CPU's"


def test_native_kernels_do_not_reproduce_the_reference(tmp_path):
    """The check above can fail: with the CPU's own AVX-512 kernels the losses leave the reference within 10 steps
    (measured: from step 4 for se, step 3 for quantum), and with the pin the same 10 steps are identical."""
    if "avx512f" not in numerics.cpu_flags():
        pytest.skip("this CPU has no AVX-512: its native kernels are the pinned ones")
    want = REFERENCE["runs"]["se"]["loss_history"][:10]
    native, _ = _run_reference("se", tmp_path / "native", steps=10, QDIFF_NUMERICS="native")
    pinned, _ = _run_reference("se", tmp_path / "pinned", steps=10)
    assert pinned == want
    assert native != want
