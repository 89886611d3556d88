"""Shared helpers of the benchmarks: alternating timing, medians and ratios, machine description, JSON output.

Shared machines are noisy, so every comparison is timed *alternately* in one loop (A, B, C, A, B, C, ...):
a burst of load then hits every contender alike, and the ratio of medians is what the benchmarks report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Where the committed full benchmark run lives (each module's ``--json`` output).
RESULTS_DIR = REPO_ROOT / "results" / "bench"


def benchmark_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m bench <name>`` with the options every benchmark takes, ``--threads`` and ``--json``
    (``python -m bench --threads 1`` passes them to each); the benchmark adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is steadier on a shared machine)")
    parser.add_argument("--json", default=None,
                        help="also write the results there (with every timing, machine info and command)")
    return parser


def parse_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (a typo stops the benchmark), then ``--threads`` applied to torch, when given."""
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def time_once(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(fns: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
              repeats: Mapping[str, int] | None = None) -> dict[str, list[float]]:
    """Time every ``fns[name]()`` in alternation for ``rounds`` rounds; ``{name: [seconds, ...]}``.

    Each round calls every contender in turn, ``repeats.get(name, 1)`` times each; ``warmup`` untimed calls of
    each contender come first (plan caches, allocator, lazy imports).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    repeats = repeats or {}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name] += [time_once(fn) for _ in range(repeats.get(name, 1))]
    return times


def summarize(times: Mapping[str, list[float]], reference: str) -> list[dict[str, Any]]:
    """Rows ``{name, median_s, runs, ratio}`` with ``ratio = median / median(reference)``."""
    ref = statistics.median(times[reference])
    return [{"name": name, "median_s": statistics.median(ts), "runs": len(ts),
             "ratio": statistics.median(ts) / ref} for name, ts in times.items()]


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as a markdown table; ``columns`` is ``[(key, header, format spec)]``."""
    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(format(row[k], f) for k, _, f in columns) + " |", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, load average, library versions, GPU (if any), git commit."""
    import pennylane as qml

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pennylane": qml.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def save_json(path: str | os.PathLike, name: str, rows: Any, settings: Mapping[str, Any],
              command: str | None = None) -> Path:
    """Write ``{"benchmark", "command", "settings", "machine", "finished", "rows"}`` to ``path``; return it.

    ``rows`` is what the benchmark returns (its tables, as lists of dicts, and any further results).

    ``command`` defaults to this process's command line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": command or _command(),
        "settings": dict(settings),
        "machine": machine_info(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def _command() -> str:
    """The command line of this process, as typed (``python -m bench ...`` when run through the registry)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("bench/__main__.py", os.sep + "__main__.py")):
        argv[0] = "python -m bench"
    elif argv and argv[0].endswith(".py"):
        argv[0] = "python -m bench." + Path(argv[0]).stem
    return " ".join(argv)


def load_json(name: str, root: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The committed record ``results/bench/<name>.json`` (None when absent)."""
    path = Path(root or RESULTS_DIR) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------------------------------------------
# What a study costs, projected from the committed benchmarks (the performance chapter)
# --------------------------------------------------------------------------------------------------------------

def step_seconds(training_rows: list[Mapping[str, Any]]) -> dict[Any, float]:
    """Median seconds of one training step per arm, from the rows of ``python -m bench training``:
    ``{"none": s, "se": s, n: s for each quantum width n}`` (rows ``none``, ``se (8)``, ``quantum rzry (nq)``)."""
    out: dict[Any, float] = {}
    for row in training_rows:
        name = row["name"]
        if name == "none":
            out["none"] = float(row["median_s"])
        elif name.startswith("se"):
            out["se"] = float(row["median_s"])
        elif name.startswith("quantum"):
            out[int(name.rsplit("(", 1)[1].rstrip("q)"))] = float(row["median_s"])
    return out


def sampling_steps(options: Any) -> int:
    """Denoising steps per image of a run's sampler: DDPM runs all ``timesteps``; DDIM ``sample_steps`` (default 50,
    or ``timesteps`` if smaller), as :class:`qdiff_lib.experiment.RunOptions` documents."""
    if options.sampler == "ddpm":
        return int(options.timesteps)
    return int(options.sample_steps or min(50, options.timesteps))


def run_cost_s(options: Any, step_s: Mapping[Any, float], sample_s_per_image_step: float,
               n_qubits: int | None = None) -> float:
    """Projected single-thread seconds of one run (training and sampling; the metrics are left out).

    Training: ``options.steps`` times the measured step of its arm (:func:`step_seconds`): ``none``; every classical
    gate (``se``, ``se_frozen``, ``fourier``, ...) priced as ``se``; a quantum arm (any ansatz) as the measured rzry
    step at ``n_qubits`` (default: the run's own width). Sampling: ``n_samples`` images of :func:`sampling_steps`
    steps each, at ``sample_s_per_image_step`` (the se arm's measured DDIM step per image) scaled by the arm's step
    time relative to ``se``.
    """
    if options.steps is None:
        raise ValueError("run_cost_s needs a run with a number of optimiser steps (options.steps is None)")
    if options.bottleneck == "quantum":
        width = n_qubits or options.n_qubits
        if width not in step_s:
            raise KeyError(f"no measured training step of the quantum arm at {width} qubits; measured: "
                           f"{sorted(k for k in step_s if isinstance(k, int))}")
        arm = step_s[width]
    else:
        arm = step_s["none" if options.bottleneck == "none" else "se"]
    sample = options.n_samples * sampling_steps(options) * sample_s_per_image_step * arm / step_s["se"]
    return options.steps * arm + sample


def study_cost(runs: list[Any], step_s: Mapping[Any, float], sample_s_per_image_step: float,
               n_qubits: int | None = None) -> dict[str, float]:
    """``{"runs", "quantum_runs", "train_steps", "cpu_hours"}`` of a study's runs (:func:`run_cost_s` summed),
    the quantum runs priced at ``n_qubits`` (default: each run's own width)."""
    seconds = sum(run_cost_s(o, step_s, sample_s_per_image_step, n_qubits) for o in runs)
    return {"runs": len(runs), "quantum_runs": sum(o.bottleneck == "quantum" for o in runs),
            "train_steps": sum(o.steps for o in runs), "cpu_hours": seconds / 3600}
