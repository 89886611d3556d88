"""Tests of qdiff_lib.quantum: the torch simulator against PennyLane (default.qubit, default.mixed, shots)
and against closed forms."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pennylane as qml
import pytest
import torch

from qdiff_lib.quantum import (
    ANSATZE,
    QuantumLayer,
    circuit,
    entangler_pairs,
    expectations_pennylane,
    expectations_torch,
    make_qnode,
    paper_closed_form,
    paper_parity_matrix,
    peak_bytes,
    state_bytes,
    statevector_torch,
    weight_shape,
)

F64 = torch.float64


def _random_case(ansatz: str, n_qubits: int, n_layers: int, batch: int, seed: int, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, n_qubits, generator=g, dtype=F64) * 2 - 1) * math.pi
    w = torch.rand(weight_shape(ansatz, n_layers, n_qubits), generator=g, dtype=F64) * 2 * math.pi
    r = torch.randn(batch, n_qubits, generator=g, dtype=F64)  # random cotangent for the backward pass
    return x.to(dtype), w.to(dtype), r.to(dtype)


def _value_and_grads(fn, x, w, r):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    out = fn(x, w)
    (out * r).sum().backward()
    return out.detach(), x.grad, w.grad


# ---------------------------------------------------------------------------------------------------- shapes, errors


def test_weight_shapes():
    assert weight_shape("paper", 3, 16) == (3, 16)
    assert weight_shape("rzry", 3, 16) == (3, 16, 2)
    assert weight_shape("rzry_separable", 3, 16) == (3, 16, 2)
    assert weight_shape("strong", 3, 16) == tuple(qml.StronglyEntanglingLayers.shape(3, 16)) == (3, 16, 3)


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"ansatz": "rzz"}, "rzz"), ({"backend": "qiskit"}, "qiskit"), ({"weight_init": "normal"}, "normal")],
)
def test_unknown_choice_raises_listing_allowed(kwargs, bad):
    with pytest.raises(ValueError, match=bad) as info:
        QuantumLayer(3, 1, **kwargs)
    assert "allowed" in str(info.value)


def test_shape_error_message():
    layer = QuantumLayer(4, 2)
    with pytest.raises(ValueError, match=r"expected \(B, n_qubits\) = \(B, 4\), got \(2, 3\)"):
        layer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"expected \(B, n_qubits\)"):
        expectations_torch("rzry", torch.zeros(4), torch.zeros(2, 4, 2))


def test_memory_limit_raises_before_allocating():
    layer = QuantumLayer(26, 1, ansatz="paper", backend="torch", memory_limit_bytes=2**30)
    need = peak_bytes(64, 26, 1, "paper", torch.float32)
    assert state_bytes(64, 26, torch.float32) == 64 * 2**26 * 8
    assert need == 5 * state_bytes(64, 26, torch.float32)  # final phase, |.|^2, probabilities, working set
    assert need / 2**30 == 160.0
    with pytest.raises(MemoryError, match=r"forward \+ backward of this batch needs about 160\.0 GiB .*\(1\.0 GiB\)"):
        layer(torch.zeros(64, 26, requires_grad=True))  # fails at once, without trying to allocate it
    noisy = QuantumLayer(10, 1, depolarizing=0.01, memory_limit_bytes=2**20)
    with pytest.raises(MemoryError, match="density matrix") as info:
        noisy(torch.zeros(2, 10))
    assert "memory_limit_bytes=N" in str(info.value)


def test_memory_guard_counts_backward_and_no_grad():
    # 14 qubits, batch 64: one statevector is 8 MiB; forward + backward of rzry, 3 layers, keeps ~14 of them.
    one = state_bytes(64, 14, torch.float32)
    assert peak_bytes(64, 14, 3, "rzry", grad=True) == 14 * one
    assert peak_bytes(64, 14, 3, "rzry", grad=False) == 3 * one
    limit = 8 * one
    layer = QuantumLayer(14, 3, backend="torch", memory_limit_bytes=limit)
    x = torch.zeros(64, 14)
    with pytest.raises(MemoryError, match=r"forward \+ backward .*\(14\.0 copies of the 8\.0 MiB statevector"):
        layer(x)  # the weights require grad
    with torch.no_grad():
        assert layer(x).shape == (64, 14)  # forward only: 3 copies fit under the same limit


_MEASURE_PEAK = """
import json, sys, torch
from qdiff_lib import quantum
torch.set_num_threads(1)
simulate = getattr(quantum, sys.argv[1])

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))

def step(ansatz, n, layers, batch, grad, options):
    g = torch.Generator().manual_seed(0)
    w = torch.rand(quantum.weight_shape(ansatz, layers, n), generator=g).requires_grad_(grad)
    x = torch.rand(batch, n, generator=g).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = simulate(ansatz, x, w, memory_limit_bytes=None, **options)
        if grad:
            out.sum().backward()

peaks = []
for ansatz, n, layers, batch, grad, options in json.loads(sys.argv[2]):
    step(ansatz, n, layers, 1, grad, options)  # warm-up: plan caches, lazy imports
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident-set high-water mark
    before = hwm()
    step(ansatz, n, layers, batch, grad, options)
    peaks.append(hwm() - before)
print(json.dumps(peaks))
"""


def measured_peaks(simulator: str, cases: list[tuple]) -> list[int]:
    """Growth of the peak resident set of a fresh process during one call of ``qdiff_lib.quantum.<simulator>``
    (forward, + backward if ``grad``) per case ``(ansatz, n_qubits, n_layers, batch, grad, options)``. glibc is
    told to serve large blocks with mmap (returned to the system when freed), so the resident set follows the
    live tensors instead of the heap's high-water mark."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _MEASURE_PEAK, simulator, json.dumps(cases)], env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_bytes_matches_measured_peak():
    """The estimate against the measured growth of the peak resident set (:func:`measured_peaks`)."""
    cases = [("rzry", 14, 3, 64, True, 0.0), ("rzry", 14, 3, 64, False, 0.0), ("paper", 13, 2, 64, True, 0.0),
             ("strong", 12, 3, 64, True, 0.0), ("rzry", 7, 2, 64, True, 0.01), ("rzry", 7, 2, 64, False, 0.01)]
    runs = [(*case[:5], {"depolarizing": case[5]}) for case in cases]
    peaks = measured_peaks("expectations_torch", runs)
    for (ansatz, n, layers, batch, grad, p), measured in zip(cases, peaks, strict=True):
        est = peak_bytes(batch, n, layers, ansatz, density=p > 0, grad=grad)
        assert 0.9 * measured <= est <= 1.5 * measured, (ansatz, n, layers, grad, p, est, measured)


# ---------------------------------------------------------------------------------- agreement with PennyLane


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n_qubits", range(1, 13))
def test_torch_matches_pennylane_values_and_gradients(ansatz, n_qubits):
    n_layers = 1 + n_qubits % 3
    x, w, r = _random_case(ansatz, n_qubits, n_layers, batch=3, seed=100 * n_qubits + ANSATZE.index(ansatz))
    group_size = 1 + n_qubits % 4  # exercise uneven groupings of the fused rotations
    ours = _value_and_grads(lambda a, b: expectations_torch(ansatz, a, b, group_size=group_size), x, w, r)
    ref = _value_and_grads(lambda a, b: expectations_pennylane(ansatz, a, b), x, w, r)
    for got, want in zip(ours, ref, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if ansatz != "paper":
        assert ours[2].abs().max() > 1e-3  # the weights do learn


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_float32_matches_float64(ansatz):
    x, w, r = _random_case(ansatz, 10, 3, batch=4, seed=7)
    exact = expectations_torch(ansatz, x, w)
    fast = expectations_torch(ansatz, x.float(), w.float())
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), exact, atol=1e-5, rtol=0)


def test_layer_backends_agree_and_gradients_reach_inputs():
    torch_layer = QuantumLayer(5, 2, ansatz="strong", backend="torch", dtype=F64, generator=3)
    pl_layer = QuantumLayer(5, 2, ansatz="strong", backend="pennylane", dtype=F64, generator=3)
    assert torch.equal(torch_layer.weights, pl_layer.weights)
    x, _, r = _random_case("strong", 5, 2, batch=4, seed=11)
    grads = []
    for layer in (torch_layer, pl_layer):
        xi = x.clone().requires_grad_(True)
        out = layer(xi)
        (out * r).sum().backward()
        assert xi.grad is not None and xi.grad.abs().max() > 1e-3
        grads.append((out.detach(), xi.grad, layer.weights.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_weight_init_is_seeded_uniform():
    a = QuantumLayer(8, 3, ansatz="rzry", generator=5).weights
    b = QuantumLayer(8, 3, ansatz="rzry", generator=torch.Generator().manual_seed(5)).weights
    c = QuantumLayer(8, 3, ansatz="rzry", generator=6).weights
    assert isinstance(a, torch.nn.Parameter) and a.shape == (3, 8, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 2 * math.pi
    assert QuantumLayer(8, 3, weight_init="zeros").weights.abs().sum() == 0


# ------------------------------------------------------------------------------------ the paper's ansatz


def test_paper_parity_matrix_one_chain_is_prefix_xor():
    s = paper_parity_matrix(5, 1)
    assert torch.equal(s, torch.tril(torch.ones(5, 5, dtype=torch.bool)))
    # two chains: b'_i = xor_{j <= i, (i - j) even} b_j  (binomial(i - j + 1, 1) mod 2)
    s2 = paper_parity_matrix(5, 2)
    want = torch.tensor([[(i >= j) and (i - j) % 2 == 0 for j in range(5)] for i in range(5)])
    assert torch.equal(s2, want)


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_paper_closed_form_matches_both_backends(n_layers):
    x, w, _ = _random_case("paper", 7, n_layers, batch=4, seed=n_layers)
    closed = paper_closed_form(x, n_layers)
    torch.testing.assert_close(expectations_torch("paper", x, w), closed, atol=1e-12, rtol=0)
    torch.testing.assert_close(expectations_pennylane("paper", x, w), closed, atol=1e-12, rtol=0)


def test_paper_weights_get_no_gradient_at_16_qubits():
    """RZ is diagonal, CNOTs permute basis states: Z-basis outputs cannot depend on the weights.

    In float64 the gradient is round-off (PennyLane's default.qubit also returns ~1e-16, not exact zeros);
    the same check on "rzry" gives gradients of order 0.1."""
    x, w, r = _random_case("paper", 16, 3, batch=2, seed=16)
    out, gx, gw = _value_and_grads(lambda a, b: expectations_torch("paper", a, b), x, w, r)
    assert gw.abs().max() < 1e-12
    assert gx.abs().max() > 1e-3  # the inputs do matter
    other = expectations_torch("paper", x, torch.rand(w.shape, generator=torch.Generator().manual_seed(1), dtype=F64))
    torch.testing.assert_close(out, other, atol=1e-12, rtol=0)
    torch.testing.assert_close(out, paper_closed_form(x, 3), atol=1e-12, rtol=0)
    xr, wr, rr = _random_case("rzry", 16, 3, batch=2, seed=16)
    assert _value_and_grads(lambda a, b: expectations_torch("rzry", a, b), xr, wr, rr)[2].abs().max() > 1e-2


def test_paper_weights_get_no_gradient_in_pennylane():
    x, w, r = _random_case("paper", 6, 3, batch=3, seed=3)
    gw = _value_and_grads(lambda a, b: expectations_pennylane("paper", a, b), x, w, r)[2]
    assert gw.abs().max() < 1e-12


# --------------------------------------------------------------------------------------- noise and shots


@pytest.mark.parametrize("ansatz", ANSATZE)
@pytest.mark.parametrize("n_qubits", [1, 2, 3, 4])
def test_depolarizing_matches_default_mixed(ansatz, n_qubits):
    x, w, r = _random_case(ansatz, n_qubits, 2, batch=3, seed=n_qubits)
    p = 0.07
    ours = _value_and_grads(lambda a, b: expectations_torch(ansatz, a, b, depolarizing=p, group_size=2), x, w, r)
    ref = _value_and_grads(lambda a, b: expectations_pennylane(ansatz, a, b, depolarizing=p), x, w, r)
    for got, want in zip(ours, ref, strict=True):
        # default.mixed evaluates parts of these circuits in single precision (~1e-7); ours is float64
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_depolarizing_single_qubit_closed_form():
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    for n_layers in (1, 3):
        w = torch.full(weight_shape("paper", n_layers, 1), 0.4, dtype=F64)
        for p in (0.0, 0.1, 0.75):
            got = expectations_torch("paper", x, w, depolarizing=p)
            torch.testing.assert_close(got, (1 - 4 * p / 3) ** n_layers * torch.cos(x), atol=1e-14, rtol=0)


def test_shots_are_seeded_unbiased_and_keep_exact_gradients():
    ansatz, shots = "rzry", 500
    x, w, r = _random_case(ansatz, 4, 2, batch=6, seed=21)
    exact = expectations_torch(ansatz, x, w)

    def sampled(seed: int) -> torch.Tensor:
        return expectations_torch(ansatz, x, w, shots=shots, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sampled(0), sampled(0)) and not torch.equal(sampled(0), sampled(1))
    counts = sampled(0) * shots  # (n_plus - n_minus): integers
    torch.testing.assert_close(counts, counts.round(), atol=1e-9, rtol=0)
    draws = torch.stack([sampled(s) for s in range(200)])
    stderr = ((1 - exact**2) / shots / 200).sqrt()
    assert ((draws.mean(0) - exact).abs() <= 5 * stderr + 1e-12).all()
    torch.testing.assert_close(draws.var(0), (1 - exact**2) / shots, atol=2e-4, rtol=0.35)
    # the straight-through gradient is that of the exact expectation
    g_shots = _value_and_grads(
        lambda a, b: expectations_torch(ansatz, a, b, shots=shots, generator=torch.Generator().manual_seed(0)), x, w, r
    )
    g_exact = _value_and_grads(lambda a, b: expectations_torch(ansatz, a, b), x, w, r)
    torch.testing.assert_close(g_shots[1], g_exact[1])
    torch.testing.assert_close(g_shots[2], g_exact[2])


def test_shots_agree_with_pennylane_sampler():
    ansatz, shots = "strong", 4000
    x, w, _ = _random_case(ansatz, 3, 2, batch=5, seed=4)
    ours = expectations_torch(ansatz, x, w, shots=shots, generator=torch.Generator().manual_seed(0))
    theirs = expectations_pennylane(ansatz, x, w, qnode=make_qnode(ansatz, 3, shots=shots, seed=0))
    exact = expectations_torch(ansatz, x, w)
    sigma = (2 * (1 - exact**2) / shots).sqrt()  # std of the difference of two independent estimates
    assert ((ours - theirs).abs() <= 5 * sigma + 1e-12).all()
    assert not torch.equal(ours, exact)


def test_shot_layer_needs_and_uses_its_generator():
    layer_a = QuantumLayer(3, 1, shots=100, generator=9, dtype=F64)
    layer_b = QuantumLayer(3, 1, shots=100, generator=9, dtype=F64)
    x = torch.full((2, 3), 0.3, dtype=F64)
    assert torch.equal(layer_a(x), layer_b(x))
    with pytest.raises(ValueError, match="Generator"):
        expectations_torch("rzry", x, layer_a.weights.detach(), shots=10)


def test_entangler_pairs():
    assert entangler_pairs("paper", 0, 4) == [(0, 1), (1, 2), (2, 3)]
    assert entangler_pairs("strong", 1, 4) == [(0, 2), (1, 3), (2, 0), (3, 1)]
    assert entangler_pairs("strong", 0, 1) == []
    assert entangler_pairs("rzry_separable", 2, 4) == []


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_statevector_matches_pennylane(ansatz):
    x, w, _ = _random_case(ansatz, 5, 2, batch=2, seed=8)
    dev = qml.device("default.qubit", wires=5)

    @qml.qnode(dev, interface="torch")
    def state(inputs, weights):
        circuit(ansatz)(inputs, weights)
        return qml.state()

    torch.testing.assert_close(statevector_torch(ansatz, x, w, group_size=2), state(x, w), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_rowwise_permutation_is_bit_exact(dtype):
    from qdiff_lib.statevector import _ROWWISE_PERMUTE_MIN, _permute_columns

    n = int(math.log2(_ROWWISE_PERMUTE_MIN))  # rows long enough for the row-wise path
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2**n, generator=g, dtype=dtype)
    idx = torch.randperm(2**n, generator=g)
    assert torch.equal(_permute_columns(x, idx), x[:, idx])
