"""Cost of the quantum layer against ``n_qubits``: peak memory of each implementation, the memory guard, and time.

Memory: each (implementation, n) runs in a fresh subprocess: a warm-up forward + backward at 2 qubits (lazy
imports, caches), then the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) is read around
one forward + backward of batch ``--batch``; the growth over the resident set before the step is reported beside
the analytic size of one complex statevector of the batch, :func:`qdiff_lib.quantum.state_bytes`, and the
estimated peak of each simulator of the library (:func:`qdiff_lib.quantum.peak_bytes` for the statevector,
:func:`qdiff_lib.quantum.mps_peak_bytes` for MPS: what their memory guards check). ``mps`` (the exact
matrix-product-state backend) is measured at ``--qubits`` and at the wider ``--mps-qubits`` (default 32 to 128).
The memory guard: the torch simulator raises ``MemoryError`` before allocating a state above
``memory_limit_bytes`` (default :data:`qdiff_lib.quantum.DEFAULT_MEMORY_LIMIT_BYTES`); the largest width
allowed at this batch is reported and the refusal one qubit above it is checked.
Time (``--time``): forward + backward of every implementation, alternated (:func:`bench.bench_quantum.run`), for
each width, the slow alternatives only up to ``--alt-max`` qubits.
Usage: ``python -m bench memory --qubits 4,6,8,10,12,14,16,18 --mps-qubits 24,32,48,64,96,128 --alt-max 16 --json
results/bench/memory.json`` (at batch 64 the statevector's guard refuses 20 qubits: the widest of ``--qubits`` must
pass it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench.bench_quantum import _step, contenders
from bench.bench_quantum import run as time_layer
from bench.common import REPO_ROOT, benchmark_parser, parse_options, print_table, save_json
from qdiff_lib.quantum import DEFAULT_MEMORY_LIMIT_BYTES, QuantumLayer, mps_peak_bytes, peak_bytes, state_bytes

#: Implementations, as named by :func:`bench.bench_quantum.contenders`, and the ``skip`` keys of the others.
IMPLEMENTATIONS: dict[str, str] = {
    "ours": "",
    "mps": "mps",
    "default.qubit broadcast": "default",
    "lightning.qubit adjoint": "lightning",
    "official per-sample loop": "loop",
}
_SKIP_KEYS = ("default", "lightning", "loop")
#: Implementations whose memory is measured at every width of ``--qubits`` (the alternatives: up to ``--alt-max``).
_LIBRARY = ("ours", "mps")


def estimated_peak_bytes(implementation: str, n_qubits: int, batch: int, layers: int) -> int | None:
    """The library's own estimate of the peak of one forward + backward (rzry, float32), what its memory guard
    checks: :func:`peak_bytes` for ``ours``, :func:`mps_peak_bytes` for ``mps``; None for the alternatives."""
    if implementation == "ours":
        return peak_bytes(batch, n_qubits, layers)
    if implementation == "mps":
        return mps_peak_bytes(batch, n_qubits, layers)
    return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(implementation: str, n_qubits: int, batch: int, layers: int) -> dict:
    """In this (fresh) process: peak resident-set growth of one forward + backward, in bytes."""
    key = IMPLEMENTATIONS[implementation]
    skip = {k for k in (*_SKIP_KEYS, "mps") if k != key}

    def one_step(n: int) -> None:
        fn, weights = contenders("rzry", n, layers, torch.float32, skip, include={"mps"})[implementation]
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, n, generator=g) * torch.pi
        r = torch.randn(batch, n, generator=g)
        _step(fn, x, r if implementation in ("ours", "mps", "official per-sample loop") else r.double(), weights)

    one_step(2)  # lazy imports and caches out of the measurement
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    one_step(n_qubits)
    return {"implementation": implementation, "qubits": n_qubits, "batch": batch,
            "rss_growth_bytes": (_status_kib("VmHWM") - before) * 1024,
            "state_bytes": state_bytes(batch, n_qubits, torch.float32),
            "estimated_peak_bytes": estimated_peak_bytes(implementation, n_qubits, batch, layers)}


def measure_memory(implementation: str, n_qubits: int, batch: int = 64, layers: int = 3) -> dict:
    """Run :func:`_child` in a subprocess (a fresh heap and peak) and return its row."""
    cmd = [sys.executable, "-m", "bench.bench_memory", "--child", implementation, "--qubits", str(n_qubits),
           "--batch", str(batch), "--layers", str(layers)]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_guard(batch: int = 64, limit: int = DEFAULT_MEMORY_LIMIT_BYTES, layers: int = 3) -> dict:
    """The largest width whose forward + backward the torch simulator accepts at ``batch`` (float32, rzry) under
    ``limit`` (the guard estimates the peak with ``peak_bytes``), and the refusal one qubit above it."""
    largest = max(n for n in range(1, 40) if peak_bytes(batch, n, layers) <= limit)
    layer = QuantumLayer(largest + 1, layers, backend="torch", memory_limit_bytes=limit)  # the statevector guard
    try:
        layer(torch.zeros(batch, largest + 1))
        message = None
    except MemoryError as err:
        message = str(err)
    if message is None:
        raise AssertionError(f"the guard let a {largest + 1}-qubit batch of {batch} through under {limit} bytes")
    return {"limit_bytes": limit, "batch": batch, "layers": layers, "largest_qubits": largest,
            "peak_bytes_at_largest": peak_bytes(batch, largest, layers),
            "state_bytes_at_largest": state_bytes(batch, largest, torch.float32), "refusal": message}


def planned(qubits: list[int], alt_max: int, mps_qubits: list[int] = ()) -> list[tuple[str, int]]:
    """``(implementation, width)`` pairs measured: ours and mps at ``qubits``, the alternatives there up to
    ``alt_max``, then mps alone at the ``mps_qubits`` not already in ``qubits``."""
    pairs = [(impl, n) for n in qubits for impl in IMPLEMENTATIONS if impl in _LIBRARY or n <= alt_max]
    return pairs + [("mps", n) for n in mps_qubits if n not in qubits]


def run(qubits: list[int], alt_max: int, batch: int = 64, layers: int = 3, with_time: bool = False,
        repeats: int = 3, slow_repeats: int = 1, mps_qubits: list[int] = ()) -> dict:
    """Memory rows for every implementation and width (:func:`planned`), the guard, and times."""
    memory = [measure_memory(impl, n, batch, layers) for impl, n in planned(qubits, alt_max, mps_qubits)]
    result: dict = {"memory": memory, "guard": memory_guard(batch)}
    if with_time:
        rows = []
        for n in qubits:
            skip = set() if n <= alt_max else set(_SKIP_KEYS)
            times = time_layer("rzry", n, layers, batch, repeats, slow_repeats, torch.float32, skip)
            ours = statistics.median(times["ours"])
            rows += [{"qubits": n, "implementation": name, "median_s": statistics.median(ts), "runs": len(ts),
                      "ratio_to_ours": statistics.median(ts) / ours} for name, ts in times.items()]
        result["time"] = rows
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("memory", __doc__)
    parser.add_argument("--qubits", default="4,8,12,16", help="comma-separated widths")
    parser.add_argument("--mps-qubits", default="32,64,128",
                        help="comma-separated further widths measured for mps alone ('' for none)")
    parser.add_argument("--alt-max", type=int, default=12, help="widest circuit for the PennyLane alternatives")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--time", action="store_true", help="also time forward + backward of every implementation")
    parser.add_argument("--repeats", type=int, default=3, help="timings of ours per round (--time)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="rounds of the alternatives (--time)")
    parser.add_argument("--child", default=None, choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    qubits = [int(q) for q in args.qubits.split(",")]
    if args.child:
        print(json.dumps(_child(args.child, qubits[0], args.batch, args.layers)))
        return 0
    mps_qubits = [int(q) for q in args.mps_qubits.split(",") if q]
    result = run(qubits, args.alt_max, args.batch, args.layers, args.time, args.repeats, args.slow_repeats,
                 mps_qubits)
    print(f"# quantum layer (rzry, {args.layers} layers, batch {args.batch}), peak resident-set growth of one "
          f"forward + backward; {torch.get_num_threads()} torch threads")
    for row in result["memory"]:
        row["rss_mib"], row["state_mib"] = row["rss_growth_bytes"] / 2**20, row["state_bytes"] / 2**20
        estimate = row["estimated_peak_bytes"]
        row["estimate_mib"] = estimate / 2**20 if estimate is not None else float("nan")
    print_table(result["memory"], [("qubits", "qubits", "d"), ("implementation", "implementation", "s"),
                                   ("rss_mib", "peak growth MiB", ".1f"), ("estimate_mib", "estimated peak MiB", ".1f"),
                                   ("state_mib", "one statevector MiB", ".3g")])
    guard = result["guard"]
    print(f"memory guard: limit {guard['limit_bytes'] / 2**30:.1f} GiB -> at most {guard['largest_qubits']} qubits "
          f"at batch {guard['batch']} (float32); above: MemoryError: {guard['refusal']}")
    if args.time:
        print("# forward + backward, medians (alternated), ratio to ours")
        print_table(result["time"], [("qubits", "qubits", "d"), ("implementation", "implementation", "s"),
                                     ("median_s", "median s", ".4f"), ("runs", "runs", "d"),
                                     ("ratio_to_ours", "ratio", ".1f")])
    if args.json:
        save_json(args.json, "memory", result, vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
