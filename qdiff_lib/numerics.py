"""Pinned CPU numerics: the same bits from the same run on every x86-64 CPU with AVX2.

Float results of training depend on the SIMD kernels a library picks for the CPU it runs on: an AVX-512 kernel
sums in another order than an AVX2 one, the last bits differ, and over thousands of optimiser steps the runs drift
apart (a full-profile run computed on an AVX-512 CPU ended with loss 0.080917, its recomputation on an AVX2-only
CPU with 0.07854). Four libraries choose kernels by CPU, each with its own switch:

========================  =====================  ================================================================
library                   variable               what it computes here
========================  =====================  ================================================================
ATen (torch's own ops)    ``ATEN_CPU_CAPABILITY``  elementwise ops, reductions, the optimiser
oneDNN (torch)            ``ONEDNN_MAX_CPU_ISA``   convolutions and their gradients: the U-Net, the classifiers
MKL (torch's BLAS)        ``MKL_CBWR``             matrix products of ``nn.Linear`` (conditional numerical
                                                  reproducibility; on Intel CPUs MKL dispatches AVX-512 code)
OpenBLAS (numpy, scipy)   ``OPENBLAS_CORETYPE``    the metrics' matrix products and ``scipy.linalg.sqrtm`` (FID)
========================  =====================  ================================================================

:func:`pin` sets all four to the AVX2 level (``avx2``, ``AVX2``, ``AVX2``, ``Haswell``), which every x86-64 CPU
of the last decade has (Intel since Haswell, 2013; AMD since Excavator and every Zen). What proved necessary, on an
AMD EPYC with AVX-512 against reference bits from an AVX2-only EPYC (two 300-step runs, ``se`` and ``quantum``):
ATen alone did not reproduce them (the losses differ from step 4), oneDNN alone did, and OpenBLAS's Haswell and
SkylakeX kernels give different matrix products and square roots (the metrics). MKL is pinned because Intel CPUs
take AVX-512 paths in it that an AMD CPU never exercises, so the difference cannot be ruled out here. The pin
costs little: about 5% more time per training step on the AVX-512 machine.

A run's bits also depend on the number of torch threads (a parallel reduction splits its sum by thread), so the
commands fix it too (one thread per run by default, see ``--threads``) and every result file records it.

The variables must be set before the libraries read them: OpenBLAS when numpy or scipy is first imported, ATen at
the first vectorised op, oneDNN at its first primitive. ``import qdiff_lib`` calls :func:`pin` before it imports
anything else, so ``python -m qdiff_lib ...`` and any script or notebook that imports ``qdiff_lib`` first are
pinned; the Makefile exports the same variables for the tests and the chapters. :func:`state` reports what
actually took effect (torch's capability, each loaded OpenBLAS's kernel family), and :func:`check` says what is
missing when something was initialised too early.

Set ``QDIFF_NUMERICS=native`` to let every library use the fastest kernels of the CPU (results then reproduce only
on CPUs of the same kind). A variable set by the user is never overwritten: it takes precedence, and
:func:`state` records it. Where exactness cannot be promised (not x86-64, a CPU without AVX2, a GPU),
:func:`state` says so (``exact: false``) and the re-check of committed results compares within a stated
statistical tolerance instead (``tests/test_study.py``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

__all__ = ["MODES", "PINNED_ENV", "SWITCH", "mode", "pin", "state", "check", "cpu_flags", "can_pin"]

#: The environment variable choosing the mode.
SWITCH = "QDIFF_NUMERICS"
#: ``pinned`` (the default: AVX2 kernels everywhere) or ``native`` (the CPU's fastest kernels).
MODES = ("pinned", "native")
#: What :func:`pin` sets, in pinned mode, on an x86-64 CPU with AVX2 and FMA.
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "OPENBLAS_CORETYPE": "Haswell",
}
#: The values :func:`state` expects to read back when the pin took effect.
_EXPECTED_CAPABILITY = "AVX2"
_EXPECTED_OPENBLAS = "haswell"


def mode() -> str:
    """The requested mode, from ``$QDIFF_NUMERICS`` (default ``pinned``); ValueError for another value."""
    value = os.environ.get(SWITCH, "pinned").strip().lower() or "pinned"
    if value not in MODES:
        raise ValueError(f"{SWITCH}={value!r} is not a numerics mode; allowed: {list(MODES)}")
    return value


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def can_pin() -> bool:
    """True on an x86-64 CPU with AVX2 and FMA: the pinned kernels exist and give the reference bits."""
    return _is_x86_64() and {"avx2", "fma"} <= cpu_flags()


def pin() -> dict[str, str]:
    """Set the variables of :data:`PINNED_ENV` that are not already set; return those it set.

    Does nothing in native mode, or where the AVX2 kernels do not exist (:func:`can_pin` False): forcing
    OpenBLAS's Haswell kernels on a CPU without AVX2 would crash.
    """
    if mode() != "pinned" or not can_pin():
        return {}
    applied = {}
    for name, value in PINNED_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    return applied


def _openblas_architectures() -> dict[str, str | None]:
    """``{library file: OpenBLAS kernel family}`` of every OpenBLAS loaded in this process (via threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return {}
    return {
        os.path.basename(info["filepath"]): info.get("architecture")
        for info in threadpool_info()
        if info.get("internal_api") == "openblas"
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def state() -> dict[str, Any]:
    """What the numerics of this process are, as recorded in every result file.

    Keys: ``mode`` (requested), ``exact`` (True when every pinned setting took effect on a CPU that can pin:
    the run reproduces bit for bit on any x86-64 CPU with AVX2), ``cpu_capability`` (ATen's), ``openblas``
    (kernel family of each loaded OpenBLAS), ``settings`` (the four variables as the process sees them),
    ``torch_threads``, ``machine``, ``cpu``, ``cpu_has_avx512``, and ``problems`` (why ``exact`` is False).
    """
    import numpy  # noqa: F401  (loads numpy's OpenBLAS, so that its kernel family can be read)
    import scipy.linalg  # noqa: F401  (likewise scipy's)
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    openblas = _openblas_architectures()
    flags = cpu_flags()
    problems = check(capability=capability, openblas=openblas)
    return {
        "mode": mode(),
        "exact": not problems,
        "cpu_capability": capability,
        "openblas": openblas,
        "settings": {name: os.environ.get(name) for name in PINNED_ENV},
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_has_avx512": "avx512f" in flags,
        "problems": problems,
    }


def check(capability: str | None = None, openblas: dict[str, str | None] | None = None) -> list[str]:
    """Why this process's numerics are not the pinned ones (empty list: they are). Reads torch and OpenBLAS.

    ``capability`` and ``openblas`` default to what :func:`state` reads; pass them to check other values.
    """
    problems = []
    if mode() != "pinned":
        problems.append(f"{SWITCH}={mode()}: the CPU's native kernels are used")
        return problems
    if not _is_x86_64():
        return [f"not an x86-64 machine ({platform.machine()}): the pinned kernels are x86-64 kernels"]
    if not can_pin():
        return ["the CPU lacks AVX2 or FMA: the pinned kernels cannot run here"]
    for name, value in PINNED_ENV.items():
        got = os.environ.get(name)
        if got is not None and got.lower() != value.lower():
            problems.append(f"{name}={got} overrides the pinned {value}")
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    if capability != _EXPECTED_CAPABILITY:
        problems.append(
            f"torch's CPU capability is {capability}, not {_EXPECTED_CAPABILITY}: torch ran an operation before "
            f"qdiff_lib was imported; import qdiff_lib first, or export "
            + " ".join(f"{k}={v}" for k, v in PINNED_ENV.items())
        )
    if openblas is None:
        openblas = _openblas_architectures()
    wrong = {lib: arch for lib, arch in openblas.items() if (arch or "").lower() != _EXPECTED_OPENBLAS}
    if wrong:
        problems.append(
            f"OpenBLAS kernels {wrong} instead of Haswell: numpy or scipy was imported before qdiff_lib; "
            f"import qdiff_lib first, or export OPENBLAS_CORETYPE=Haswell"
        )
    return problems

