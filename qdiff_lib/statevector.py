"""The batched statevector simulator of the quantum bottleneck (backend ``"torch"``) and its memory model.

:func:`expectations_torch` computes ``<Z_i>`` for a batch of input rows at once (no loop over samples): the real
encoding and the first layer's rotations form a product state; in later layers each RZ column is a phase vector
(diagonal, carried through permutations and multiplied in once), each RY column is a real Kronecker product over
groups of up to ``group_size`` qubits applied with one batched GEMM per group; every CNOT entangler is one
precomputed index permutation, and the last one is folded into the measurement matrix. With ``depolarizing``
the density matrix is simulated instead (checked against PennyLane's ``default.mixed``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from qdiff_lib._checks import check_choice
from qdiff_lib.circuits import (
    ANSATZE,
    _check_inputs,
    _complex_dtype,
    _rotation_angles,
    _rotations,
    _ry,
    entangler_pairs,
)

__all__ = [
    "DEFAULT_MEMORY_LIMIT_BYTES",
    "DEFAULT_GROUP_SIZE",
    "expectations_torch",
    "statevector_torch",
    "state_bytes",
    "peak_bytes",
]

#: Default ceiling for the simulator's estimated peak memory for one batch (:func:`peak_bytes`).
DEFAULT_MEMORY_LIMIT_BYTES = 4 * 2**30
#: Largest number of qubits fused into one Kronecker-product gate by the torch simulator.
DEFAULT_GROUP_SIZE = 4


def state_bytes(batch: int, n_qubits: int, dtype: torch.dtype = torch.float32, density: bool = False) -> int:
    """Bytes of one batch's statevector ``(B, 2**n)`` (or density matrix ``(B, 4**n)``), complex of ``dtype``."""
    itemsize = torch.empty((), dtype=_complex_dtype(dtype)).element_size()
    return batch * (4**n_qubits if density else 2**n_qubits) * itemsize


def _split_groups(n: int, group_size: int) -> tuple[int, ...]:
    """Split ``n`` qubits into ``ceil(n / group_size)`` contiguous groups of balanced sizes."""
    n_groups = -(-n // group_size)
    base, extra = divmod(n, n_groups)
    return tuple(base + (1 if g < extra else 0) for g in range(n_groups))


def _cnot_permutation(pairs: Sequence[tuple[int, int]], n: int) -> torch.Tensor:
    """Index ``idx`` with ``state_after[j] = state_before[idx[j]]`` for the CNOTs ``pairs`` applied in order."""
    idx = torch.arange(2**n, dtype=torch.int64)
    for control, target in reversed(pairs):  # state_k[j] = state_{k-1}[f_k(j)]: compose f_1(f_2(...f_K(j)))
        cbit = (idx >> (n - 1 - control)) & 1
        idx = idx ^ (cbit << (n - 1 - target))
    return idx


def _z_signs(n: int) -> torch.Tensor:
    """``(2**n, n)`` matrix with entry ``(j, i)`` the eigenvalue of ``Z_i`` on basis state ``j``."""
    j = torch.arange(2**n, dtype=torch.int64)[:, None]
    bits = (j >> (n - 1 - torch.arange(n))) & 1
    return (1 - 2 * bits).to(torch.float64)


class _Plan:
    """Index tensors of one circuit layout, precomputed once (see :func:`_plan`)."""

    def __init__(self, ansatz: str, n: int, n_layers: int, device: torch.device, dtype: torch.dtype) -> None:
        perms = [_cnot_permutation(entangler_pairs(ansatz, layer, n), n) for layer in range(n_layers)]
        self.perms = [p.to(device) for p in perms]
        self.inv_perms = [torch.argsort(p).to(device) for p in perms]
        signs = _z_signs(n)
        self.measure = signs.to(device=device, dtype=dtype)  # (2**n, n), Z signs of basis states
        # <Z_i> after the last entangler: sum_m p[m] z_i(inv[m]), so the last permutation costs nothing.
        self.measure_folded = signs[torch.argsort(perms[-1])].to(device=device, dtype=dtype)

    @functools.cached_property
    def density(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """For a density matrix as a 2n-qubit vector (row bits, then column bits): each entangler as one
        permutation of both indices, its inverse, and the positions of the diagonal. Built on first use."""
        dim = self.measure.shape[0]
        perms = [(p[:, None] * dim + p[None, :]).reshape(-1) for p in self.perms]
        inv_perms = [torch.argsort(p) for p in perms]
        diag_index = torch.arange(dim, device=self.measure.device) * (dim + 1)
        return perms, inv_perms, diag_index


@functools.lru_cache(maxsize=64)
def _plan(ansatz: str, n: int, n_layers: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    return _Plan(ansatz, n, n_layers, device, dtype)


#: Rows at least this long are permuted one row at a time (see :func:`_permute_columns`).
_ROWWISE_PERMUTE_MIN = 2**12


def _permute_columns(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[:, idx]`` for ``x`` ``(B, N)`` complex and a permutation ``idx`` ``(N,)``.

    For long rows, one 1-D ``index_select`` per row, on the amplitudes' bits (complex64 as int64, complex128
    as float64 pairs): ~4x faster on CPU than one ``index_select`` along dim 1 (16 qubits, batch 64: 18 vs
    74 ms), which gathers element by element across the batch. Bit-exact either way.
    """
    if x.shape[1] < _ROWWISE_PERMUTE_MIN or not x.is_contiguous():
        return x.index_select(1, idx)
    out = torch.empty_like(x)
    if x.element_size() == 8:
        src, dst = x.view(torch.int64), out.view(torch.int64)
    else:
        src, dst = torch.view_as_real(x), torch.view_as_real(out)
    for row_in, row_out in zip(src, dst, strict=True):
        torch.index_select(row_in, 0, idx, out=row_out)
    return out


class _Permute(torch.autograd.Function):
    """``x[:, idx]`` for a permutation ``idx``, whose backward is a gather with the inverse (no scatter-add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, idx: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inv)
        return _permute_columns(x, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inv,) = ctx.saved_tensors
        return _permute_columns(grad.contiguous(), inv), None, None


def _kron(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Kronecker product ``mats[0] (x) mats[1] (x) ...`` of square matrices (first factor most significant)."""
    out = mats[0]
    for m in mats[1:]:
        d1, d2 = out.shape[0], m.shape[0]
        out = (out[:, None, :, None] * m[None, :, None, :]).reshape(d1 * d2, d1 * d2)
    return out


def _product_state(amps: torch.Tensor) -> torch.Tensor:
    """``(B, n, 2)`` single-qubit amplitudes -> ``(B, 2**n)`` product state (wire 0 most significant)."""
    n = amps.shape[1]
    if n == 1:
        return amps[:, 0]
    half = n // 2
    left, right = _product_state(amps[:, :half]), _product_state(amps[:, half:])
    return (left[:, :, None] * right[:, None, :]).reshape(amps.shape[0], -1)


def _apply_rotations(state: torch.Tensor, mats: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Apply ``mats[0] (x) ... (x) mats[m-1]`` (``(m, 2, 2)``) to ``state`` ``(B, 2**m)``.

    Each group of qubits gets one fused matrix ``F`` and one matmul that also rotates the qubit order:
    ``(B, D, R) -> (B, R, D)`` with the group leading; after all groups the order is the original one.
    """
    batch = state.shape[0]
    start = 0
    for size in groups:
        fused = _kron(list(mats[start : start + size]))
        start += size
        state = torch.matmul(state.view(batch, 2**size, -1).transpose(1, 2), fused.transpose(0, 1))
        state = state.reshape(batch, -1)
    return state


def _depolarize(rho: torch.Tensor, n: int, p: float) -> torch.Tensor:
    """Depolarizing channel of strength ``p`` on every wire of ``rho`` given as ``(B, 4**n)`` (row, column bits).

    Per wire, ``rho -> (1-p) rho + p/3 (X rho X + Y rho Y + Z rho Z) = (1 - 4p/3) rho + (2p/3) Tr_w(rho) (x) I``.
    """
    batch = rho.shape[0]
    eye = torch.eye(2, dtype=rho.dtype, device=rho.device)
    for w in range(n):
        a, c = 2**w, 2 ** (n - 1 - w)
        x = rho.view(batch, a, 2, c, a, 2, c)
        trace = x[:, :, 0, :, :, 0, :] + x[:, :, 1, :, :, 1, :]  # (B, a, c, a, c)
        mixed = trace[:, :, None, :, :, None, :] * eye[None, None, :, None, None, :, None]
        rho = ((1 - 4 * p / 3) * x + (2 * p / 3) * mixed).reshape(batch, -1)
    return rho



def peak_bytes(
    batch: int,
    n_qubits: int,
    n_layers: int,
    ansatz: str = "rzry",
    dtype: torch.dtype = torch.float32,
    *,
    density: bool = False,
    grad: bool = True,
    shots: int | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> int:
    """Estimated peak memory of :func:`expectations_torch` for one batch: a count of state-sized tensors times
    :func:`state_bytes` (statevector ``(B, 2**n)`` or, with ``density``, density matrix ``(B, 4**n)``).

    The count follows the algorithm. With ``grad`` (forward + backward, autograd enabled), the tensors saved
    for backward: in every layer after the first, the state the RZ phases multiply (rzry, strong) and the input
    of each of the ``ceil(n / group_size)`` fused-rotation GEMMs (density: ``ceil(2n / group_size)`` GEMMs);
    at the end the state the pending phases multiply (paper, strong), the state whose ``|.|^2`` is taken and
    the probabilities (half a state); plus the working set at the start of backward (2.5 states pure, 7 for the
    density matrix, whose depolarizing channel keeps ~5 copies in flight). Without ``grad``: the working set
    only (3 states pure, 7 density). ``shots`` adds the detached probabilities and the counts (one state).
    Checked against the measured resident-set growth in ``tests/test_quantum.py`` (12-14 qubits).
    """
    check_choice("ansatz", ansatz, ANSATZE)
    n_groups = -(-(2 * n_qubits if density else n_qubits) // group_size)
    if density:
        states = (n_layers - 1) * n_groups + 7.0 if grad else 7.0
    elif grad:
        per_layer = 1 + n_groups if ansatz != "paper" else 0
        final_phase = 1 if ansatz not in ("rzry", "rzry_separable") else 0
        states = (n_layers - 1) * per_layer + final_phase + 1.5 + 2.5
    else:
        states = 3.0
    if shots is not None:
        states += 1.0
    return math.ceil(states * state_bytes(batch, n_qubits, dtype, density))


def _check_memory(
    batch: int,
    n: int,
    n_layers: int,
    ansatz: str,
    dtype: torch.dtype,
    density: bool,
    grad: bool,
    shots: int | None,
    group_size: int,
    limit: int | None,
) -> None:
    """Raise ``MemoryError`` before allocating when :func:`peak_bytes` exceeds ``limit`` (``None``: no limit)."""
    if limit is None:
        return
    need = peak_bytes(batch, n, n_layers, ansatz, dtype, density=density, grad=grad, shots=shots,
                      group_size=group_size)
    if need > limit:
        kind = "density matrix" if density else "statevector"
        what = "forward + backward" if grad else "forward (no grad)"
        one = state_bytes(batch, n, dtype, density)
        raise MemoryError(
            f"the simulator's {what} of this batch needs about {readable_bytes(need)} "
            f"({need / one:.1f} copies of the {readable_bytes(one)} {kind}; B={batch}, n_qubits={n}, "
            f"n_layers={n_layers}, {dtype}), above memory_limit_bytes={limit} ({readable_bytes(limit)}); "
            f"reduce the batch or raise the limit: QuantumLayer(..., memory_limit_bytes=N) or "
            f"expectations_torch(..., memory_limit_bytes=N), None disables the check"
        )



def _phase_vector(angles: torch.Tensor, cdtype: torch.dtype) -> torch.Tensor:
    """Diagonal of ``RZ(a_0) (x) ... (x) RZ(a_{n-1})`` for angles ``(n,)``: ``(2**n,)`` complex."""
    c, s = torch.cos(angles / 2), torch.sin(angles / 2)
    diag = torch.stack([torch.complex(c, -s), torch.complex(c, s)], dim=-1).to(cdtype)  # (n, 2)
    return _product_state(diag[None])[0]


class _RotatingMatmul(torch.autograd.Function):
    """``x`` ``(B, D * R)`` -> ``(B, R * D)``: ``F`` ``(D, D)`` applied to the ``D`` leading index bits, which
    then move to the end (a cyclic rotation of the bit order). One batched GEMM each way, no copies."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        batch, dim = x.shape[0], fused.shape[0]
        x3 = x.view(batch, dim, -1)
        ctx.save_for_backward(x3, fused)
        return torch.bmm(x3.transpose(1, 2), fused.t().expand(batch, dim, dim)).view(batch, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x3, fused = ctx.saved_tensors
        batch, dim = x3.shape[0], fused.shape[0]
        g3 = grad.view(batch, -1, dim)  # (B, R, D)
        grad_x = torch.bmm(fused.t().expand(batch, dim, dim), g3.transpose(1, 2)).view(batch, -1)
        grad_f = torch.bmm(x3, g3).sum(0).t() if ctx.needs_input_grad[1] else None
        return grad_x, grad_f


def _apply_real_rotations(state: torch.Tensor, mats: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Apply real ``mats[0] (x) ... (x) mats[n-1]`` (``(n, 2, 2)``) to a complex state ``(B, 2**n)``.

    Real arithmetic on ``view_as_real`` ``(B, 2**n * 2)``: each group of qubits gets one fused real matrix
    applied by :class:`_RotatingMatmul`; the last group also carries the (re, im) bit (``F (x) I_2``), so after
    all groups the bit order, and the complex layout, are the original ones.
    """
    batch = state.shape[0]
    x = torch.view_as_real(state).reshape(batch, -1)
    start = 0
    for j, size in enumerate(groups):
        fused = _kron(list(mats[start : start + size]))
        start += size
        if j == len(groups) - 1:
            fused = _kron([fused, torch.eye(2, dtype=fused.dtype, device=fused.device)])
        x = _RotatingMatmul.apply(x, fused)
    return torch.view_as_complex(x.view(batch, -1, 2))


def _state_before_last_entangler(
    ansatz: str, inputs: torch.Tensor, weights: torch.Tensor, group_size: int
) -> torch.Tensor:
    """Statevector ``(B, 2**n)`` of the circuit without its last entangler (which the measurement absorbs).

    Layer 0's rotations act on the encoded product state. In later layers each RZ column is a phase vector
    (diagonal), carried through the entangler's permutation and multiplied into the state only before a
    real RY column (or the measurement); RY columns are applied with real arithmetic.
    """
    batch, n = inputs.shape
    n_layers = weights.shape[0]
    cdtype = _complex_dtype(inputs.dtype)
    plan = _plan(ansatz, n, n_layers, inputs.device, inputs.dtype)
    half = inputs / 2
    encoded = torch.stack([torch.cos(half), torch.sin(half)], dim=-1).to(cdtype)  # RY(x)|0>, real, (B, n, 2)
    amps = torch.einsum("nij,bnj->bni", _rotations(ansatz, weights[:1], cdtype)[0], encoded)
    state = _product_state(amps)
    pre, mid, post = _rotation_angles(ansatz, weights)
    groups = _split_groups(n, group_size)
    pending: torch.Tensor | None = None  # diagonal not yet multiplied into the state, (2**n,)
    for layer in range(1, n_layers):
        idx = plan.perms[layer - 1]
        state = _Permute.apply(state, idx, plan.inv_perms[layer - 1])
        phase = _phase_vector(pre[layer], cdtype)
        pending = phase if pending is None else pending[idx] * phase  # D P = P D[idx]
        if mid is not None:
            state = state * pending
            pending = None
            state = _apply_real_rotations(state, _ry(mid[layer], cdtype).real, groups)
        if post is not None:
            pending = _phase_vector(post[layer], cdtype)
    if pending is not None:
        state = state * pending
    return state


def statevector_torch(
    ansatz: str, inputs: torch.Tensor, weights: torch.Tensor, *, group_size: int = DEFAULT_GROUP_SIZE
) -> torch.Tensor:
    """The circuit's output state ``(B, 2**n)`` (complex; wire 0 the most significant bit) for inputs ``(B, n)``.

    Same simulator as :func:`expectations_torch` (which never applies the last entangler to the state).
    """
    _check_inputs(inputs, weights, ansatz)
    grad = torch.is_grad_enabled() and (inputs.requires_grad or weights.requires_grad)
    _check_memory(inputs.shape[0], inputs.shape[1], weights.shape[0], ansatz, inputs.dtype, False, grad, None,
                  group_size, DEFAULT_MEMORY_LIMIT_BYTES)
    plan = _plan(ansatz, inputs.shape[1], weights.shape[0], inputs.device, inputs.dtype)
    state = _state_before_last_entangler(ansatz, inputs, weights.to(inputs.dtype), group_size)
    return _Permute.apply(state, plan.perms[-1], plan.inv_perms[-1])


def _probabilities_mixed(
    ansatz: str, inputs: torch.Tensor, weights: torch.Tensor, depolarizing: float, group_size: int
) -> torch.Tensor:
    """Z-basis probabilities of the noisy circuit, ``(B, 2**n)`` (use with ``_Plan.measure``)."""
    batch, n = inputs.shape
    cdtype = _complex_dtype(inputs.dtype)
    perms, inv_perms, diag_index = _plan(ansatz, n, weights.shape[0], inputs.device, inputs.dtype).density
    rot = _rotations(ansatz, weights, cdtype)
    half = inputs / 2
    encoded = torch.stack([torch.cos(half), torch.sin(half)], dim=-1).to(cdtype)
    amps = torch.einsum("nij,bnj->bni", rot[0], encoded)
    # vec(rho) = psi (x) conj(psi): a product state of 2n "qubits" (row bits, then column bits)
    rho = _product_state(torch.cat([amps, amps.conj()], dim=1))
    groups = _split_groups(2 * n, group_size)
    for layer in range(weights.shape[0]):
        if layer > 0:
            rho = _apply_rotations(rho, torch.cat([rot[layer], rot[layer].conj()], dim=0), groups)
        rho = _Permute.apply(rho, perms[layer], inv_perms[layer])
        rho = _depolarize(rho, n, depolarizing)
    return rho.index_select(1, diag_index).real


def expectations_torch(
    ansatz: str,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    *,
    depolarizing: float = 0.0,
    shots: int | None = None,
    generator: torch.Generator | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
) -> torch.Tensor:
    """``<Z_i>`` of the circuit, ``(B, n)``, for input angles ``(B, n)`` and weights :func:`weight_shape`.

    Computed in ``inputs.dtype`` (float32 or float64, complex64 or complex128 amplitudes); differentiable
    in ``inputs`` and ``weights``. With ``shots``, the forward value is the mean of ``shots`` samples of the
    Z-basis measurement drawn with ``generator`` (all wires from the same samples, as on hardware), and the
    gradient is that of the exact expectation (a straight-through estimator, i.e. the infinite-shot gradient).
    Raises ``MemoryError`` before allocating when the estimated peak memory of what will run (forward only under
    ``torch.no_grad``, else forward + backward; see :func:`peak_bytes`) exceeds ``memory_limit_bytes``.
    """
    _check_inputs(inputs, weights, ansatz)
    if not 0.0 <= depolarizing <= 1.0:
        raise ValueError(f"depolarizing must lie in [0, 1], got {depolarizing}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    batch, n = inputs.shape
    density = depolarizing > 0.0
    grad = torch.is_grad_enabled() and (inputs.requires_grad or weights.requires_grad)
    _check_memory(batch, n, weights.shape[0], ansatz, inputs.dtype, density, grad, shots, group_size,
                  memory_limit_bytes)
    weights = weights.to(inputs.dtype)
    plan = _plan(ansatz, n, weights.shape[0], inputs.device, inputs.dtype)
    if density:
        probs = _probabilities_mixed(ansatz, inputs, weights, depolarizing, group_size)
        measure = plan.measure
    else:
        state = _state_before_last_entangler(ansatz, inputs, weights, group_size)
        probs = state.real.square() + state.imag.square()
        measure = plan.measure_folded
    exact = probs @ measure
    if shots is None:
        return exact
    if generator is None:
        raise ValueError("shots need a torch.Generator for the sampled expectation values")
    with torch.no_grad():
        p = probs.detach().clamp_min(0).to(generator.device)
        samples = torch.multinomial(p, shots, replacement=True, generator=generator)  # (B, shots)
        counts = torch.zeros_like(p).scatter_add_(1, samples, torch.ones_like(samples, dtype=p.dtype))
        sampled = (counts.to(probs.device) @ measure) / shots
    return straight_through(exact, sampled)


def straight_through(exact: torch.Tensor, sampled: torch.Tensor) -> torch.Tensor:
    """The value of ``sampled`` (shot estimates) with the gradient of ``exact`` (the infinite-shot gradient)."""
    return exact + (sampled.to(exact.dtype) - exact).detach()


def readable_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``"3.5 GiB"`` or ``"12.0 TiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    k = 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.1f} {units[k]}" if k < len(units) - 1 or n < 1e4 else f"{n:.3g} {units[k]}"
