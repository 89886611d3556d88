"""Benchmark of the noise sources: values per second of every QuantumNoise circuit/mapping and of the hybrid
mixture, against torch.randn timed in the same run (ratios), plus the one-off cost of the Born distribution.

Usage: ``python -m bench noise --qubits 12 --batch 1024 --repeats 5 --threads 1 --json results/bench/noise.json``.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from bench.common import benchmark_parser, parse_options, save_json
from qdiff_lib.noise import CIRCUITS, MAPPINGS, GaussianNoise, HybridNoise, QuantumNoise


def _values_per_second(source, shape: tuple[int, ...], repeats: int, t: torch.Tensor | None = None) -> float:
    generator = torch.Generator().manual_seed(0)
    source.sample(shape, generator=generator, t=t)  # warm-up (device tables, allocator)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        source.sample(shape, generator=generator, t=t)
        best = min(best, time.perf_counter() - start)
    return torch.Size(shape).numel() / best


def run(n_qubits: int = 12, batch: int = 1024, repeats: int = 5) -> list[dict]:
    """Print and return values/s for a ``(batch, 1, 28, 28)`` draw of each source (best of ``repeats``)."""
    shape = (batch, 1, 28, 28)
    t = torch.zeros(batch, dtype=torch.long)
    reference = _values_per_second(GaussianNoise(), shape, repeats)
    rows = [{"source": "torch.randn", "setup_s": 0.0, "values_per_s": reference}]
    for circuit, mapping in itertools.product(CIRCUITS, MAPPINGS):
        start = time.perf_counter()
        source = QuantumNoise(circuit, n_qubits=n_qubits, mapping=mapping)
        setup = time.perf_counter() - start
        rows.append({"source": f"quantum {circuit}/{mapping}", "setup_s": setup,
                     "values_per_s": _values_per_second(source, shape, repeats)})
    hybrid = HybridNoise(QuantumNoise(n_qubits=n_qubits), timesteps=1000)
    rows.append({"source": "hybrid (hadamard/gaussianize)", "setup_s": 0.0,
                 "values_per_s": _values_per_second(hybrid, shape, repeats, t=t)})
    print(f"noise sources, shape {shape}, n_qubits={n_qubits}, torch threads={torch.get_num_threads()}")
    print(f"{'source':34s} {'setup s':>8s} {'values/s':>10s} {'vs randn':>9s}")
    for row in rows:
        row["ratio_to_randn"] = row["values_per_s"] / reference
        print(f"{row['source']:34s} {row['setup_s']:8.3f} {row['values_per_s']:10.3g} {row['ratio_to_randn']:9.3f}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("noise", __doc__)
    parser.add_argument("--qubits", type=int, default=12, help="register of the quantum sources (default 12)")
    parser.add_argument("--batch", type=int, default=1024, help="images per draw of shape (batch, 1, 28, 28)")
    parser.add_argument("--repeats", type=int, default=5, help="timed draws of each source (best kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    rows = run(args.qubits, args.batch, args.repeats)
    if args.json:
        save_json(args.json, "noise", rows, {"n_qubits": args.qubits, "batch": args.batch, "repeats": args.repeats,
                                             "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
