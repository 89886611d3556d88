"""Run every benchmark: ``python -m bench`` (``make bench``), or some of them, with options passed on:
``python -m bench quantum --qubits 8``, ``python -m bench --threads 1``.

Each entry of ``BENCHMARKS`` names a module of this package with ``build_parser()`` (its options: the shared
``--threads`` and ``--json`` of :func:`bench.common.benchmark_parser`, plus its own) and ``main(argv) -> int``; to add
one, write ``bench/bench_<name>.py`` and list it here. The options are checked by every named benchmark before the
first one runs, so a typo or an option that one of them does not take stops the command at once.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, str] = {
    "quantum": "bench.bench_quantum",  # the quantum layer against PennyLane (16 qubits, 3 layers, batch 64)
    "noise": "bench.bench_noise",  # noise sources against torch.randn
    "training": "bench.bench_training",  # a training step of each arm (none, se, quantum 8 and 16 qubits)
    "sampling": "bench.bench_sampling",  # DDPM 1000 steps against DDIM 50: speed and metrics
    "memory": "bench.bench_memory",  # peak memory of the quantum layer against n_qubits, the memory guard
    "metrics": "bench.bench_metrics",  # cost of one evaluation and its parts (no alternative timed: a budget)
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split] or list(BENCHMARKS), argv[split:]  # names first, then options for them
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; allowed: {list(BENCHMARKS)}")
    modules = {name: importlib.import_module(BENCHMARKS[name]) for name in names}
    parsed = {name: module.build_parser().parse_args(options) for name, module in modules.items()}  # exits on a typo
    if len(names) > 1 and any(args.json for args in parsed.values()):
        raise SystemExit(f"--json names one file: give it to one benchmark at a time, not to {names}")
    status = 0
    for name, module in modules.items():
        print(f"== bench {name}", flush=True)
        status |= module.main(options)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
