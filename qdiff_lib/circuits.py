"""The circuits of the quantum bottleneck: ansätze, their PennyLane definitions (the reference backend), the
single-qubit gates shared by the torch simulators, and the paper's ansatz in closed form.

Every circuit acts on ``n`` qubits (wire 0 is the most significant bit of a basis index, as in PennyLane):
angle encoding ``RY(x_i)`` on wire ``i``, then ``n_layers`` layers, each a column of single-qubit rotations
followed by an entangler of CNOTs (:func:`entangler_pairs`), then ``<Z_i>`` on every wire. The ansätze are
described in :mod:`qdiff_lib.quantum`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pennylane as qml
import torch

from qdiff_lib._checks import check_choice

__all__ = [
    "ANSATZE",
    "Ansatz",
    "weight_shape",
    "entangler_pairs",
    "circuit",
    "make_qnode",
    "expectations_pennylane",
    "paper_closed_form",
    "paper_parity_matrix",
]

Ansatz = Literal["paper", "rzry", "rzry_separable", "strong"]
ANSATZE: tuple[str, ...] = ("paper", "rzry", "rzry_separable", "strong")


def _check_sizes(n_layers: int, n_qubits: int) -> None:
    if n_qubits < 1 or n_layers < 1:
        raise ValueError(f"need n_qubits >= 1 and n_layers >= 1, got n_qubits={n_qubits}, n_layers={n_layers}")


def weight_shape(ansatz: str, n_layers: int, n_qubits: int) -> tuple[int, ...]:
    """Shape of the weights: ``(L, n)`` for "paper", ``(L, n, 2)`` for "rzry[_separable]", ``(L, n, 3)`` for
    "strong"."""
    check_choice("ansatz", ansatz, ANSATZE)
    _check_sizes(n_layers, n_qubits)
    if ansatz == "paper":
        return (n_layers, n_qubits)
    if ansatz in ("rzry", "rzry_separable"):
        return (n_layers, n_qubits, 2)
    return tuple(qml.StronglyEntanglingLayers.shape(n_layers, n_qubits))


def _strong_range(layer: int, n_qubits: int) -> int:
    """PennyLane's default range of ``StronglyEntanglingLayers`` for layer ``layer``."""
    return (layer % (n_qubits - 1)) + 1 if n_qubits > 1 else 0


def entangler_pairs(ansatz: str, layer: int, n_qubits: int) -> list[tuple[int, int]]:
    """The (control, target) pairs of layer ``layer``'s CNOTs, in the order they are applied."""
    check_choice("ansatz", ansatz, ANSATZE)
    if ansatz == "strong":
        if n_qubits == 1:
            return []
        r = _strong_range(layer, n_qubits)
        return [(i, (i + r) % n_qubits) for i in range(n_qubits)]
    if ansatz == "rzry_separable":
        return []
    return [(i, i + 1) for i in range(n_qubits - 1)]


# --------------------------------------------------------------------------------------------------------------
# PennyLane definitions (what a reader sees and draws) and the reference backend
# --------------------------------------------------------------------------------------------------------------


def _apply_circuit(ansatz: str, inputs, weights, depolarizing: float = 0.0) -> None:
    """Apply encoding and ansatz to wires ``0..n-1``; a depolarizing channel after every layer if ``p > 0``."""
    n = qml.math.shape(inputs)[-1]
    n_layers = qml.math.shape(weights)[0]
    for i in range(n):
        qml.RY(inputs[..., i], wires=i)
    if ansatz == "strong" and depolarizing == 0.0:
        qml.StronglyEntanglingLayers(weights, wires=range(n))
        return
    for layer in range(n_layers):
        if ansatz == "strong":
            ranges = (_strong_range(layer, n),) if n > 1 else None
            qml.StronglyEntanglingLayers(weights[layer : layer + 1], wires=range(n), ranges=ranges)
        else:
            for i in range(n):
                if ansatz == "paper":
                    qml.RZ(weights[layer, i], wires=i)
                else:
                    qml.RZ(weights[layer, i, 0], wires=i)
                    qml.RY(weights[layer, i, 1], wires=i)
            for control, target in entangler_pairs(ansatz, layer, n):
                qml.CNOT(wires=[control, target])
        if depolarizing > 0.0:
            for i in range(n):
                qml.DepolarizingChannel(depolarizing, wires=i)


def circuit(ansatz: str) -> Callable:
    """The PennyLane function ``f(inputs, weights)`` applying encoding and ansatz (no measurement).

    ``inputs`` has shape ``(n,)`` or ``(B, n)`` (broadcast), ``weights`` the shape of :func:`weight_shape`.
    Wrap it in a QNode to draw or run it, or use :func:`make_qnode`.
    """
    check_choice("ansatz", ansatz, ANSATZE)

    def ansatz_circuit(inputs, weights) -> None:
        _apply_circuit(ansatz, inputs, weights)

    ansatz_circuit.__name__ = f"{ansatz}_circuit"
    ansatz_circuit.__doc__ = f"Angle encoding RY(x_i), then the {ansatz!r} ansatz."
    return ansatz_circuit


def make_qnode(
    ansatz: str,
    n_qubits: int,
    *,
    device: str | None = None,
    diff_method: str | None = None,
    shots: int | None = None,
    depolarizing: float = 0.0,
    seed: int | None = None,
) -> qml.QNode:
    """A torch-interface QNode ``(inputs, weights) -> tuple of n tensors <Z_i>``, each ``(B,)`` when broadcast.

    Defaults: ``default.qubit`` with backprop; ``default.mixed`` when ``depolarizing > 0``;
    parameter-shift when ``shots`` is set (``seed`` seeds the device's sampler).
    """
    check_choice("ansatz", ansatz, ANSATZE)
    if device is None:
        device = "default.mixed" if depolarizing > 0.0 else "default.qubit"
    if diff_method is None:
        diff_method = "parameter-shift" if shots is not None else "backprop"
    dev = qml.device(device, wires=n_qubits, seed=seed) if seed is not None else qml.device(device, wires=n_qubits)

    def expectations(inputs, weights):
        _apply_circuit(ansatz, inputs, weights, depolarizing)
        return tuple(qml.expval(qml.PauliZ(i)) for i in range(n_qubits))

    qnode = qml.QNode(expectations, dev, interface="torch", diff_method=diff_method)
    if shots is not None:
        qnode = qml.set_shots(qnode, shots=shots)
    return qnode


def expectations_pennylane(
    ansatz: str,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    *,
    depolarizing: float = 0.0,
    qnode: qml.QNode | None = None,
) -> torch.Tensor:
    """Reference ``<Z_i>`` of shape ``(B, n)`` for inputs ``(B, n)``, via a broadcast QNode."""
    _check_inputs(inputs, weights, ansatz)
    if qnode is None:
        qnode = make_qnode(ansatz, inputs.shape[-1], depolarizing=depolarizing)
    out = qnode(inputs, weights)
    return torch.stack([o.reshape(-1) for o in out], dim=-1).to(inputs.dtype)


# --------------------------------------------------------------------------------------------------------------
# Gates and checks shared by the torch simulators
# --------------------------------------------------------------------------------------------------------------


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype == torch.float32:
        return torch.complex64
    if dtype == torch.float64:
        return torch.complex128
    raise ValueError(f"unsupported dtype {dtype}; allowed: torch.float32, torch.float64")



def _rz(theta: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """``RZ(theta) = diag(e^{-i theta/2}, e^{i theta/2})``, shape ``(..., 2, 2)``."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    zero = torch.zeros_like(c)
    off_diagonal = torch.complex(zero, zero)
    m = torch.stack([torch.complex(c, -s), off_diagonal, off_diagonal, torch.complex(c, s)], -1)
    return m.reshape(*theta.shape, 2, 2).to(cdtype)


def _ry(theta: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """``RY(theta) = [[cos, -sin], [sin, cos]](theta/2)``, shape ``(..., 2, 2)``."""
    c, s = torch.cos(theta / 2), torch.sin(theta / 2)
    m = torch.stack([c, -s, s, c], -1).reshape(*theta.shape, 2, 2)
    return torch.complex(m, torch.zeros_like(m)).to(cdtype)


def _rotations(ansatz: str, weights: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """Each layer's single-qubit rotation on each wire, ``(L, n, 2, 2)`` complex."""
    if ansatz == "paper":
        return _rz(weights, cdtype)
    if ansatz in ("rzry", "rzry_separable"):
        return _ry(weights[..., 1], cdtype) @ _rz(weights[..., 0], cdtype)
    phi, theta, omega = weights.unbind(-1)  # Rot(phi, theta, omega) = RZ(omega) RY(theta) RZ(phi)
    return _rz(omega, cdtype) @ _ry(theta, cdtype) @ _rz(phi, cdtype)


def _check_inputs(inputs: torch.Tensor, weights: torch.Tensor, ansatz: str) -> None:
    check_choice("ansatz", ansatz, ANSATZE)
    if inputs.dim() != 2:
        raise ValueError(f"inputs: expected (B, n_qubits), got {tuple(inputs.shape)}")
    n = inputs.shape[1]
    n_layers = weights.shape[0] if weights.dim() > 0 else 0
    expected = weight_shape(ansatz, max(n_layers, 1), n)
    if tuple(weights.shape) != expected:
        raise ValueError(f"weights of {ansatz!r}: expected {expected} = (n_layers, ...) for n_qubits={n}, "
                         f"got {tuple(weights.shape)}")


def _rotation_angles(
    ansatz: str, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Each layer's rotation as ``RZ(post) RY(mid) RZ(pre)`` per wire: ``(pre, mid, post)``, each ``(L, n)`` or None."""
    if ansatz == "paper":
        return weights, None, None
    if ansatz in ("rzry", "rzry_separable"):
        return weights[..., 0], weights[..., 1], None
    return weights[..., 0], weights[..., 1], weights[..., 2]



# --------------------------------------------------------------------------------------------------------------
# The paper's ansatz in closed form
# --------------------------------------------------------------------------------------------------------------


def paper_parity_matrix(n_qubits: int, n_layers: int) -> torch.Tensor:
    """``S = T^L mod 2``, ``(n, n)`` bool, with ``T`` the lower-triangular ones: one CNOT chain maps basis bits
    ``b -> T b`` over GF(2) (``b'_i = b_0 xor ... xor b_i``)."""
    _check_sizes(n_layers, n_qubits)
    t = torch.tril(torch.ones(n_qubits, n_qubits, dtype=torch.int64))
    s = torch.eye(n_qubits, dtype=torch.int64)
    for _ in range(n_layers):
        s = (t @ s) % 2
    return s.bool()


def paper_closed_form(inputs: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Outputs of the "paper" circuit for inputs ``(B, n)``, for any weights: ``<Z_i> = prod_{j in S_i} cos(x_j)``.

    RZ layers only add phases and the CNOT chains permute basis states, so the Z-basis distribution is that of
    the encoded product state (bits independent, ``P(b_j = 1) = sin^2(x_j / 2)``) pushed through ``b -> S b``
    with ``S`` from :func:`paper_parity_matrix`; ``E[(-1)^{b_j}] = cos(x_j)``.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs: expected (B, n_qubits), got {tuple(inputs.shape)}")
    s = paper_parity_matrix(inputs.shape[1], n_layers).to(inputs.device)
    factors = torch.where(s[None, :, :], torch.cos(inputs)[:, None, :], torch.ones((), dtype=inputs.dtype))
    return factors.prod(dim=-1)
