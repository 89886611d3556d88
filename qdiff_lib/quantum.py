"""The quantum bottleneck: the paper's circuits, a fast batched simulator and the PennyLane reference.

Every circuit acts on ``n`` qubits (wire 0 is the most significant bit of a basis index, as in PennyLane):

1. angle encoding, ``RY(x_i)`` on wire ``i`` for an input row ``x`` of shape ``(n,)``;
2. ``n_layers`` layers, each a column of single-qubit rotations followed by an entangler of CNOTs;
3. the expectation values ``<Z_i>`` on every wire, an output row of shape ``(n,)``.

The ansätze (``ANSATZE``) differ in the rotations and the entangler:

``"paper"``
    ``RZ(w[l, i])`` on every wire, then the CNOT chain ``(i, i+1)``, ``i = 0..n-2``; weights ``(L, n)``.
    The circuit of the official code of arXiv:2504.00034. RZ is diagonal and the chain permutes basis
    states, so the Z-basis probabilities, and with them the outputs, do not depend on the weights
    (see :func:`paper_closed_form`).
``"rzry"``
    ``RZ(w[l, i, 0])`` then ``RY(w[l, i, 1])`` on every wire, then the CNOT chain; weights ``(L, n, 2)``.
    The authors' later fix.
``"rzry_separable"``
    The ``"rzry"`` rotations without any CNOT: a product of single-qubit circuits, weights ``(L, n, 2)``.
    A control with no entanglement (``<Z_i>`` depends on ``x_i`` and ``w[:, i]`` only).
``"strong"``
    PennyLane's ``StronglyEntanglingLayers`` (``Rot`` on every wire, then a CNOT ring of range
    ``(l mod (n-1)) + 1``); weights ``(L, n, 3)``.

Three exact backends compute the same map ``(B, n) -> (B, n)`` (a fourth name, ``"auto"``, picks one):

``"pennylane"``
    the QNode on ``default.qubit`` (backprop, parameter broadcasting): the reference
    (:mod:`qdiff_lib.circuits`);
``"torch"``
    :func:`expectations_torch`, a batched statevector simulator (:mod:`qdiff_lib.statevector`): memory and time
    grow as ``2**n``;
``"mps"``
    :func:`expectations_mps`, an exact matrix-product-state simulator (:mod:`qdiff_lib.mps`): the CNOT chain
    is an MPO of bond 2, so "paper" and "rzry" need bond ``2**L`` and cost grows linearly in ``n``;
``"auto"``
    :func:`select_backend`: the statevector up to 8 qubits and wherever it is cheaper, MPS above.

Hardware realism: ``shots`` (sampled expectation values from a seeded generator) and ``depolarizing``
(a single-qubit depolarizing channel of strength ``p`` on every wire after every layer, simulated with a
density matrix by the torch backend, checked against PennyLane's ``default.mixed``).

The circuit definitions live in :mod:`qdiff_lib.circuits`, the simulators in :mod:`qdiff_lib.statevector` and
:mod:`qdiff_lib.mps`; this module holds the layer and re-exports their public names.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from qdiff_lib._checks import check_choice
from qdiff_lib.circuits import (
    ANSATZE,
    Ansatz,
    _check_sizes,
    _complex_dtype,
    circuit,
    entangler_pairs,
    expectations_pennylane,
    make_qnode,
    paper_closed_form,
    paper_parity_matrix,
    weight_shape,
)
from qdiff_lib.mps import expectations_mps, mps_bond_dims, mps_macs, mps_peak_bytes, mps_state, mps_to_statevector
from qdiff_lib.statevector import (
    DEFAULT_GROUP_SIZE,
    DEFAULT_MEMORY_LIMIT_BYTES,
    expectations_torch,
    peak_bytes,
    state_bytes,
    statevector_torch,
)

__all__ = [
    "ANSATZE",
    "BACKENDS",
    "WEIGHT_INITS",
    "DEFAULT_GROUP_SIZE",
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "Ansatz",
    "Backend",
    "weight_shape",
    "entangler_pairs",
    "circuit",
    "make_qnode",
    "expectations_torch",
    "statevector_torch",
    "expectations_pennylane",
    "expectations_mps",
    "mps_state",
    "mps_to_statevector",
    "mps_bond_dims",
    "mps_macs",
    "mps_peak_bytes",
    "paper_closed_form",
    "paper_parity_matrix",
    "state_bytes",
    "peak_bytes",
    "select_backend",
    "QuantumLayer",
]

Backend = Literal["auto", "torch", "mps", "pennylane"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "mps", "pennylane")
WEIGHT_INITS: tuple[str, ...] = ("uniform", "zeros")

# --------------------------------------------------------------------------------------------------------------
# Backend selection
# --------------------------------------------------------------------------------------------------------------

#: ``"auto"`` never picks MPS at or below this width: the committed 8-qubit results were computed with the
#: statevector, and must stay bit-identical.
AUTO_STATEVECTOR_MAX_QUBITS = 8
#: Batch size ``"auto"`` assumes when the layer is built (the training batch; the choice is made once).
AUTO_BATCH = 64
# Time model of forward + backward (float32, one thread), fitted to `python -m bench quantum --qubits ''
# --mps-qubits 8,...,14 --sv-max 14 --repeats 9 --threads 1` on the project's 2-core CPU, batch 64, 3 layers:
#   statevector ~ 2.5 ms + 1.1 ns per byte of peak_bytes: rzry 4.2, 6.0, 8.2, 12.7, 29, 72, 139 ms at 8..14 qubits;
#                 paper 2.6, 3.3, 4.5, 8.3, 14, 26, 54 ms (fewer saved states: the weights get no gradient);
#   MPS         ~ 0.62 ms per qubit (small batched operations) + 0.17 ns per complex multiply-add (3 mps_macs:
#                 forward + backward), fitted to rzry 32 qubits 7 layers (bond 64, 3.3 s), rzry 16/6 (0.23 s),
#                 strong 16/2 (1.7 s); 0.11 to 0.32 ns over other cases. rzry 5.1, 5.7, 6.3, 6.8, 7.4, 8.3,
#                 8.6 ms and paper 5.2, 6.1, 6.3, 6.7, 7.3, 8.0, 10.1 ms at 8..14 qubits.
# Measured crossover: MPS is faster from 9 qubits for rzry (1.1x; 1.3x at 10, 4x at 12, 16x at 14) and from 11 for
# paper (1.2x; 5.4x at 14); the model picks MPS from 9 (rzry) and 11 (paper), and the statevector for "strong"
# (its ring MPOs cost far more: 12 qubits, 3 layers: MPS 7.2 s against 36 ms).
_SV_FIXED_S, _SV_S_PER_BYTE = 2.5e-3, 1.1e-9
_MPS_S_PER_QUBIT, _MPS_S_PER_MAC = 0.62e-3, 0.17e-9


def select_backend(
    ansatz: str,
    n_qubits: int,
    n_layers: int,
    *,
    batch: int = AUTO_BATCH,
    depolarizing: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> str:
    """The cheapest exact backend, ``"torch"`` or ``"mps"``, for forward + backward of this circuit and batch.

    ``"torch"`` when ``depolarizing > 0`` (a density matrix) or ``n_qubits <= AUTO_STATEVECTOR_MAX_QUBITS``;
    otherwise the one with the smaller modelled time: ``fixed + per_byte * peak_bytes`` for the statevector
    (:func:`peak_bytes`) against ``per_qubit * n + per_mac * batch * 3 * mps_macs`` for MPS (its small per-site
    operations cost a fixed time each; :func:`qdiff_lib.mps.mps_macs`, forward and twice that backward), with
    constants measured on the project's CPU (see the comment above).
    """
    check_choice("ansatz", ansatz, ANSATZE)
    _check_sizes(n_layers, n_qubits)
    if depolarizing > 0.0 or n_qubits <= AUTO_STATEVECTOR_MAX_QUBITS:
        return "torch"
    sv = _SV_FIXED_S + _SV_S_PER_BYTE * peak_bytes(batch, n_qubits, n_layers, ansatz, dtype)
    mps = _MPS_S_PER_QUBIT * n_qubits + _MPS_S_PER_MAC * batch * 3 * mps_macs(ansatz, n_qubits, n_layers)
    return "mps" if mps < sv else "torch"


# --------------------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------------------


class QuantumLayer(nn.Module):
    """Variational circuit as a layer: input angles ``(B, n_qubits)`` -> ``<Z_i>`` ``(B, n_qubits)`` in [-1, 1].

    Args:
        n_qubits, n_layers: circuit size.
        ansatz: one of ``ANSATZE`` (see the module docstring).
        backend: one of ``BACKENDS``: ``"auto"`` (:func:`select_backend`, made once, for batches of
            ``AUTO_BATCH``; the choice is ``.resolved_backend``), ``"torch"`` (statevector), ``"mps"``
            (matrix-product state; no ``depolarizing``) or ``"pennylane"`` (QNode reference; ``default.qubit``
            backprop, ``default.mixed`` with noise, parameter-shift with shots).
        shots: ``None`` for exact expectation values, else the number of measurement samples per input row.
        depolarizing: strength ``p`` of the depolarizing channel on every wire after every layer.
        memory_limit_bytes: the torch and mps backends raise ``MemoryError`` before allocating when their
            estimated peak memory (:func:`peak_bytes`, :func:`mps_peak_bytes`; forward + backward when grad is
            enabled) exceeds it; None: no check.
        dtype: float32 (fast) or float64.
        weight_init: ``"uniform"`` in ``[0, 2 pi)`` or ``"zeros"``.
        generator: ``torch.Generator`` or integer seed for the initial weights and, continuing the same stream,
            the shot samples (the pennylane backend seeds its device from it).
        group_size: qubits fused per Kronecker-product gate in the torch backend.

    Gradients reach both ``.weights`` and the inputs (nothing is detached).
    """

    def __init__(
        self,
        n_qubits: int,
        n_layers: int,
        ansatz: str = "rzry",
        backend: str = "auto",
        shots: int | None = None,
        depolarizing: float = 0.0,
        memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
        dtype: torch.dtype = torch.float32,
        weight_init: str = "uniform",
        generator: torch.Generator | int = 0,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        super().__init__()
        check_choice("ansatz", ansatz, ANSATZE)
        check_choice("backend", backend, BACKENDS)
        check_choice("weight_init", weight_init, WEIGHT_INITS)
        _complex_dtype(dtype)
        _check_sizes(n_layers, n_qubits)
        if shots is not None and shots < 1:
            raise ValueError(f"shots must be None or a positive integer, got {shots}")
        if not 0.0 <= depolarizing <= 1.0:
            raise ValueError(f"depolarizing must lie in [0, 1], got {depolarizing}")
        if backend == "mps" and depolarizing > 0.0:
            raise ValueError(f"backend 'mps' simulates pure states only, got depolarizing={depolarizing}; with "
                             f"noise use backend 'auto' or 'torch' (density matrix) or 'pennylane' (default.mixed)")
        self.n_qubits, self.n_layers, self.ansatz, self.backend = n_qubits, n_layers, ansatz, backend
        self.resolved_backend = (select_backend(ansatz, n_qubits, n_layers, depolarizing=depolarizing, dtype=dtype)
                                 if backend == "auto" else backend)
        self.shots, self.depolarizing, self.memory_limit_bytes = shots, depolarizing, memory_limit_bytes
        self.dtype, self.group_size = dtype, group_size
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        self.generator = generator
        shape = weight_shape(ansatz, n_layers, n_qubits)
        if weight_init == "uniform":
            init = torch.rand(shape, generator=generator, dtype=torch.float64) * (2 * math.pi)
        else:
            init = torch.zeros(shape, dtype=torch.float64)
        self.weights = nn.Parameter(init.to(dtype))
        self._qnode = None
        if self.resolved_backend == "pennylane":
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if shots is not None else None
            self._qnode = make_qnode(ansatz, n_qubits, shots=shots, depolarizing=depolarizing, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, n_qubits)`` angles -> ``(B, n_qubits)`` expectation values, in the layer's dtype."""
        if x.dim() != 2 or x.shape[1] != self.n_qubits:
            raise ValueError(f"expected (B, n_qubits) = (B, {self.n_qubits}), got {tuple(x.shape)}")
        x = x.to(self.dtype)
        if self.resolved_backend == "pennylane":
            return expectations_pennylane(self.ansatz, x, self.weights, qnode=self._qnode)
        if self.resolved_backend == "mps":
            return expectations_mps(self.ansatz, x, self.weights, shots=self.shots, generator=self.generator,
                                    memory_limit_bytes=self.memory_limit_bytes)
        return expectations_torch(
            self.ansatz, x, self.weights, depolarizing=self.depolarizing, shots=self.shots,
            generator=self.generator, group_size=self.group_size, memory_limit_bytes=self.memory_limit_bytes,
        )

    def extra_repr(self) -> str:
        return (f"n_qubits={self.n_qubits}, n_layers={self.n_layers}, ansatz={self.ansatz!r}, "
                f"backend={self.backend!r}, resolved_backend={self.resolved_backend!r}, shots={self.shots}, "
                f"depolarizing={self.depolarizing}, dtype={self.dtype}")
