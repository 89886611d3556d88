"""The quantum layer's forward + backward: our two simulators against the PennyLane alternatives, side by side.

Default case (the paper's bottleneck): 16 qubits, 3 layers, batch 64, loss ``sum(out * r)``, backward to
the weights and the inputs. Contenders:

- ``ours``: ``QuantumLayer(backend="torch")``, the statevector simulator (float32; ``--dtype float64`` for the
  other), the reference of the ratios;
- ``mps``: ``QuantumLayer(backend="mps")``, the exact matrix-product-state simulator (same dtype);
- ``default.qubit broadcast``: the same circuit as one broadcast QNode, backprop (``backend="pennylane"``);
- ``lightning.qubit adjoint``: the broadcast QNode on lightning.qubit with the adjoint method;
- ``official per-sample loop``: ``qml.qnn.TorchLayer`` called one sample at a time, as the paper's code;
- ``default.tensor per row``: PennyLane's tensor-network device (quimb's MPS), which differentiates only by
  parameter shift and not with respect to broadcast inputs: one QNode call per row, timed on ``--tensor-rows``
  rows and scaled to the batch (rows are independent calls).

Rounds alternate the contenders (ours and mps ``--repeats`` times per round, the slow ones once per round for
``--slow-repeats`` rounds); the table gives medians and the ratios to ours and to mps, then the goals at 16 qubits
(mps >= 10x faster than ours and >= 100x faster than the fastest PennyLane device).

Second table, the MPS scaling: mps at ``--mps-qubits`` (default 8 to 128), alternating with ours up to
``--sv-max`` qubits, with the time per qubit (linear growth: constant from 16 to 128 qubits). The crossover that
``backend="auto"`` uses (:func:`qdiff_lib.quantum.select_backend`) is measured with
``--mps-qubits 8,9,10,11,12,13,14 --sv-max 14 --ansatz paper`` (and ``rzry``).
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

from bench.common import alternate, benchmark_parser, parse_options, save_json
from qdiff_lib.circuits import _apply_circuit
from qdiff_lib.quantum import ANSATZE, QuantumLayer, make_qnode, weight_shape

#: Contenders that only ``include`` adds (``main`` and the memory benchmark add them; ``run`` callers choose).
OPTIONAL = ("mps", "tensor")
_PENNYLANE = ("default.qubit broadcast", "lightning.qubit adjoint", "official per-sample loop",
              "default.tensor per row")


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


def _tensor_contender(ansatz: str, n_qubits: int, init: torch.Tensor):
    dev = qml.device("default.tensor", wires=n_qubits, method="mps")

    def expectations(inputs, weights):
        _apply_circuit(ansatz, inputs, weights)
        return [qml.expval(qml.PauliZ(i)) for i in range(n_qubits)]

    qnode = qml.QNode(expectations, dev, interface="torch", diff_method="parameter-shift")
    w = init.clone().requires_grad_(True)

    def per_row(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack(qnode(row, w)) for row in x.double()])

    return per_row, w


def contenders(ansatz: str, n_qubits: int, n_layers: int, dtype: torch.dtype, skip: set[str],
               include: set[str] = frozenset()):
    """``{name: (forward, weights)}`` for every contender not in ``skip`` (the optional ones, ``OPTIONAL``, only
    if in ``include``), all with the same initial weights."""
    ours = QuantumLayer(n_qubits, n_layers, ansatz=ansatz, backend="torch", dtype=dtype, generator=0)
    init = ours.weights.detach().double()
    out: dict[str, tuple[Callable, torch.Tensor]] = {"ours": (ours, ours.weights)}
    if "mps" in include and "mps" not in skip:
        mps = QuantumLayer(n_qubits, n_layers, ansatz=ansatz, backend="mps", dtype=dtype, generator=0)
        out["mps"] = (mps, mps.weights)
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
    if "tensor" in include and "tensor" not in skip:
        out["default.tensor per row"] = _tensor_contender(ansatz, n_qubits, init)
    return out


def run(ansatz: str, n_qubits: int, n_layers: int, batch: int, repeats: int, slow_repeats: int,
        dtype: torch.dtype, skip: set[str], include: set[str] = frozenset(),
        tensor_rows: int = 1) -> dict[str, list[float]]:
    """``{contender: [seconds of one forward + backward of the batch, ...]}``, alternating (see the module doc)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, n_qubits, generator=g) * torch.pi
    r = torch.randn(batch, n_qubits, generator=g)
    fns = contenders(ansatz, n_qubits, n_layers, dtype, skip, include)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name in ("ours", "mps"):  # warm-up (plan caches, allocator)
        if name in fns:
            _step(fns[name][0], x, r.to(dtype), fns[name][1])
    rows = min(tensor_rows, batch)
    for _ in range(max(slow_repeats, 1)):
        for name, (fn, weights) in fns.items():
            if name in ("ours", "mps"):
                times[name] += [_step(fn, x, r.to(dtype), weights) for _ in range(repeats)]
            elif name == "default.tensor per row":
                times[name].append(_step(fn, x[:rows], r[:rows].double(), weights) * batch / rows)
            else:
                rr = r.double() if "default" in name or "lightning" in name else r
                times[name].append(_step(fn, x, rr, weights))
    return times


def scaling(ansatz: str, qubits: list[int], n_layers: int, batch: int, repeats: int, dtype: torch.dtype,
            sv_max: int) -> list[dict]:
    """mps (and ours up to ``sv_max`` qubits) at each width, alternating: rows with medians and ratios."""
    rows = []
    for n in qubits:
        g = torch.Generator().manual_seed(n)
        x, r = torch.rand(batch, n, generator=g) * torch.pi, torch.randn(batch, n, generator=g).to(dtype)
        layers = {"mps": QuantumLayer(n, n_layers, ansatz=ansatz, backend="mps", dtype=dtype, generator=0)}
        if n <= sv_max:
            layers["ours"] = QuantumLayer(n, n_layers, ansatz=ansatz, backend="torch", dtype=dtype, generator=0)
        fns = {name: (lambda m=m, x=x, r=r: _step(m, x, r, m.weights)) for name, m in layers.items()}
        times = alternate(fns, rounds=repeats)
        mps = statistics.median(times["mps"])
        ours = statistics.median(times["ours"]) if "ours" in times else None
        rows.append({"table": "scaling", "qubits": n, "mps_s": mps, "mps_ms_per_qubit": 1e3 * mps / n,
                     "ours_s": ours, "ours_over_mps": ours / mps if ours else None, "runs": repeats,
                     "auto": QuantumLayer(n, n_layers, ansatz=ansatz).resolved_backend, "times_s": times})
    return rows


def _goals(times: dict[str, list[float]], n_qubits: int) -> str:
    """The goals of the MPS backend, at 16 qubits: >= 10x faster than ours, >= 100x than any PennyLane device."""
    med = {name: statistics.median(ts) for name, ts in times.items()}
    if "mps" not in med or n_qubits != 16:
        return ""
    parts = [f"at {n_qubits} qubits mps is {med['ours'] / med['mps']:.0f}x faster than ours (goal >= 10x: "
             f"{'met' if med['ours'] >= 10 * med['mps'] else 'not met'})"]
    pennylane = {name: med[name] for name in _PENNYLANE if name in med}
    if pennylane:
        fastest = min(pennylane, key=pennylane.get)
        ratio = pennylane[fastest] / med["mps"]
        parts.append(f"{ratio:.0f}x faster than the fastest PennyLane contender, {fastest} (goal >= 100x: "
                     f"{'met' if ratio >= 100 else 'not met'})")
    return "; ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("quantum", __doc__)
    parser.add_argument("--qubits", default="16",
                        help="comma-separated qubit counts of the comparison (default 16; '' to skip it)")
    parser.add_argument("--mps-qubits", default="8,16,32,64,128",
                        help="comma-separated widths of the MPS scaling table ('' to skip it)")
    parser.add_argument("--sv-max", type=int, default=16, help="widest statevector in the scaling table")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--ansatz", default="rzry", choices=ANSATZE)
    parser.add_argument("--repeats", type=int, default=5, help="timings of ours and mps per round")
    parser.add_argument("--slow-repeats", type=int, default=1, help="rounds (one timing of each alternative each)")
    parser.add_argument("--tensor-rows", type=int, default=1, help="rows timed for default.tensor (scaled to --batch)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--skip", default="", help="comma-separated among mps,default,lightning,loop,tensor")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    dtype = getattr(torch, args.dtype)
    skip = {s for s in args.skip.split(",") if s}
    print(f"# quantum layer, fwd+bwd, ansatz={args.ansatz}, layers={args.layers}, batch={args.batch}, "
          f"ours and mps in {args.dtype}; torch {torch.__version__}, pennylane {qml.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows, goals = [], []
    comparison = [int(q) for q in args.qubits.split(",") if q]
    if comparison:
        print("| qubits | contender | median s | runs | ratio to ours | ratio to mps |")
        print("|---|---|---|---|---|---|")
    for n_qubits in comparison:
        times = run(args.ansatz, n_qubits, args.layers, args.batch, args.repeats, args.slow_repeats, dtype, skip,
                    set(OPTIONAL), args.tensor_rows)
        ours = statistics.median(times["ours"])
        mps = statistics.median(times["mps"]) if "mps" in times else float("nan")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {n_qubits} | {name} | {med:.4f} | {len(ts)} | {med / ours:.1f}x | {med / mps:.1f}x |",
                  flush=True)
            rows.append({"table": "comparison", "qubits": n_qubits, "implementation": name, "median_s": med,
                         "runs": len(ts), "ratio_to_ours": med / ours, "ratio_to_mps": med / mps, "times_s": ts})
        goals.append(_goals(times, n_qubits))
    for line in filter(None, goals):
        print(line)
    widths = [int(q) for q in args.mps_qubits.split(",") if q]
    if widths and "mps" not in skip:
        print(f"# MPS scaling, alternating with ours up to {args.sv_max} qubits; time per qubit constant = linear")
        print("| qubits | mps s | mps ms/qubit | ours s | ours/mps | auto picks |")
        print("|---|---|---|---|---|---|")
        for row in scaling(args.ansatz, widths, args.layers, args.batch, args.repeats, dtype, args.sv_max):
            ours = f"{row['ours_s']:.4f} | {row['ours_over_mps']:.1f}x" if row["ours_s"] else "- | -"
            print(f"| {row['qubits']} | {row['mps_s']:.4f} | {row['mps_ms_per_qubit']:.3f} | {ours} | "
                  f"{row['auto']} |", flush=True)
            rows.append(row)
    if args.json:
        settings = {k: getattr(args, k) for k in ("qubits", "mps_qubits", "sv_max", "layers", "batch", "ansatz",
                                                  "repeats", "slow_repeats", "tensor_rows", "dtype", "skip")}
        settings["threads"] = torch.get_num_threads()
        save_json(args.json, "quantum", rows, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
