"""Exact matrix-product-state simulator of the quantum bottleneck (backend ``"mps"``), batched over input rows.

The state of ``n`` qubits is kept as ``n`` site tensors ``A_k[l, s, r]`` (left bond, physical bit, right bond),
stacked for the whole batch as one tensor ``(B, n, D, 2, D)`` zero-padded to the step's widest bond ``D``; the
bond between wires ``k-1`` and ``k`` is called cut ``k``. Nothing is ever truncated: the simulation is exact.

Why the bonds stay small. The encoding and every rotation column are products of single-qubit gates: they act on
each site alone and leave the bonds unchanged. Every entangler is a circuit of CNOTs, i.e. a linear reversible
map ``b -> M b`` of the basis bits over GF(2) (:func:`entangler_map`). Across cut ``k`` it has to carry the
left bits' contribution to the right outputs, ``u = M[k:, :k] b[:k]``, and the right bits' contribution to the
left outputs, ``v = M[:k, k:] b[k:]``: it is an MPO whose bond at cut ``k`` runs over the values ``(u, v)``,
``m_k = 2 ** (rank M[k:, :k] + rank M[:k, k:])`` of them, with 0/1 tensors (:func:`_mpo_tensors`). No
decomposition is involved; the bond of the state is multiplied by ``m_k``:

* the CNOT chain ``(i, i+1)`` of "paper" and "rzry" is ``b -> (b_0, b_0^b_1, b_0^b_1^b_2, ...)``: ``m_k = 2`` at
  every cut (the running parity), so ``L`` layers give bond ``2**L``;
* the CNOT ring of range ``r`` of "strong" (``(i, i+r mod n)``, in order) crosses each cut both ways:
  ``m_k`` is computed from the ranks, e.g. ``4, 16, 64`` at the middle cut for ``r = 1, 2, 3`` (``n >= 8``), so
  three layers need up to ``2**12``: MPS is not the cheap backend for "strong" (see
  :func:`qdiff_lib.quantum.select_backend`);
* "rzry_separable" has no entangler: bond 1.

A state never needs more than ``min(2**k, 2**(n-k))`` at cut ``k``. Where a bond would exceed it, the sites on the short
side are contracted, state and MPO together, into one block (``(B, 2**K, D, m)`` at the left edge), which is multiplied
into the next site, and given back as fixed copy tensors (``delta`` isometries, bond ``2**j``): an exact, SVD-free
compression (:func:`_apply_mpo`). The bond at cut ``k`` after layer ``l`` is therefore exactly
``d_k = min(d_k' * m_k, 2**k, 2**(n-k))`` (:func:`mps_bond_dims`); for "paper" and "rzry" that is
``min(2**L, 2**k, 2**(n-k))``, the Schmidt rank ``tests/test_mps.py`` measures.

Measurement. ``<Z_i>`` for all wires come from left and right environments (``(B, D, D)`` each, one sequential
sweep per side of two batched matrix products per site) and one batched contraction over all sites. The last
CNOT chain of "paper" and "rzry" is never applied: it maps ``Z_i`` to the string ``Z_0 Z_1 ... Z_i``, whose
expectations one left sweep with ``Z`` on every site gives (as the statevector backend folds the last permutation
into its measurement), so ``L`` layers run with bond ``2**(L-1)``.

Cost: about ``B n (4 L (D m)^2 + 12 D^3)`` complex multiply-adds forward (:func:`mps_macs`), twice that backward, and
``~10 n`` small batched operations: linear in ``n`` for a fixed bond. Shots are drawn exactly (sequential conditional
sampling of all wires of a row from the same samples, as on hardware); the depolarizing channel needs a density matrix:
use backend ``"torch"``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qdiff_lib.circuits import _check_inputs, _complex_dtype, _rotations, entangler_pairs
from qdiff_lib.statevector import DEFAULT_MEMORY_LIMIT_BYTES, readable_bytes, straight_through

__all__ = [
    "entangler_map",
    "mps_bond_dims",
    "mps_macs",
    "mps_peak_bytes",
    "mps_state",
    "mps_to_statevector",
    "schmidt_coefficients",
    "entanglement_entropy",
    "expectations_mps",
]

#: Ansätze whose entangler is the CNOT chain (folded into the measurement as ``Z_0 ... Z_i`` strings).
_CHAIN_ANSATZE = ("paper", "rzry")


# --------------------------------------------------------------------------------------------------------------
# CNOT entanglers as GF(2) maps and their MPOs
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def entangler_map(ansatz: str, layer: int, n_qubits: int) -> tuple[int, ...]:
    """The entangler of layer ``layer`` as the GF(2) matrix ``M`` of ``b -> M b`` on basis bits, given by its
    columns as bit masks (bit ``i`` of entry ``j`` is ``M[i, j]``)."""
    cols = [1 << j for j in range(n_qubits)]
    for control, target in entangler_pairs(ansatz, layer, n_qubits):  # row target += row control
        cols = [c ^ (((c >> control) & 1) << target) for c in cols]
    return tuple(cols)


def _basis(vectors) -> list[int]:
    """A basis over GF(2) of the span of bit-mask vectors (Gaussian elimination on leading bits)."""
    pivots: dict[int, int] = {}
    for v in vectors:
        while v:
            lead = v.bit_length() - 1
            if lead not in pivots:
                pivots[lead] = v
                break
            v ^= pivots[lead]
    return list(pivots.values())


def _cut_bases(cols: tuple[int, ...], k: int) -> tuple[list[int], list[int]]:
    """Bases of the values crossing cut ``k``: ``u = M[k:, :k] b[:k]`` and ``v = M[:k, k:] b[k:]``."""
    low = (1 << k) - 1
    return _basis(c & ~low for c in cols[:k]), _basis(c & low for c in cols[k:])


def _mpo_bonds(cols: tuple[int, ...]) -> tuple[int, ...]:
    """The MPO's bond at every cut ``0..n``: ``2 ** (rank M[k:, :k] + rank M[:k, k:])``."""
    return tuple(2 ** sum(map(len, _cut_bases(cols, k))) for k in range(len(cols) + 1))


def _span(basis: list[int]) -> dict[int, int]:
    """Every element of the span, numbered (0 first)."""
    values = [0]
    for b in basis:
        values += [x ^ b for x in values]
    return {v: i for i, v in enumerate(values)}


@functools.lru_cache(maxsize=64)
def _mpo_tensors(cols: tuple[int, ...]) -> torch.Tensor:
    """The MPO of ``b -> M b``, ``(n, m, 2, 2, m)`` 0/1 (float64), ``W_k[x, out, in, y]``, zero-padded to the widest
    bond ``m``; bond index ``iu * |V| + iv`` for the values ``(u, v)`` at the cut, index 0 the boundary."""
    n = len(cols)
    spans = [tuple(map(_span, _cut_bases(cols, k))) for k in range(n + 1)]
    width = max(len(u) * len(v) for u, v in spans)
    w = torch.zeros(n, width, 2, 2, width, dtype=torch.float64)
    for k, col in enumerate(cols):
        (u_left, v_left), (u_right, v_right) = spans[k], spans[k + 1]
        above, below = ~((1 << (k + 1)) - 1), (1 << k) - 1
        for u, iu in u_left.items():
            for bit in (0, 1):
                c = col if bit else 0
                for v2, iv2 in v_right.items():
                    out = ((u ^ c ^ v2) >> k) & 1
                    x = iu * len(v_left) + v_left[(c ^ v2) & below]
                    y = u_right[(u ^ c) & above] * len(v_right) + iv2
                    w[k, x, out, bit, y] = 1.0
    return w


@functools.lru_cache(maxsize=64)
def _mpo(cols: tuple[int, ...], device: torch.device, cdtype: torch.dtype) -> torch.Tensor:
    return _mpo_tensors(cols).to(device=device, dtype=cdtype)


# --------------------------------------------------------------------------------------------------------------
# The plan: bonds, edge compressions and padded widths of every step, from the circuit alone
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    """One entangler applied as an MPO to a state of padded bond ``width_in``: sites ``0..left-1`` and
    ``right..n-1`` (none: ``left = 0``, ``right = n``) are contracted into edge blocks (:func:`_apply_mpo`)."""

    layer: int
    cols: tuple[int, ...]
    width_in: int
    mpo_width: int
    left: int
    right: int
    width_out: int


@dataclass(frozen=True)
class _Plan:
    n: int
    steps: tuple[_Step, ...]
    bonds: tuple[int, ...]  # exact bond dimension at cuts 0..n of the simulated state
    width: int  # padded bond of the final state


def _edges(grown: list[int], n: int) -> tuple[int, int]:
    """Edge regions for bonds ``grown`` at cuts ``0..n``: ``left`` is the last cut above ``2**k`` (0: none),
    ``right`` the first cut above ``2**(n-k)`` once the left edge is compressed (``n``: none). Regions that would
    overlap become the split at the middle site ``c``: bonds ``2**k`` up to ``c``, ``2**(n-k)`` after it."""
    left = max((k for k in range(1, n) if grown[k] > 1 << k), default=0)
    right = min((k for k in range(1, n) if (1 << k if k <= left else grown[k]) > 1 << (n - k)), default=n)
    if left >= right:
        left = (n - 1) // 2
        right = left + 1
    return left, right


@functools.lru_cache(maxsize=128)
def _plan(ansatz: str, n: int, n_layers: int, fold: bool) -> _Plan:
    """Bonds and widths of every MPO step, from the circuit alone (``fold``: the last entangler is not applied)."""
    bonds, width, steps = [1] * (n + 1), 1, []
    for layer in range(n_layers - 1 if fold else n_layers):
        cols = entangler_map(ansatz, layer, n)
        m = _mpo_bonds(cols)
        if max(m) == 1:  # no entangler (or n == 1): M is the identity
            continue
        grown = [b * mk for b, mk in zip(bonds, m, strict=True)]
        left, right = _edges(grown, n)
        bonds = [1 << k if k <= left else 1 << (n - k) if k >= right else g for k, g in enumerate(grown)]
        bonds[0] = bonds[n] = 1
        bulk = width * max(m)
        widths = []  # (left, right) padded bond of every site after the step
        for j in range(n):
            if j < left or j >= right:  # copy tensors
                widths.append((1 << j, 2 << j) if j < left else (1 << (n - j), 1 << (n - j - 1)))
            else:  # bulk, or receiving an edge block
                widths.append((1 << left if left and j == left else bulk,
                               1 << (n - right) if right < n and j == right - 1 else bulk))
        widths[0], widths[-1] = (1, widths[0][1]), (widths[-1][0], 1)  # boundaries
        steps.append(_Step(layer, cols, width, max(m), left, right, max(max(w) for w in widths)))
        width = steps[-1].width_out
    return _Plan(n, tuple(steps), tuple(bonds), width)


def _folds(ansatz: str, n: int) -> bool:
    return ansatz in _CHAIN_ANSATZE and n > 1


def mps_bond_dims(ansatz: str, n_qubits: int, n_layers: int) -> tuple[int, ...]:
    """Bond dimension of the circuit's output state at the cuts between wires ``k-1`` and ``k``, ``k = 1..n-1``,
    as :func:`mps_state` builds it: exact, an upper bound of the Schmidt rank there (equal to it for generic
    inputs and weights of "paper" and "rzry": ``min(2**L, 2**k, 2**(n-k))``; 1 for "rzry_separable")."""
    return _plan(ansatz, n_qubits, n_layers, False).bonds[1:-1]


def _regions(step: _Step, n: int) -> tuple[int, list[int]]:
    """Sites of the bulk contraction, and the wires already in the edge block at each edge site (with the
    receiving sites) of one MPO step."""
    bulk = (step.right - 1 if step.right < n else n) - (step.left + 1 if step.left else 0)
    edges = [*range(step.left + 1 if step.left else 0), *range(n - step.right + 1 if step.right < n else 0)]
    return max(bulk, 0), edges


def _step_elements(step: _Step, n: int) -> tuple[int, int]:
    """Complex elements per batch row that one MPO step allocates: (all its tensors, the largest one)."""
    d, m = step.width_in, step.mpo_width
    if not step.left and step.right == n:  # one batched contraction and its reshaped copy
        return 4 * n * (d * m) ** 2, 2 * n * (d * m) ** 2
    bulk, edges = _regions(step, n)
    tensors = [t for j in edges for t in ((1 << j) * 2 * d * m, (2 << j) * d * m)]  # the two einsums per site
    tensors += [4 * bulk * (d * m) ** 2, 4 * n * step.width_out**2]  # bulk; padded sites and their stack
    return sum(tensors), max(tensors)


def mps_macs(ansatz: str, n_qubits: int, n_layers: int) -> int:
    """Complex multiply-adds per batch row of :func:`expectations_mps`'s forward pass (backward: about twice):
    the MPO steps (bulk sites, edge blocks) and ``12 D^3`` per site for the environments and the measurement."""
    plan = _plan(ansatz, n_qubits, n_layers, _folds(ansatz, n_qubits))
    total = 12 * n_qubits * plan.width**3
    for step in plan.steps:
        d, m = step.width_in, step.mpo_width
        bulk, edges = _regions(step, n_qubits)
        total += 4 * bulk * (d * m) ** 2 + sum((2 << j) * d * m * (d + 2 * m) for j in edges)
    return total


def mps_peak_bytes(
    batch: int,
    n_qubits: int,
    n_layers: int,
    ansatz: str = "rzry",
    dtype: torch.dtype = torch.float32,
    *,
    grad: bool = True,
    shots: int | None = None,
) -> int:
    """Estimated peak memory of :func:`expectations_mps` for one batch, from the plan's padded bonds ``D``.

    With ``grad``, everything saved for backward: every MPO step's tensors (bulk sites ``2 (D m)^2`` each, the edge
    blocks and the restacked state) and, for the measurement, ``12 D^2`` per site (environments, the products saved for
    backward, the batched contraction). Without ``grad``, the larger of 2.5 times the largest tensor of a step (with its
    inputs and intermediates) and the measurement's ``8 D^2`` per site. ``shots`` adds the sampler's vectors. Measured
    resident-set growth (batch 64, float32, ``tests/test_mps.py``): the estimate is 1.0 to 1.4 times it, e.g. 433 MiB
    against 367 MiB for "rzry", 40 qubits, 6 layers (bond 32), 2016 against 1478 MiB for "strong", 12 qubits, 3 layers
    (bond 64).
    """
    itemsize = torch.empty((), dtype=_complex_dtype(dtype)).element_size()
    plan = _plan(ansatz, n_qubits, n_layers, _folds(ansatz, n_qubits))
    n, d = n_qubits, plan.width
    per_step = [_step_elements(s, n) for s in plan.steps]
    if grad:
        elements = 4 * n + sum(total for total, _ in per_step) + 12 * n * d * d
    else:
        elements = max([5 * largest // 2 for _, largest in per_step] + [8 * n * d * d])
    if shots is not None:
        elements += 6 * shots * d + 2 * n * shots
    return math.ceil(batch * elements * itemsize)


def _check_memory(batch: int, n: int, n_layers: int, ansatz: str, dtype: torch.dtype, grad: bool,
                  shots: int | None, limit: int | None) -> None:
    """Raise ``MemoryError`` before allocating when :func:`mps_peak_bytes` exceeds ``limit`` (``None``: no limit)."""
    if limit is None:
        return
    need = mps_peak_bytes(batch, n, n_layers, ansatz, dtype, grad=grad, shots=shots)
    if need > limit:
        what = "forward + backward" if grad else "forward (no grad)"
        bond = max(_plan(ansatz, n, n_layers, _folds(ansatz, n)).bonds)
        raise MemoryError(
            f"the MPS simulator's {what} of this batch needs about {readable_bytes(need)} (bond dimension up to "
            f"{bond}; B={batch}, n_qubits={n}, n_layers={n_layers}, ansatz={ansatz!r}, {dtype}), above "
            f"memory_limit_bytes={limit} ({readable_bytes(limit)}); reduce the batch or the layers, or raise the "
            f"limit: QuantumLayer(..., memory_limit_bytes=N) or expectations_mps(..., memory_limit_bytes=N), "
            f"None disables the check"
        )


# --------------------------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _copy_tensor(bits: int, left: bool, device: torch.device, cdtype: torch.dtype) -> torch.Tensor:
    """Copy (delta) tensor of a site in an edge block, ``bits`` wires beyond it on the edge side: left edge
    ``C[a, s, 2a + s]`` ``(2**bits, 2, 2**(bits+1))``, right edge ``C[s 2**bits + a, s, a]``."""
    a = torch.arange(1 << bits)
    if left:
        c = torch.zeros(1 << bits, 2, 2 << bits, dtype=cdtype)
        for s in (0, 1):
            c[a, s, 2 * a + s] = 1
    else:
        c = torch.zeros(2 << bits, 2, 1 << bits, dtype=cdtype)
        for s in (0, 1):
            c[(s << bits) + a, s, a] = 1
    return c.to(device)


def _left_site(block: torch.Tensor, site: torch.Tensor, mpo: torch.Tensor) -> torch.Tensor:
    """Block ``(B, a, D, m)`` (wires, state bond, MPO bond) times a site ``(B, D, 2, D)`` and its MPO tensor
    ``(m, 2, 2, m)``: ``(B, a, 2, D, m)``."""
    return torch.einsum("baxtr,xoty->baory", torch.einsum("balx,bltr->baxtr", block, site), mpo)


def _right_site(block: torch.Tensor, site: torch.Tensor, mpo: torch.Tensor) -> torch.Tensor:
    """A site and its MPO tensor times a block ``(B, D, m, a)`` on its right: ``(B, D, m, 2, a)``."""
    return torch.einsum("bltya,xoty->blxoa", torch.einsum("bltr,brya->bltya", site, block), mpo)


def _apply_mpo(state: torch.Tensor, mpo: torch.Tensor, step: _Step) -> torch.Tensor:
    """Apply the stacked MPO ``(n, m, 2, 2, m)`` to ``state`` ``(B, n, D, 2, D)``, exactly.

    The bulk gets one batched contraction (bond ``D m``). The edge regions ``0..left-1`` and ``right..n-1`` are
    contracted, state and MPO site by site, into blocks ``(B, 2**left, D, m)`` and ``(B, D, m, 2**(n-right))``,
    multiplied into the receiving sites ``left`` and ``right - 1``, and replaced by copy tensors: bonds
    ``2**k`` there, never more than a state of those wires needs. No decomposition, nothing dropped.
    """
    batch, n, d = state.shape[:3]
    m = mpo.shape[1]
    if not step.left and step.right == n:
        return torch.einsum("nxoty,bnltr->bnlxory", mpo, state).reshape(batch, n, d * m, 2, d * m)
    sites: list[torch.Tensor] = []
    given = state.unbind(1)  # one gradient op for all site reads (a select's backward zero-fills the state)
    ones = torch.ones(batch, 1, 1, 1, dtype=state.dtype, device=state.device)
    block = ones
    for j in range(step.left):  # left block, (B, 2**(j+1), D, m); the boundary is index 0 of state and MPO
        bond, mpo_bond = (d, m) if j else (1, 1)
        block = _left_site(block, given[j][:, :bond], mpo[j, :mpo_bond]).reshape(batch, 2 << j, d, m)
        sites.append(_copy_tensor(j, True, state.device, state.dtype).expand(batch, -1, -1, -1))
    right_block = ones
    for j in range(n - 1, step.right - 1, -1):  # right block, (B, D, m, 2**(n-j))
        bond, mpo_bond = (1, 1) if j == n - 1 else (d, m)
        right_block = _right_site(right_block, given[j][..., :bond], mpo[j, ..., :mpo_bond])
        right_block = right_block.reshape(batch, d, m, -1)
    shared = step.left and step.right < n and step.left == step.right - 1
    lo = step.left + 1 if step.left else 0
    hi = step.right - 1 if step.right < n else n
    if step.left:
        received = _left_site(block, given[step.left], mpo[step.left])  # (B, 2**left, 2, D, m)
        if shared:
            sites.append(torch.einsum("baory,bryc->baoc", received, right_block))
        else:
            sites.append(received.reshape(batch, 1 << step.left, 2, d * m))
    if lo < hi:
        bulk = torch.einsum("nxoty,bnltr->bnlxory", mpo[lo:hi], state[:, lo:hi])
        sites += bulk.reshape(batch, hi - lo, d * m, 2, d * m).unbind(1)
    if step.right < n:
        if not shared:
            site = _right_site(right_block, given[step.right - 1], mpo[step.right - 1])
            sites.append(site.reshape(batch, d * m, 2, -1))
        sites += [_copy_tensor(n - j - 1, False, state.device, state.dtype).expand(batch, -1, -1, -1)
                  for j in range(step.right, n)]
    sites[0], sites[-1] = sites[0][:, :1], sites[-1][..., :1]  # the boundaries (index 0) are not bonds
    width = step.width_out
    return torch.stack([F.pad(s, (0, width - s.shape[3], 0, 0, 0, width - s.shape[1])) for s in sites], 1)


def _simulate(ansatz: str, inputs: torch.Tensor, weights: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """The state ``(B, n, D, 2, D)`` after every layer (the entanglers of ``plan.steps``)."""
    cdtype = _complex_dtype(inputs.dtype)
    rot = _rotations(ansatz, weights, cdtype)  # (L, n, 2, 2)
    half = inputs / 2
    encoded = torch.stack([torch.cos(half), torch.sin(half)], dim=-1).to(cdtype)  # RY(x)|0>, (B, n, 2)
    state = torch.einsum("nst,bnt->bns", rot[0], encoded)[:, :, None, :, None]
    steps = {s.layer: s for s in plan.steps}
    pending = None  # rotations of layers without an MPO, not yet applied, (n, 2, 2)
    for layer in range(weights.shape[0]):
        if layer > 0:
            pending = rot[layer] if pending is None else rot[layer] @ pending
        if layer not in steps:
            continue
        mpo = _mpo(steps[layer].cols, inputs.device, cdtype)
        if pending is not None:  # the rotations act before the entangler: W[x, o, t, y] U[t, u]
            mpo = torch.einsum("nxoty,ntu->nxouy", mpo, pending)
            pending = None
        state = _apply_mpo(state, mpo, steps[layer])
    if pending is not None:
        state = torch.einsum("nst,bnltr->bnlsr", pending, state)
    return state


def _environments(state: torch.Tensor, string: bool) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Left environments ``L_0..L_{n-1}`` (or, if ``string``, ``G_0..G_n`` with ``Z`` on every site) and right
    ones ``[None, R_1..R_n]``, each ``(B, D, D)``: ``L_{k+1} = sum_s A_s^H L_k A_s`` (``G``: ``z_s`` in the sum),
    ``R_k = sum_s A_s R_{k+1} A_s^H``; ``L_0 = R_n`` is the boundary (index 0), and ``<psi|psi> = Tr(L_k R_k)``."""
    batch, n, d = state.shape[:3]
    rows = state.reshape(batch, n, 2 * d, d).unbind(1)  # A[(l, s), r]; unbind: one gradient op, not n selects
    cols = state.reshape(batch, n, d, 2 * d).unbind(1)  # A[l, (s, r)]
    boundary = torch.zeros(d, d, dtype=state.dtype, device=state.device)
    boundary[0, 0] = 1
    boundary = boundary.expand(batch, d, d)
    signs = torch.tensor([1.0, -1.0], dtype=state.real.dtype, device=state.device).repeat(d)[:, None]
    lefts, rights = [boundary], [boundary]
    for k in range(n if string else n - 1):  # the plain measurement needs L_0..L_{n-1}, the strings G_1..G_n
        t = (lefts[-1] @ cols[k]).reshape(batch, 2 * d, d)
        lefts.append(rows[k].mH @ (t * signs if string else t))
    for k in range(n - 1, 0, -1):
        rights.append((rows[k] @ rights[-1]).reshape(batch, d, 2 * d) @ cols[k].mH)
    return lefts, [None, *rights[::-1]]


def _expectations(state: torch.Tensor, string: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``<Z_i>`` (or ``<Z_0 ... Z_i>`` if ``string``), ``(B, n)`` real, and the right environments."""
    batch, n, d = state.shape[:3]
    lefts, rights = _environments(state, string)
    right = torch.stack(rights[1:], 1)  # R_{i+1}, (B, n, D, D)
    if string:
        left = torch.stack(lefts[1:], 1)
    else:  # X_i = sum_s z_s A_s R_{i+1} A_s^H
        left = torch.stack(lefts, 1)
        signs = torch.tensor([1.0, -1.0], dtype=state.real.dtype, device=state.device)[:, None]
        u = (state.reshape(batch, n, 2 * d, d) @ right).reshape(batch, n, d, 2, d) * signs
        right = u.reshape(batch, n, d, 2 * d) @ state.reshape(batch, n, d, 2 * d).mH
    return (left * right.transpose(-1, -2)).sum((-2, -1)).real, rights


@torch.no_grad()
def _sample(state: torch.Tensor, rights: list[torch.Tensor], shots: int, generator: torch.Generator) -> torch.Tensor:
    """Bits ``(B, shots, n)`` drawn from the MPS, wire by wire from the exact conditional probabilities."""
    batch, n, d = state.shape[:3]
    uniform = torch.rand(batch, shots, n, generator=generator, device=generator.device).to(state.device)
    phi = torch.zeros(batch, 1, shots, d, dtype=state.dtype, device=state.device)
    phi[..., 0] = 1
    bits = torch.empty(batch, shots, n, dtype=torch.int64, device=state.device)
    for k in range(n):
        c = (phi @ state[:, k].reshape(batch, 1, d, 2 * d)).reshape(batch, shots, 2, d)
        p = (c.conj() * (c @ rights[k + 1][:, None])).sum(-1).real.clamp_min(0)  # (B, shots, 2)
        one = uniform[..., k] * p.sum(-1) < p[..., 1]
        bits[..., k] = one.long()
        chosen = torch.where(one[..., None], c[:, :, 1], c[:, :, 0])
        phi = (chosen / chosen.norm(dim=-1, keepdim=True).clamp_min(1e-30))[:, None]
    return bits


def mps_state(ansatz: str, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The circuit's output state as an MPS ``(B, n, D, 2, D)`` (every entangler applied; zero-padded bonds,
    boundary index 0 on both ends; bonds as :func:`mps_bond_dims`). Differentiable."""
    _check_inputs(inputs, weights, ansatz)
    plan = _plan(ansatz, inputs.shape[1], weights.shape[0], False)
    return _simulate(ansatz, inputs, weights.to(inputs.dtype), plan)


def mps_to_statevector(state: torch.Tensor) -> torch.Tensor:
    """Contract an MPS ``(B, n, D, 2, D)`` to its statevector ``(B, 2**n)`` (wire 0 the most significant bit)."""
    batch, n, d = state.shape[:3]
    psi = state[:, 0, :1].reshape(batch, 2, d)
    for k in range(1, n):
        psi = (psi @ state[:, k].reshape(batch, d, 2 * d)).reshape(batch, -1, d)
    return psi[..., 0]


def schmidt_coefficients(state: torch.Tensor) -> list[torch.Tensor]:
    """The Schmidt coefficients of one MPS ``(n, D, 2, D)`` (as :func:`mps_state` returns, one row) at every cut.

    Element ``k`` (``k = 0 .. n-2``) holds the coefficients, descending, of the cut between wires ``k`` and
    ``k + 1``. A QR sweep brings the MPS to left-canonical form, then an SVD sweep from the right reads them off
    (Schollwöck 2011, section 4.4); the state need not be normalised (the coefficients are divided by its norm).
    """
    if state.dim() != 4 or state.shape[2] != 2:
        raise ValueError(f"state: expected one MPS (n, D, 2, D), got shape {tuple(state.shape)}")
    n = state.shape[0]
    sites = [state[k] for k in range(n)]
    sites[0], sites[-1] = sites[0][:1], sites[-1][..., :1]  # the boundary bonds carry index 0 only
    for k in range(n - 1):
        left, _, right = sites[k].shape
        q, r = torch.linalg.qr(sites[k].reshape(2 * left, right))
        sites[k], sites[k + 1] = q.reshape(left, 2, -1), torch.einsum("ab,bsc->asc", r, sites[k + 1])
    out = []
    for k in range(n - 1, 0, -1):
        left, _, right = sites[k].shape
        u, s, vh = torch.linalg.svd(sites[k].reshape(left, 2 * right), full_matrices=False)
        out.append(s)
        sites[k], sites[k - 1] = vh.reshape(-1, 2, right), torch.einsum("asb,bc->asc", sites[k - 1], u * s)
    norm = torch.linalg.vector_norm(out[-1]) if out else torch.ones(())
    return [s / norm for s in out[::-1]]


def entanglement_entropy(state: torch.Tensor) -> torch.Tensor:
    """Von Neumann entropy in bits, ``-sum p log2 p`` with ``p`` the squared Schmidt coefficients, of one MPS
    ``(n, D, 2, D)`` at each of its ``n - 1`` cuts. A bond of dimension ``D`` bounds it by ``log2 D`` bits."""
    values = []
    for s in schmidt_coefficients(state):
        p = s.real**2 if s.is_complex() else s**2
        p = p[p > 0]
        values.append(-(p * torch.log2(p)).sum())
    return torch.stack(values) if values else torch.zeros(0)


def expectations_mps(
    ansatz: str,
    inputs: torch.Tensor,
    weights: torch.Tensor,
    *,
    shots: int | None = None,
    generator: torch.Generator | None = None,
    depolarizing: float = 0.0,
    memory_limit_bytes: int | None = DEFAULT_MEMORY_LIMIT_BYTES,
) -> torch.Tensor:
    """``<Z_i>`` of the circuit, ``(B, n)``, for input angles ``(B, n)`` and weights :func:`weight_shape`.

    Same contract as :func:`qdiff_lib.statevector.expectations_torch`: computed in ``inputs.dtype`` (float32 or
    float64), differentiable in ``inputs`` and ``weights``; with ``shots``, the mean of ``shots`` samples of the
    Z-basis measurement drawn with ``generator`` (exact joint samples of all wires) with the exact gradient
    (straight-through). Raises ``MemoryError`` before allocating when :func:`mps_peak_bytes` exceeds
    ``memory_limit_bytes``, and ``ValueError`` for ``depolarizing > 0`` (pure states only).
    """
    _check_inputs(inputs, weights, ansatz)
    if depolarizing != 0.0:
        raise ValueError(f"the 'mps' backend simulates pure states only, got depolarizing={depolarizing}; the "
                         f"depolarizing channel needs backend 'torch' (density matrix) or 'pennylane' "
                         f"(default.mixed); backend 'auto' picks 'torch' when depolarizing > 0")
    if shots is not None and generator is None:
        raise ValueError("shots need a torch.Generator for the sampled expectation values")
    batch, n = inputs.shape
    grad = torch.is_grad_enabled() and (inputs.requires_grad or weights.requires_grad)
    _check_memory(batch, n, weights.shape[0], ansatz, inputs.dtype, grad, shots, memory_limit_bytes)
    fold = _folds(ansatz, n)
    state = _simulate(ansatz, inputs, weights.to(inputs.dtype), _plan(ansatz, n, weights.shape[0], fold))
    exact, rights = _expectations(state, fold)
    exact = exact.to(inputs.dtype)
    if shots is None:
        return exact
    bits = _sample(state, rights, shots, generator)
    if fold:  # the folded chain: outputs are prefix parities of the sampled bits
        bits = bits.cumsum(-1) % 2
    return straight_through(exact, (1 - 2 * bits).to(inputs.dtype).mean(1))
