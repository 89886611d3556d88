"""Tests of qdiff_lib.mps, the exact matrix-product-state backend: against the statevector backend, PennyLane's
default.qubit and its tensor-network device default.tensor (quimb), the predicted bond dimensions against the
Schmidt ranks measured by SVD, large widths, the memory guard, shots and the backend selection."""

from __future__ import annotations

import math
import sys

import pennylane as qml
import pytest
import torch
from test_quantum import _random_case, _value_and_grads, measured_peaks  # tests/ is on sys.path (pytest)

from qdiff_lib.circuits import _apply_circuit
from qdiff_lib.mps import _environments, _mpo_bonds, _sample, entangler_map, schmidt_coefficients
from qdiff_lib.quantum import (
    ANSATZE,
    QuantumLayer,
    expectations_mps,
    expectations_pennylane,
    expectations_torch,
    mps_bond_dims,
    mps_peak_bytes,
    mps_state,
    mps_to_statevector,
    paper_closed_form,
    select_backend,
    statevector_torch,
    weight_shape,
)

F64 = torch.float64


def _assert_all_close(got, want, atol):
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g.to(F64), w.to(F64), atol=atol, rtol=0)


# ------------------------------------------------------------------------------- agreement, widths 1 to 12


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("ansatz", ANSATZE)
def test_matches_statevector_every_width(ansatz, dtype):
    """Values and gradients equal the torch statevector at every width 1..12, layers 1..4 (edge compressions
    at small widths, bulk MPOs at large ones; "strong" up to 3 layers: its range-4 ring is a dense MPO of bond
    256, seconds at 11 qubits), float32 and float64."""
    for n in range(1, 13):
        n_layers = 1 + n % (3 if ansatz == "strong" else 4)
        x, w, r = _random_case(ansatz, n, n_layers, batch=3, seed=n + 20 * ANSATZE.index(ansatz), dtype=dtype)
        ours = _value_and_grads(lambda a, b: expectations_mps(ansatz, a, b), x, w, r)
        ref = _value_and_grads(lambda a, b: expectations_torch(ansatz, a, b), x, w, r)
        assert all(t.dtype == dtype for t in ours)
        _assert_all_close(ours, ref, atol=1e-5 if dtype == torch.float32 else 1e-12)


# every width 1..12 once across the four ansätze
_PENNYLANE_CASES = [(a, n) for i, a in enumerate(ANSATZE) for n in range(1 + i, 13, len(ANSATZE))]


@pytest.mark.parametrize("ansatz, n_qubits", _PENNYLANE_CASES)
def test_matches_pennylane_default_qubit(ansatz, n_qubits):
    n_layers = 1 + n_qubits % 3
    x, w, r = _random_case(ansatz, n_qubits, n_layers, batch=2, seed=100 + n_qubits)
    ref = _value_and_grads(lambda a, b: expectations_pennylane(ansatz, a, b), x, w, r)
    _assert_all_close(_value_and_grads(lambda a, b: expectations_mps(ansatz, a, b), x, w, r), ref, atol=1e-10)
    x32, w32, r32 = x.float(), w.float(), r.float()
    _assert_all_close(_value_and_grads(lambda a, b: expectations_mps(ansatz, a, b), x32, w32, r32), ref, atol=1e-5)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_state_matches_statevector(ansatz):
    for n, n_layers in [(1, 2), (2, 3), (5, 4), (7, 3)]:
        x, w, _ = _random_case(ansatz, n, n_layers, batch=2, seed=n)
        torch.testing.assert_close(mps_to_statevector(mps_state(ansatz, x, w)), statevector_torch(ansatz, x, w),
                                   atol=1e-12, rtol=0)


# ------------------------------------------------------------------- PennyLane's tensor network, 16 to 32 qubits


@pytest.mark.parametrize("ansatz, n_qubits, n_layers",
                         [("rzry", 16, 3), ("paper", 24, 2), ("rzry", 32, 3), ("rzry_separable", 32, 2)])
def test_matches_default_tensor(ansatz, n_qubits, n_layers):
    """PennyLane's default.tensor (quimb's MPS, exact at these bonds) on the same circuit: values, 2 rows."""
    x, w, _ = _random_case(ansatz, n_qubits, n_layers, batch=2, seed=n_qubits)
    dev = qml.device("default.tensor", wires=n_qubits, method="mps")

    @qml.qnode(dev, interface="torch", diff_method=None)
    def expectations(inputs, weights):
        _apply_circuit(ansatz, inputs, weights)
        return [qml.expval(qml.PauliZ(i)) for i in range(n_qubits)]

    ref = torch.stack(expectations(x, w), -1)
    torch.testing.assert_close(expectations_mps(ansatz, x, w), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(expectations_mps(ansatz, x.float(), w.float()).double(), ref, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ bond dimensions and Schmidt ranks


def _schmidt_ranks(state: torch.Tensor, tol: float = 1e-9) -> list[int]:
    """Schmidt rank at every cut of an MPS ``(1, n, D, 2, D)``, from the library's Schmidt sweep (itself checked
    against the SVD of the dense state in test_entanglement_entropy_...)."""
    return [int((s > tol * s[0]).sum()) for s in schmidt_coefficients(state[0])]


@pytest.mark.parametrize("ansatz", ["paper", "rzry", "rzry_separable"])
@pytest.mark.parametrize("n_qubits, n_layers", [(7, 1), (9, 2), (10, 4), (20, 3), (13, 5)])
def test_schmidt_ranks_equal_predicted_bond(ansatz, n_qubits, n_layers):
    x, w, _ = _random_case(ansatz, n_qubits, n_layers, batch=1, seed=3)
    measured = _schmidt_ranks(mps_state(ansatz, x, w))
    if ansatz == "rzry_separable":
        predicted = [1] * (n_qubits - 1)
    else:
        predicted = [min(2**n_layers, 2**k, 2 ** (n_qubits - k)) for k in range(1, n_qubits)]
    assert measured == predicted == list(mps_bond_dims(ansatz, n_qubits, n_layers))
    if n_qubits <= 10:  # the same ranks from the dense state
        psi = statevector_torch(ansatz, x, w)[0]
        dense = [int(torch.linalg.matrix_rank(psi.reshape(2**k, -1), rtol=1e-9)) for k in range(1, n_qubits)]
        assert dense == measured


def test_strong_bonds_bound_schmidt_ranks():
    """The ring's MPO bonds at the middle cut are 4, 16, 64 for ranges 1, 2, 3; the state's ranks stay below
    the (capped) product."""
    assert [_mpo_bonds(entangler_map("strong", layer, 12))[6] for layer in range(3)] == [4, 16, 64]
    for n, n_layers in [(8, 2), (11, 3)]:
        x, w, _ = _random_case("strong", n, n_layers, batch=1, seed=5)
        bonds = mps_bond_dims("strong", n, n_layers)
        assert all(r <= b for r, b in zip(_schmidt_ranks(mps_state("strong", x, w)), bonds, strict=True))


# ----------------------------------------------------------------------------------------- large widths


def test_40_qubit_rzry_forward_backward():
    """40 qubits, 3 layers: forward + backward through the layer. A CNOT chain spreads Z only to lower wires
    and X, Y one wire up, so output i depends on wires 0..i+L-1: the first 8 outputs and their gradients equal
    those of the 10-qubit circuit on the same inputs and weights, computed by the statevector."""
    layer = QuantumLayer(40, 3, ansatz="rzry", backend="mps", dtype=F64, generator=1)
    x = torch.rand(4, 40, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_(True)
    out = layer(x)
    out[:, :8].sum().backward()
    assert out.shape == (4, 40) and torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-12
    x10 = x.detach()[:, :10].clone().requires_grad_(True)
    w10 = layer.weights.detach()[:, :10].clone().requires_grad_(True)
    ref = expectations_torch("rzry", x10, w10)[:, :8]
    ref.sum().backward()
    torch.testing.assert_close(out[:, :8].detach(), ref.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(x.grad[:, :10], x10.grad, atol=1e-12, rtol=0)
    assert x.grad[:, 10:].abs().max() < 1e-12 and x.grad[:, 9].abs().min() > 1e-6
    torch.testing.assert_close(layer.weights.grad[:, :10], w10.grad, atol=1e-12, rtol=0)


def test_closed_forms_at_64_qubits():
    x, w, _ = _random_case("paper", 64, 3, batch=3, seed=4)
    torch.testing.assert_close(expectations_mps("paper", x, w), paper_closed_form(x, 3), atol=1e-12, rtol=0)
    x, w, _ = _random_case("rzry_separable", 64, 3, batch=3, seed=4)  # a product of 64 one-qubit circuits
    wires = torch.stack([expectations_torch("rzry_separable", x[:, i : i + 1], w[:, i : i + 1]) for i in range(64)])
    torch.testing.assert_close(expectations_mps("rzry_separable", x, w), wires[..., 0].t(), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------- memory guard


def test_memory_error_before_allocating_in_readable_units():
    x = torch.zeros(64, 64, requires_grad=True)
    w = torch.zeros(weight_shape("rzry", 18, 64))
    need = mps_peak_bytes(64, 64, 18, "rzry")
    assert need > 2**40
    with pytest.raises(MemoryError, match=r"needs about \d+\.\d (TiB|PiB) \(bond dimension up to 131072") as info:
        expectations_mps("rzry", x, w)  # would need tebibytes: refused at once
    assert "memory_limit_bytes=N" in str(info.value) and "4.0 GiB" in str(info.value)
    with pytest.raises(MemoryError, match="GiB"):
        QuantumLayer(12, 3, ansatz="strong", backend="mps", memory_limit_bytes=2**20)(torch.zeros(64, 12))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_bytes_matches_measured_peak():
    """The estimate against the measured growth of the peak resident set of a fresh process."""
    cases = [("rzry", 40, 5, 64, True), ("rzry", 40, 5, 64, False), ("strong", 10, 3, 32, True)]
    peaks = measured_peaks("expectations_mps", [(*c, {}) for c in cases])
    for (ansatz, n, layers, batch, grad), measured in zip(cases, peaks, strict=True):
        est = mps_peak_bytes(batch, n, layers, ansatz, grad=grad)
        assert 0.9 * measured <= est <= 1.6 * measured, (ansatz, n, layers, grad, est, measured)


# ---------------------------------------------------------------------------------------- shots and noise


def test_sampled_bitstrings_follow_the_born_rule():
    x, w, _ = _random_case("strong", 4, 2, batch=2, seed=6)
    state = mps_state("strong", x, w)
    _, rights = _environments(state, string=False)
    bits = _sample(state, rights, 40000, torch.Generator().manual_seed(0))  # (B, shots, n)
    index = (bits * (2 ** torch.arange(3, -1, -1))).sum(-1)
    freq = torch.stack([torch.bincount(row, minlength=16) for row in index]).double() / 40000
    probs = statevector_torch("strong", x, w).abs().square()
    assert (freq - probs).abs().max() < 0.01  # ~4 standard deviations of a frequency near 0.25


def test_shots_are_seeded_unbiased_and_keep_exact_gradients():
    ansatz, shots = "rzry", 2000
    x, w, r = _random_case(ansatz, 12, 3, batch=4, seed=21)
    exact = expectations_mps(ansatz, x, w)

    def sampled(seed):
        return expectations_mps(ansatz, x, w, shots=shots, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sampled(0), sampled(0)) and not torch.equal(sampled(0), sampled(1))
    sigma = ((1 - exact**2) / shots).sqrt()
    assert ((sampled(0) - exact).abs() <= 5 * sigma + 1e-12).all()
    grads = _value_and_grads(lambda a, b: expectations_mps(
        ansatz, a, b, shots=shots, generator=torch.Generator().manual_seed(0)), x, w, r)
    _assert_all_close(grads[1:], _value_and_grads(lambda a, b: expectations_mps(ansatz, a, b), x, w, r)[1:],
                      atol=1e-12)
    with pytest.raises(ValueError, match="Generator"):
        expectations_mps(ansatz, x, w, shots=10)
    layer_a, layer_b = (QuantumLayer(12, 3, backend="mps", shots=100, generator=9) for _ in range(2))
    assert torch.equal(layer_a(x.float()), layer_b(x.float()))  # the layer's generator draws the shots


def test_depolarizing_needs_a_density_matrix_backend():
    x, w, _ = _random_case("rzry", 3, 1, batch=1, seed=0)
    with pytest.raises(ValueError, match=r"depolarizing=0\.1.*'torch'.*'pennylane'"):
        expectations_mps("rzry", x, w, depolarizing=0.1)
    with pytest.raises(ValueError, match=r"'auto' or 'torch'"):
        QuantumLayer(3, 1, backend="mps", depolarizing=0.1)
    assert QuantumLayer(16, 3, depolarizing=0.1).resolved_backend == "torch"


# ------------------------------------------------------------------------------------------- auto backend


def test_auto_keeps_the_statevector_up_to_8_qubits():
    for ansatz in ANSATZE:
        for n in range(1, 9):
            assert select_backend(ansatz, n, 3) == "torch"
    x = torch.rand(16, 8, generator=torch.Generator().manual_seed(0))
    for ansatz in ("paper", "rzry"):  # the committed 8-qubit results: bit-identical
        auto, sv = QuantumLayer(8, 3, ansatz=ansatz, generator=4), QuantumLayer(8, 3, ansatz, "torch", generator=4)
        assert auto.resolved_backend == "torch" and torch.equal(auto(x), sv(x))


def test_auto_picks_mps_where_it_wins_and_shows_it():
    layer = QuantumLayer(16, 3)
    assert layer.backend == "auto" and layer.resolved_backend == "mps"
    assert "backend='auto', resolved_backend='mps'" in repr(layer)
    assert select_backend("rzry", 64, 3) == "mps" and select_backend("strong", 16, 3) == "torch"
    assert QuantumLayer(16, 3, backend="torch").resolved_backend == "torch"


def test_entanglement_entropy_equals_the_statevector_svd_and_respects_the_bond_bound():
    """The library's Schmidt sweep against the SVD of the reshaped statevector, cut by cut (independent route), and
    the entropy never above L bits for the chain ansaetze (bond <= 2^L) nor above 0 without an entangler."""
    from qdiff_lib.mps import entanglement_entropy, mps_to_statevector, schmidt_coefficients

    g = torch.Generator().manual_seed(3)
    for ansatz, n, layers in (("rzry", 9, 2), ("paper", 8, 3), ("rzry_separable", 6, 3), ("strong", 6, 2)):
        x = torch.rand(1, n, generator=g, dtype=torch.float64) * math.pi
        w = torch.rand(weight_shape(ansatz, layers, n), generator=g, dtype=torch.float64) * 2 * math.pi
        state = mps_state(ansatz, x, w)
        psi = mps_to_statevector(state)[0]
        entropy = entanglement_entropy(state[0])
        for k, s in enumerate(schmidt_coefficients(state[0])):
            want = torch.linalg.svdvals(psi.reshape(2 ** (k + 1), -1))
            torch.testing.assert_close(s[: len(want)], want[: len(s)], atol=1e-10, rtol=0)
            p = want**2
            p = p[p > 1e-30]
            assert float(entropy[k]) == pytest.approx(float(-(p * torch.log2(p)).sum()), abs=1e-9)
        if ansatz in ("rzry", "paper"):
            assert float(entropy.max()) <= layers + 1e-9
        if ansatz == "rzry_separable":
            assert float(entropy.abs().max()) < 1e-9
