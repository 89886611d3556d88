"""The quantum layer's forward + backward against the PennyLane alternatives, timed side by side.

Default case (the paper's bottleneck): 16 qubits, 3 layers, batch 64, loss ``sum(out * r)``, backward to
the weights and the inputs. Contenders:

- ``ours``: ``QuantumLayer(backend="torch")`` (float32; ``--dtype float64`` for the other);
- ``default.qubit broadcast``: the same circuit as one broadcast QNode, backprop (``backend="pennylane"``);
- ``lightning.qubit adjoint``: the broadcast QNode on lightning.qubit with the adjoint method;
- ``official per-sample loop``: ``qml.qnn.TorchLayer`` called one sample at a time, as the paper's code.

Rounds alternate the contenders (ours ``--repeats`` times per round, the slow ones once per round for
``--slow-repeats`` rounds); the table gives medians and the ratio to ours.
Usage: ``python -m bench quantum --qubits 8,16 --repeats 5 --slow-repeats 1 --ansatz rzry``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import pennylane as qml
import torch

from bench.common import save_json
from qdiff_lib.quantum import ANSATZE, QuantumLayer, make_qnode, weight_shape


def _step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, r: torch.Tensor,
          weights: torch.Tensor) -> float:
    """Time one forward + backward; zero the gradients first."""
    weights.grad = None
    xi = x.clone().requires_grad_(True)
    start = time.perf_counter()
    out = forward(xi)
    (out * r).sum().backward()
    elapsed = time.perf_counter() - start
    assert weights.grad is not None and xi.grad is not None
    return elapsed


def contenders(ansatz: str, n_qubits: int, n_layers: int, dtype: torch.dtype, skip: set[str]):
    """``{name: (forward, weights)}`` for every contender not in ``skip``, all with the same initial weights."""
    ours = QuantumLayer(n_qubits, n_layers, ansatz=ansatz, dtype=dtype, generator=0)
    init = ours.weights.detach().double()
    out: dict[str, tuple[Callable, torch.Tensor]] = {"ours": (ours, ours.weights)}
    if "default" not in skip:
        pl = QuantumLayer(n_qubits, n_layers, ansatz=ansatz, backend="pennylane", dtype=torch.float64, generator=0)
        out["default.qubit broadcast"] = (lambda x, m=pl: m(x.double()), pl.weights)
    if "lightning" not in skip:
        w_l = init.clone().requires_grad_(True)
        qn = make_qnode(ansatz, n_qubits, device="lightning.qubit", diff_method="adjoint")
        out["lightning.qubit adjoint"] = (lambda x, q=qn, w=w_l: torch.stack(q(x.double(), w), -1), w_l)
    if "loop" not in skip:
        qn = make_qnode(ansatz, n_qubits)
        torch_layer = qml.qnn.TorchLayer(qn, {"weights": weight_shape(ansatz, n_layers, n_qubits)})
        with torch.no_grad():
            torch_layer.weights.copy_(init.float())

        def per_sample(x: torch.Tensor, layer=torch_layer) -> torch.Tensor:
            return torch.stack([layer(xi).reshape(-1) for xi in x.float()])

        out["official per-sample loop"] = (per_sample, torch_layer.weights)
    return out


def run(ansatz: str, n_qubits: int, n_layers: int, batch: int, repeats: int, slow_repeats: int,
        dtype: torch.dtype, skip: set[str]) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, n_qubits, generator=g) * torch.pi
    r = torch.randn(batch, n_qubits, generator=g)
    fns = contenders(ansatz, n_qubits, n_layers, dtype, skip)
    times: dict[str, list[float]] = {name: [] for name in fns}
    ours, w_ours = fns["ours"]
    _step(ours, x, r.to(dtype), w_ours)  # warm-up (plan caches, allocator)
    for _ in range(max(slow_repeats, 1)):
        for name, (fn, weights) in fns.items():
            n = repeats if name == "ours" else 1
            rr = r.to(dtype) if name == "ours" else r.double() if "default" in name or "lightning" in name else r
            times[name] += [_step(fn, x, rr, weights) for _ in range(n)]
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench quantum", description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", default="16", help="comma-separated qubit counts (default 16)")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ansatz", default="rzry", choices=ANSATZE)
    parser.add_argument("--repeats", type=int, default=5, help="timings of ours per round")
    parser.add_argument("--slow-repeats", type=int, default=1, help="rounds (one timing of each alternative each)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--skip", default="", help="comma-separated among default,lightning,loop")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is steadier on a shared machine)")
    parser.add_argument("--json", default=None, help="also write the table (and every timing) to this JSON file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    skip = {s for s in args.skip.split(",") if s}
    print(f"# quantum layer, fwd+bwd, ansatz={args.ansatz}, layers={args.layers}, batch={args.batch}, "
          f"ours in {args.dtype}; torch {torch.__version__}, pennylane {qml.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| qubits | contender | median s | runs | ratio to ours |")
    print("|---|---|---|---|---|")
    rows = []
    for n_qubits in (int(q) for q in args.qubits.split(",")):
        times = run(args.ansatz, n_qubits, args.layers, args.batch, args.repeats, args.slow_repeats, dtype, skip)
        ours = statistics.median(times["ours"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {n_qubits} | {name} | {med:.4f} | {len(ts)} | {med / ours:.1f}x |", flush=True)
            rows.append({"qubits": n_qubits, "implementation": name, "median_s": med, "runs": len(ts),
                         "ratio_to_ours": med / ours, "times_s": ts})
    if args.json:
        settings = {k: getattr(args, k) for k in ("qubits", "layers", "batch", "ansatz", "repeats", "slow_repeats",
                                                  "dtype", "skip")}
        settings["threads"] = torch.get_num_threads()
        save_json(args.json, "quantum", rows, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
