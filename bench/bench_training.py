"""One training step of each arm (the U-Net of the paper, batch 64), timed alternately; and where the time goes.

A step is what :func:`qdiff_lib.train.train` does per batch: ``q_sample``, forward, MSE loss, backward, Adam update.
Arms: ``none`` (no bottleneck), ``se`` (squeeze-and-excitation gate of width 8), ``quantum`` with the ``rzry``
circuit (3 layers) at 8 and 16 qubits (float32, the layer's default backend ``"auto"``: the statevector at 8 qubits,
MPS at 16). Goals (stated in the performance chapter): the quantum arm within 1.3x of ``se`` at 8 qubits and within
1.1x at 16.

``--profile``: the share of a quantum step spent in the circuit layer (its forward + backward alone, timed in the
same alternation) and torch.profiler's top operators of one quantum step.
Usage: ``python -m bench training --rounds 20 --qubits 8,16 --profile --json results/bench/training.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from bench.common import alternate, benchmark_parser, parse_options, print_table, save_json, summarize
from qdiff_lib.diffusion import Diffusion
from qdiff_lib.quantum import QuantumLayer
from qdiff_lib.unet import UNet


def make_step(bottleneck: str, n_qubits: int, batch: int = 64, seed: int = 0) -> Callable[[], float]:
    """A closure running one optimiser step of ``UNet(bottleneck, n_qubits)`` on a fixed ``(batch, 1, 28, 28)``."""
    model = UNet(1, bottleneck=bottleneck, n_qubits=n_qubits, seed=seed).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    diffusion = Diffusion.from_schedule("cosine", 1000)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def step() -> float:
        x_t = diffusion.add_noise(x0, noise, t)
        loss = F.mse_loss(model(x_t, t), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def make_layer_step(n_qubits: int, batch: int = 64, seed: int = 0) -> Callable[[], None]:
    """Forward + backward of the circuit layer alone, ``(batch, n_qubits)`` angles (the bottleneck's share)."""
    layer = QuantumLayer(n_qubits, 3, ansatz="rzry", generator=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n_qubits, generator=g) * torch.pi
    r = torch.randn(batch, n_qubits, generator=g)

    def step() -> None:
        layer.weights.grad = None
        xi = x.clone().requires_grad_(True)
        (layer(xi) * r).sum().backward()

    return step


@contextlib.contextmanager
def _quiet_stderr_fd() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null meanwhile: torch.profiler's C++ side (kineto) logs ``profiler_start``
    and ``profiler_stop`` lines there, whatever its log level, which would land in a chapter's stored outputs."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def top_operators(step: Callable[[], object], steps: int = 3, top: int = 10) -> list[dict]:
    """torch.profiler's ``top`` operators of ``steps`` calls of ``step`` by self CPU time, as shares of the total
    (the profiler's own log lines on stderr suppressed)."""
    with _quiet_stderr_fd(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls": e.count // steps}
            for e in events[:top]]


def arms(qubits: list[int], batch: int) -> dict[str, Callable[[], float]]:
    """``{label: step}`` for none, se (width 8) and quantum at each of ``qubits``."""
    out = {"none": make_step("none", 8, batch), "se (8)": make_step("se", 8, batch)}
    for n in qubits:
        out[f"quantum rzry ({n}q)"] = make_step("quantum", n, batch)
    return out


def run(qubits: list[int], batch: int = 64, rounds: int = 10, profile: bool = False) -> dict:
    """Time each arm's step alternately (``rounds``); rows with medians and ratios to ``se``.

    With ``profile``: also the circuit layer alone at each width (``"layer only (nq)"`` rows), the share of the
    quantum step it takes, and torch.profiler's top operators (self CPU time) of one step of the first width.
    """
    fns: dict[str, Callable] = dict(arms(qubits, batch))
    if profile:
        fns.update({f"layer only ({n}q)": make_layer_step(n, batch) for n in qubits})
    times = alternate(fns, rounds)
    rows = summarize(times, reference="se (8)")
    result: dict = {"rows": rows}
    if profile:
        med = {r["name"]: r["median_s"] for r in rows}
        result["layer_share"] = {f"{n}q": med[f"layer only ({n}q)"] / med[f"quantum rzry ({n}q)"] for n in qubits}
        result["top_ops"] = {f"{n}q": top_operators(fns[f"quantum rzry ({n}q)"]) for n in qubits}
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("training", __doc__)
    parser.add_argument("--qubits", default="8,16", help="comma-separated widths of the quantum arm")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (one step of each arm each)")
    parser.add_argument("--profile", action="store_true", help="the circuit layer's share and top operators")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    qubits = [int(q) for q in args.qubits.split(",")]
    result = run(qubits, args.batch, args.rounds, args.profile)
    print(f"# training step (q_sample, forward, MSE, backward, Adam), batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads; ratio to se (goals: quantum 8q <= 1.3x, 16q <= 1.1x)")
    print_table(result["rows"], [("name", "arm", "s"), ("median_s", "median s", ".4f"), ("runs", "runs", "d"),
                                 ("ratio", "ratio to se", ".2f")])
    if args.profile:
        for key, share in result["layer_share"].items():
            print(f"circuit layer fwd+bwd alone / quantum step ({key}): {share:.2f}")
        for key, ops in result["top_ops"].items():
            print(f"# top operators of a quantum step ({key}), share of self CPU time")
            print_table(ops, [("op", "operator", "s"), ("self_cpu_share", "share", ".3f"),
                              ("calls", "calls/step", "d")])
    if args.json:
        save_json(args.json, "training", result, vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
