"""The CI re-check of committed results: which committed run to recompute, and how to compare it.

A committed run computed under the pinned numerics (:func:`is_pinned`) reproduces bit for bit on any x86-64 CPU
with AVX2. Two re-checks use this:

- the *prefix* re-check (``make test``): the first :data:`PREFIX_WINDOWS` windows of the loss curve of the cheapest
  pinned run and of the cheapest pinned run with a circuit (:func:`prefix_candidates`) are recomputed
  (:func:`qdiff_lib.experiment.training_losses`) and must equal the committed ones exactly
  (:func:`prefix_differences`): each window is the mean of its steps' losses, and a change of the numerics moves
  every loss after it (the reference-bits test of :mod:`qdiff_lib.numerics` shows other kernels leave the
  reference within a few steps);
- the *full* re-check (``make recheck``, also run by CI): the cheapest pinned run (:func:`recheck_candidate`) is
  recomputed end to end, training, sampling and scoring, and every number compared (:func:`recheck_differences`,
  mode ``exact``); on any other platform the recomputation is another draw of the same run, compared within stated
  tolerances (mode ``tolerance``).
"""

from __future__ import annotations

import math
from typing import Any

from qdiff_lib import numerics
from qdiff_lib._checks import check_choice

__all__ = ["RECHECK_MODES", "RECHECK_Z", "RECHECK_FINAL_LOSS_RTOL", "PREFIX_WINDOWS", "recompute_cost_s", "is_pinned",
           "recheck_candidate", "recheck_mode", "recheck_differences", "window_means", "prefix_candidates",
           "prefix_steps", "prefix_differences"]


def recompute_cost_s(summary: dict[str, Any]) -> float | None:
    """Seconds that recomputing ``summary``'s run from scratch takes, estimated from its recorded timings.

    ``timings.train_s`` is the wall time of the last call only, so for a run resumed from a checkpoint it counts just
    the resumed steps; the per-step time times the run's steps, plus sampling and metrics, holds for both. None when
    the file has no real per-step time (its last call found training finished and only sampled, or an epochs
    budget): such a file says nothing about the cost of training.
    """
    t = summary["timings"]
    steps = summary["options"]["steps"]
    if t.get("per_step_s") is None or steps is None:
        return None
    return float(t["per_step_s"] * steps + t.get("sample_s", 0.0) + t.get("metrics_s", 0.0))


def is_pinned(summary: dict[str, Any]) -> bool:
    """True when ``summary``'s run ran under the pinned numerics (:mod:`qdiff_lib.numerics`) on the CPU, so that it
    reproduces bit for bit on any x86-64 CPU with AVX2. Runs committed before the pinning carry no ``numerics``."""
    state = summary.get("numerics") or {}
    return summary.get("device") == "cpu" and state.get("mode") == "pinned" and bool(state.get("exact"))


def recheck_candidate(summaries: dict[Any, dict[str, Any]]) -> Any | None:
    """The key of the committed run that the CI re-check recomputes: the cheapest (:func:`recompute_cost_s`) of
    the pinned runs (:func:`is_pinned`) with a real per-step time, ties broken by key; None if there is none."""
    costs = {k: recompute_cost_s(s) for k, s in summaries.items() if is_pinned(s)}
    costs = {k: c for k, c in costs.items() if c is not None}
    return min(costs, key=lambda k: (costs[k], str(k))) if costs else None


def prefix_candidates(summaries: dict[Any, dict[str, Any]]) -> list[Any]:
    """The keys of the committed runs whose loss-curve prefix ``make test`` recomputes: the cheapest pinned run
    (:func:`recheck_candidate`) and the cheapest pinned run with a circuit (``quantum_backend`` set), if it is
    another; an empty list if no run is pinned. The cost ranking is :func:`recompute_cost_s`."""
    first = recheck_candidate(summaries)
    if first is None:
        return []
    circuits = recheck_candidate({k: s for k, s in summaries.items() if s.get("quantum_backend")})
    return [first] + ([circuits] if circuits is not None and circuits != first else [])


#: The windows of a committed loss curve that the prefix re-check recomputes (a committed 2000-step run has 100
#: windows of 20 steps: 2 windows are its first 40 steps). Other kernels leave the reference bits within the first
#: 4 steps (:mod:`qdiff_lib.numerics`), so 40 steps keep a tenfold margin; 200 and then 100 (until issue 21's cuts
#: of make test's time) cost 80 and 30 more seconds of make test on a 2-core machine for no added power. The
#: end-to-end re-check (``make recheck``) recomputes all the steps of one run.
PREFIX_WINDOWS = 2


def window_means(values: list[float], width: int) -> list[list[float]]:
    """``[[step, mean of the losses of the window ending at step], ...]`` over consecutive windows of ``width``
    steps (the last may be shorter): the committed ``loss_curve`` of a run, whose ``width`` is ``ceil(steps /
    100)``. The mean is ``sum(window) / len(window)`` in Python floats, so that a recomputation can equal it."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width {width!r}: expected a positive integer")
    out = []
    for start in range(0, len(values), width):
        window = values[start : start + width]
        out.append([start + len(window), sum(window) / len(window)])
    return out


def prefix_steps(summary: dict[str, Any], windows: int = PREFIX_WINDOWS) -> int:
    """The optimiser steps that the first ``windows`` windows of ``summary``'s committed loss curve cover."""
    curve = summary["loss_curve"]
    if not 1 <= windows <= len(curve):
        raise ValueError(f"windows {windows!r}: the committed loss curve has {len(curve)}")
    return int(curve[windows - 1][0])


def prefix_differences(ref: dict[str, Any], losses: list[float], mode: str = "exact",
                       windows: int = PREFIX_WINDOWS) -> list[str]:
    """What differs between the first ``windows`` windows of ``ref``'s committed loss curve and those of the
    recomputed per-step ``losses``, which must cover :func:`prefix_steps` (empty: they agree).

    ``exact``: every window mean equal. ``tolerance`` (another platform, see :func:`recheck_mode`): each within
    :data:`RECHECK_FINAL_LOSS_RTOL` relative difference, as the final loss of the full re-check.
    """
    check_choice("re-check mode", mode, RECHECK_MODES)
    curve = ref["loss_curve"][:windows]
    width = int(curve[0][0])
    steps = prefix_steps(ref, windows)
    if len(losses) < steps:
        return [f"{len(losses)} losses recomputed; the first {windows} windows need {steps}"]
    got = window_means(list(losses[:steps]), width)
    problems = []
    for (step, have), (want_step, want) in zip(got, curve, strict=True):
        if step != want_step:
            problems.append(f"window ending at step {step} where the committed one ends at {want_step}")
        elif mode == "exact" and have != want:
            problems.append(f"loss window ending at step {step}: {have!r} != {want!r}")
        elif mode == "tolerance" and not abs(have - want) <= RECHECK_FINAL_LOSS_RTOL * abs(want):
            problems.append(f"loss window ending at step {step}: {have:.5g} vs {want:.5g} (relative difference "
                            f"> {RECHECK_FINAL_LOSS_RTOL})")
    return problems


#: How the re-check compares: ``exact`` (every number equal: a pinned run recomputed by a pinned process on an
#: x86-64 CPU with AVX2) or ``tolerance`` (any other platform: ARM, a CPU without AVX2, a GPU, native numerics).
RECHECK_MODES = ("exact", "tolerance")
#: Tolerance mode: each metric with a standard error must agree within this many combined standard errors ...
RECHECK_Z = 4.0
#: ... and the final training loss (a mean over the last steps' noisy losses) within this relative difference.
RECHECK_FINAL_LOSS_RTOL = 0.10


def recheck_mode(summary: dict[str, Any]) -> str:
    """``exact`` when ``summary`` is pinned and this process runs the pinned numerics, else ``tolerance``."""
    return "exact" if is_pinned(summary) and not numerics.check() else "tolerance"


def _numeric_leaves(obj: Any, prefix: str = "") -> dict[str, float]:
    """``{"kid.mean": 0.1, ...}``: every number in a nested dict (booleans and None excluded)."""
    if isinstance(obj, dict):
        out: dict[str, float] = {}
        for key, value in obj.items():
            out.update(_numeric_leaves(value, f"{prefix}{key}."))
        return out
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return {prefix[:-1]: float(obj)}
    return {}


def recheck_differences(ref: dict[str, Any], got: dict[str, Any], mode: str) -> list[str]:
    """What differs between a committed summary ``ref`` and its recomputation ``got`` (empty: they agree).

    ``exact``: the parameter counts, the loss curve, the final loss, every number of the metrics and the sample
    preview must be equal (for a file scored by an older :data:`~qdiff_lib.metrics.METRICS_VERSION`, every
    metric it has; entries added to the metrics since are not compared). ``tolerance``: where other kernels round
    differently, a 2000-step run drifts onto another trajectory, so the recomputation is compared as another draw of
    the same run: equal parameter counts,
    the final loss within :data:`RECHECK_FINAL_LOSS_RTOL`, and every metric that carries a standard error
    (``mean``, ``se``) within :data:`RECHECK_Z` combined standard errors; metrics without one are not compared.
    """
    check_choice("re-check mode", mode, RECHECK_MODES)
    problems = []
    if got["n_parameters"] != ref["n_parameters"] or got["n_reference"] != ref["n_reference"]:
        problems.append(f"parameter or reference counts differ: {got['n_parameters']}, {got['n_reference']} "
                        f"!= {ref['n_parameters']}, {ref['n_reference']}")
    if mode == "exact":
        curve, committed = got["loss_curve"], ref["loss_curve"]
        if curve != committed:
            first = next((i for i, (a, b) in enumerate(zip(curve, committed, strict=False)) if a != b), None)
            if first is None:  # one is the beginning of the other
                problems.append(f"loss curve has {len(curve)} windows, the committed one {len(committed)}")
            else:
                problems.append(f"loss curve differs from window {first}: {curve[first]} != {committed[first]}")
        if got["final_loss"] != ref["final_loss"]:
            problems.append(f"final loss {got['final_loss']!r} != {ref['final_loss']!r}")
        want, have = _numeric_leaves(ref["metrics"]), _numeric_leaves(got["metrics"])
        if (ref.get("metrics_version") or 0) < (got.get("metrics_version") or 0):
            # scored by older metrics: entries added since have nothing to be compared with (every old one must be
            # there and equal)
            have = {k: v for k, v in have.items() if k in want}
        if set(want) != set(have):
            problems.append(f"metrics differ in their entries: {sorted(set(want) ^ set(have))}")
        problems += [f"metric {k}: {have[k]!r} != {want[k]!r}" for k in sorted(set(want) & set(have))
                     if have[k] != want[k]]
        if (got.get("preview") or {}).get("data") != (ref.get("preview") or {}).get("data"):
            problems.append("sample preview differs")
        return problems
    rel = abs(got["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"])
    if not rel <= RECHECK_FINAL_LOSS_RTOL:
        problems.append(f"final loss {got['final_loss']:.5g} vs {ref['final_loss']:.5g}: relative difference "
                        f"{rel:.3g} > {RECHECK_FINAL_LOSS_RTOL}")
    for name, value in ref["metrics"].items():
        if not (isinstance(value, dict) and "se" in value and "mean" in value):
            continue
        other = got["metrics"].get(name)
        if not (isinstance(other, dict) and "mean" in other and "se" in other):
            problems.append(f"metric {name} missing from the recomputation")
            continue
        z = abs(other["mean"] - value["mean"]) / max(math.hypot(other["se"], value["se"]), 1e-300)
        if not z <= RECHECK_Z:
            problems.append(f"metric {name}: {other['mean']:.5g} vs {value['mean']:.5g} is {z:.2g} combined "
                            f"standard errors apart (> {RECHECK_Z})")
    return problems
