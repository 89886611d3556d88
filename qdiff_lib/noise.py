"""Noise sources for the diffusion process.

A noise source draws the epsilon of DDPM: the forward noise (the training target) and the reverse-step noise.
Every source has the same interface::

    source.sample(shape, generator=None, t=None) -> torch.Tensor   # float32, the given shape

``t`` (a LongTensor ``(B,)`` of timesteps, ``shape[0] == B``) is used only by sources whose law depends on
the timestep (the hybrid mixture); others ignore it.

The paper (arXiv:2504.00034) names "intrinsic quantum-generated noise" in one line and its released code contains
none, so the design below is ours:

* :class:`QuantumNoise`: a PennyLane circuit (:func:`noise_circuit`) whose Born distribution over the
  ``2**n_qubits`` computational-basis outcomes is computed once; ``sample`` then draws outcomes shot by shot
  (alias method on ``torch.rand`` with the caller's generator) and maps each
  measured bitstring to ``values_per_shot = n_qubits // qubits_per_value`` noise values through a lookup table.
  Mappings (:data:`MAPPINGS`), each standardised exactly against the Born distribution, so mean 0 and
  variance 1 hold by construction for every circuit and hardware-noise setting:

  - ``"binomial"``: the sum of the ``k`` outcomes as spins ``s = 1 - 2b`` in {+1, -1}; for the Hadamard circuit
    ``sum(s) / sqrt(k)``, a scaled binomial with ``k + 1`` levels (intrinsically discrete).
  - ``"gaussianize"``: the ``k``-bit outcome integer ``m`` through the inverse normal CDF at the mid-point of
    its exact marginal CDF, ``Phi^{-1}(P(M < m) + P(M = m) / 2)``; for the Hadamard circuit
    ``Phi^{-1}((m + 1/2) / 2**k)``, a ``2**k``-level quantisation of N(0, 1).
  - ``"integer"``: the outcome integer ``m`` itself, affinely standardised (for the Hadamard circuit a discrete
    uniform law with ``2**k`` levels: variance 1 but kurtosis 1.8, a non-Gaussian control).

* :class:`HybridNoise`: the variance-preserving mixture
  ``eps = sqrt(lambda(t)) * eps_q + sqrt(1 - lambda(t)) * eps_g`` of a quantum and a Gaussian source.

On a simulator the randomness is the caller's pseudo-random stream pushed through a Born distribution; a device
would draw the outcomes physically (and add its own noise, which ``readout_error`` and ``depolarizing`` model).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from qdiff_lib._checks import check_choice

if TYPE_CHECKING:  # PennyLane is imported by the quantum sources only: plain DDPM never loads it
    import pennylane as qml

__all__ = [
    "NoiseSource",
    "GaussianNoise",
    "QuantumNoise",
    "HybridNoise",
    "noise_circuit",
    "make_noise_source",
    "CIRCUITS",
    "MAPPINGS",
    "HYBRID_WEIGHTS",
    "NOISE_SOURCES",
]

#: Circuits behind :class:`QuantumNoise` (see :func:`noise_circuit`).
CIRCUITS = ("hadamard", "entangled")
#: Mappings from measured bitstrings to noise values (see the module docstring).
MAPPINGS = ("binomial", "gaussianize", "integer")
#: Shapes of the hybrid weight lambda(t) (see :class:`HybridNoise`).
HYBRID_WEIGHTS = ("linear", "cosine")
#: Names accepted by :func:`make_noise_source` (the ``noise`` option of the config and the CLI).
NOISE_SOURCES = ("gaussian", "quantum", "hybrid")

#: Largest register for the noiseless circuit (a ``2**n`` probability vector and lookup table).
MAX_QUBITS = 20
#: Largest register with ``depolarizing > 0`` (density-matrix simulation: 10 qubits take ~3 s, 12 take ~50 s).
MAX_NOISY_QUBITS = 10


@runtime_checkable
class NoiseSource(Protocol):
    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class GaussianNoise:
    """Standard normal noise, ``torch.randn`` with the given generator (DDPM's assumption)."""

    name = "gaussian"

    def __init__(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype

    def sample(self, shape, generator=None, t=None) -> torch.Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=self.dtype)

    def __repr__(self) -> str:
        return "GaussianNoise()"


def _check_probability(name: str, value: float, high: float) -> float:
    value = float(value)
    if not 0.0 <= value <= high:
        raise ValueError(f"{name} must be in [0, {high}], got {value!r}")
    return value


def _check_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    shape = tuple(shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape!r}")
    return shape


def noise_circuit(
    circuit: str = "hadamard",
    n_qubits: int = 12,
    entangling_angle: float = math.pi / 3,
    depolarizing: float = 0.0,
) -> qml.QNode:
    """The PennyLane circuit behind :class:`QuantumNoise`; calling it returns ``qml.probs`` ``(2**n_qubits,)``.

    * ``"hadamard"``: a Hadamard on every qubit; the Born distribution is uniform over the ``2**n`` bitstrings,
      i.e. ``n`` independent fair bits.
    * ``"entangled"``: a Hadamard on qubit 0, then for ``i = 1 .. n-1`` a CNOT(i-1, i) followed by RY(gamma) on
      qubit ``i`` (gamma = ``entangling_angle``). CNOT copies bit ``i-1`` into qubit ``i`` and RY rotates it,
      so a Z measurement reads a chain in which every bit is uniform and bit ``i`` differs from bit ``i-1``
      with probability ``sin^2(gamma / 2)``: the spin correlation is ``<Z_i Z_j> = cos(gamma)**|i-j|``.
      gamma = 0 gives the GHZ state (perfectly correlated bits), gamma = pi/2 the independent fair bits of
      ``"hadamard"``.

    With ``depolarizing = p > 0`` every gate is followed by ``qml.DepolarizingChannel(p)`` on each wire it
    touches (gate noise, simulated on ``default.mixed``; at most :data:`MAX_NOISY_QUBITS` qubits).
    Wire 0 is the most significant bit of the outcome index (PennyLane's convention).
    """
    check_choice("circuit", circuit, CIRCUITS)
    if not isinstance(n_qubits, int) or isinstance(n_qubits, bool) or not 1 <= n_qubits <= MAX_QUBITS:
        raise ValueError(f"n_qubits must be an integer in [1, {MAX_QUBITS}], got {n_qubits!r}")
    depolarizing = _check_probability("depolarizing", depolarizing, 1.0)
    if depolarizing > 0 and n_qubits > MAX_NOISY_QUBITS:
        raise ValueError(
            f"depolarizing > 0 needs a density-matrix simulation: n_qubits must be <= {MAX_NOISY_QUBITS}, "
            f"got {n_qubits}"
        )
    gamma = float(entangling_angle)
    if not math.isfinite(gamma):
        raise ValueError(f"entangling_angle must be finite, got {entangling_angle!r}")
    import pennylane as qml  # lazily: only the quantum noise sources need it

    device = qml.device("default.mixed" if depolarizing > 0 else "default.qubit", wires=n_qubits)

    def gate_noise(*wires: int) -> None:
        if depolarizing > 0:
            for w in wires:
                qml.DepolarizingChannel(depolarizing, wires=w)

    @qml.qnode(device)
    def born_probs():
        if circuit == "hadamard":
            for w in range(n_qubits):
                qml.Hadamard(wires=w)
                gate_noise(w)
        else:
            qml.Hadamard(wires=0)
            gate_noise(0)
            for w in range(1, n_qubits):
                qml.CNOT(wires=[w - 1, w])
                gate_noise(w - 1, w)
                qml.RY(gamma, wires=w)
                gate_noise(w)
        return qml.probs(wires=range(n_qubits))

    return born_probs


def _apply_readout_error(probs: np.ndarray, n_qubits: int, p: float) -> np.ndarray:
    """Symmetric readout error: each measured bit is flipped independently with probability ``p``.

    Readout error is a classical misassignment of the measured bit, so it acts on the Born distribution by the
    confusion matrix ``[[1-p, p], [p, 1-p]]`` on every qubit (equivalent to ``qml.BitFlip(p)`` before the
    measurement, which the tests check).
    """
    confusion = np.array([[1.0 - p, p], [p, 1.0 - p]])
    tensor = probs.reshape((2,) * n_qubits)
    for axis in range(n_qubits):
        tensor = np.moveaxis(np.tensordot(confusion, tensor, axes=([1], [axis])), 0, axis)
    return tensor.reshape(-1)


def _alias_tables(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vose's alias tables ``(accept float64 (N,), alias int64 (N,))`` for drawing from ``probs`` in O(1).

    Outcome ``m`` is drawn with probability ``(accept[m] + sum_{j: alias[j] = m} (1 - accept[j])) / N``, which
    equals ``probs[m]`` up to rounding (checked in the tests). Zero-probability outcomes get ``accept = 0`` and are
    never an alias, so they are never drawn.
    """
    n = probs.numel()
    scaled = (probs.to(torch.float64) * n).tolist()
    accept, alias = [1.0] * n, list(range(n))
    small = [i for i, q in enumerate(scaled) if q < 1.0]
    large = [i for i, q in enumerate(scaled) if q >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()  # a small and a large bucket: g tops s up to 1
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    # what is left has scaled probability 1 up to rounding: always accept
    return torch.tensor(accept, dtype=torch.float64), torch.tensor(alias, dtype=torch.int64)


class QuantumNoise:
    """Noise values from simulated measurements of a quantum circuit (our design; see the module docstring).

    Args:
        circuit: ``"hadamard"`` or ``"entangled"`` (:func:`noise_circuit`).
        n_qubits: register size ``n`` (1 to 20; at most 10 with ``depolarizing > 0``).
        mapping: ``"binomial"``, ``"gaussianize"`` or ``"integer"`` (module docstring).
        qubits_per_value: ``k``, qubits read per noise value; must divide ``n_qubits``. Default ``n_qubits // 2``
            (so one shot gives two values), or 1 when ``n_qubits == 1``.
        entangling_angle: gamma of the ``"entangled"`` circuit (adjacent-qubit spin correlation ``cos(gamma)``).
        readout_error: probability that each measured bit is flipped (classical confusion on the Born
            distribution).
        depolarizing: depolarizing probability after every gate (density-matrix simulation).
        device: where ``sample`` puts its output when no generator is given (otherwise the generator's device).

    One shot yields ``values_per_shot = n // k`` values. Value ``j`` of a shot reads the interleaved qubits
    ``j, j + g, j + 2g, ...`` (``g = values_per_shot``, most significant first), so each of its qubits is a chain
    neighbour of the corresponding qubit of value ``j + 1``: in the entangled circuit adjacent values are
    correlated. ``sample`` fills the output in row-major order, shot after shot, so the values of one shot are
    adjacent along the last dimension (horizontally adjacent pixels of a ``(B, C, H, W)`` tensor).

    Attributes:
        probs: float64 ``(2**n,)``, the Born distribution (after readout error).
        table: float64 ``(2**n, values_per_shot)``, the standardised noise values of each outcome.
        qnode: the PennyLane QNode (draw it with ``qml.draw_mpl(noise.qnode)()``).
    """

    name = "quantum"

    def __init__(
        self,
        circuit: str = "hadamard",
        n_qubits: int = 12,
        mapping: str = "gaussianize",
        qubits_per_value: int | None = None,
        entangling_angle: float = math.pi / 3,
        readout_error: float = 0.0,
        depolarizing: float = 0.0,
        device: torch.device | str = "cpu",
    ):
        check_choice("mapping", mapping, MAPPINGS)
        self.qnode = noise_circuit(circuit, n_qubits, entangling_angle, depolarizing)
        if qubits_per_value is None:
            qubits_per_value = max(1, n_qubits // 2)
        if (
            not isinstance(qubits_per_value, int)
            or isinstance(qubits_per_value, bool)
            or qubits_per_value < 1
            or n_qubits % qubits_per_value != 0
        ):
            raise ValueError(
                f"qubits_per_value must be a positive divisor of n_qubits={n_qubits}, got {qubits_per_value!r}"
            )
        self.circuit = circuit
        self.n_qubits = n_qubits
        self.mapping = mapping
        self.qubits_per_value = qubits_per_value
        self.values_per_shot = n_qubits // qubits_per_value
        self.entangling_angle = float(entangling_angle)
        self.readout_error = _check_probability("readout_error", readout_error, 0.5)
        self.depolarizing = float(depolarizing)
        self.device = torch.device(device)

        probs = np.clip(np.asarray(self.qnode(), dtype=np.float64), 0.0, None)
        if self.readout_error > 0:
            probs = _apply_readout_error(probs, n_qubits, self.readout_error)
        probs = probs / probs.sum()
        self.probs = torch.from_numpy(probs)
        self.table = self._build_table()
        self._accept, self._alias = _alias_tables(self.probs)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _build_table(self) -> torch.Tensor:
        """Standardised values ``(2**n, values_per_shot)`` of every outcome, exact under :attr:`probs`."""
        n, k, g = self.n_qubits, self.qubits_per_value, self.values_per_shot
        outcomes = torch.arange(2**n, dtype=torch.int64)
        bits = (outcomes[:, None] >> (n - 1 - torch.arange(n))) & 1  # (2**n, n), wire 0 most significant
        # qubits of value j: j, j + g, ..., j + (k - 1) g  ->  (2**n, g, k), most significant first
        group_bits = bits[:, torch.arange(g)[:, None] + g * torch.arange(k)[None, :]]
        if self.mapping == "binomial":
            raw = (1 - 2 * group_bits).sum(-1).to(torch.float64)
        else:
            integers = (group_bits << (k - 1 - torch.arange(k))).sum(-1)  # (2**n, g) in [0, 2**k)
            if self.mapping == "integer":
                raw = integers.to(torch.float64)
            else:  # gaussianize: Phi^{-1} at the mid-point of the exact marginal CDF of each value's integer
                raw = torch.zeros(2**n, g, dtype=torch.float64)
                for j in range(g):
                    marginal = torch.zeros(2**k, dtype=torch.float64).index_add_(0, integers[:, j], self.probs)
                    mid_cdf = torch.cumsum(marginal, 0) - marginal / 2
                    levels = torch.where(marginal > 0, torch.special.ndtri(mid_cdf.clamp(1e-300, 1.0)), 0.0)
                    raw[:, j] = levels[integers[:, j]]
        mean = self.probs @ raw
        var = self.probs @ (raw - mean) ** 2
        if bool((var <= 1e-12).any()):
            raise ValueError(f"the Born distribution of {self!r} gives a constant noise value; cannot standardise")
        table = (raw - mean) / var.sqrt()
        # the zero level carries ~1e-17 of rounding from the exact mean; snap it so that value slots with the same
        # law share the same levels
        return torch.where(table.abs() < 1e-12, 0.0, table)

    def value_distribution(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact law of one noise value: sorted distinct ``levels`` and their ``masses`` (float64, ``(L,)`` each).

        A value is taken from a uniformly chosen slot of a shot, so the law is the average of the slots' laws
        (identical slots for the Hadamard circuit). Levels are those of the float32 output of :meth:`sample`.
        """
        values = self.table.to(torch.float32).to(torch.float64).reshape(-1)
        weights = (self.probs[:, None] / self.values_per_shot).expand_as(self.table).reshape(-1)
        levels, inverse = torch.unique(values, return_inverse=True)
        masses = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, inverse, weights)
        keep = masses > 0
        return levels[keep], masses[keep]

    def value_covariance(self) -> torch.Tensor:
        """Exact covariance ``(values_per_shot, values_per_shot)`` (float64) of the values of one shot.

        The diagonal is 1 (standardisation); off-diagonal entries are the correlations between values of the same
        shot, which sit next to each other in the output of :meth:`sample`.
        """
        return self.table.T @ (self.probs[:, None] * self.table)

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (
                self._accept.to(device), self._alias.to(device), self.table.to(device, torch.float32)
            )
        return self._on_device[device]

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise of the given shape (float32), e.g. ``(B, C, H, W)``; ``t`` is ignored.

        Draws ``ceil(numel / values_per_shot)`` shots from :attr:`probs` with the alias method, one float64
        ``torch.rand`` per shot from ``generator`` (its top ``n_qubits`` bits pick a column, the remaining bits
        decide between the column and its alias), looks up their values and fills the output row-major, shot after
        shot.
        """
        shape = _check_shape(shape)
        numel = math.prod(shape)
        device = generator.device if generator is not None else self.device
        accept, alias, table = self._tables(device)
        n_shots = -(-numel // self.values_per_shot)
        scaled = torch.rand(n_shots, generator=generator, device=device, dtype=torch.float64) * accept.numel()
        column = scaled.long().clamp_(max=accept.numel() - 1)
        outcomes = torch.where(scaled - column < accept[column], column, alias[column])
        return table.index_select(0, outcomes).reshape(-1)[:numel].reshape(shape)

    def __repr__(self) -> str:
        extra = f", entangling_angle={self.entangling_angle:.4g}" if self.circuit == "entangled" else ""
        return (
            f"QuantumNoise(circuit={self.circuit!r}, n_qubits={self.n_qubits}, mapping={self.mapping!r}, "
            f"qubits_per_value={self.qubits_per_value}{extra}, readout_error={self.readout_error:g}, "
            f"depolarizing={self.depolarizing:g})"
        )


class HybridNoise:
    """Variance-preserving mixture of a quantum and a Gaussian source whose weight depends on the timestep.

    ``eps = sqrt(lambda(t)) * eps_q + sqrt(1 - lambda(t)) * eps_g`` with independent ``eps_q`` (``quantum``) and
    ``eps_g`` (``gaussian``), both of mean 0 and variance 1, so ``eps`` has mean 0 and variance 1 at every ``t``.
    ``lambda(t) = lambda_start + (lambda_end - lambda_start) * r(t / (T - 1))`` for ``t = 0 .. T-1`` with the ramp
    ``r(x) = x`` (``weight="linear"``) or ``r(x) = (1 - cos(pi x)) / 2`` (``"cosine"``); a constant weight is
    ``lambda_start == lambda_end``.

    The default (0 at t = 0, 1 at t = T-1) is our choice: quantum noise dominates the high-noise steps, where
    coarse structure is formed, and Gaussian noise the low-noise steps, where DDPM's Gaussian posterior matters
    most for fine detail.

    Args:
        quantum: the quantum source (e.g. :class:`QuantumNoise`).
        gaussian: the Gaussian source (default :class:`GaussianNoise`).
        weight: ramp shape, one of :data:`HYBRID_WEIGHTS`.
        timesteps: ``T``.
        lambda_start, lambda_end: ``lambda(0)`` and ``lambda(T-1)``, in [0, 1].

    Attributes:
        lambdas: float64 ``(T,)``, lambda(t).
    """

    name = "hybrid"

    def __init__(
        self,
        quantum: NoiseSource,
        gaussian: NoiseSource | None = None,
        weight: str = "linear",
        timesteps: int = 1000,
        lambda_start: float = 0.0,
        lambda_end: float = 1.0,
    ):
        check_choice("hybrid weight", weight, HYBRID_WEIGHTS)
        if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive integer, got {timesteps!r}")
        self.quantum = quantum
        self.gaussian = gaussian if gaussian is not None else GaussianNoise()
        self.weight = weight
        self.timesteps = timesteps
        self.lambda_start = _check_probability("lambda_start", lambda_start, 1.0)
        self.lambda_end = _check_probability("lambda_end", lambda_end, 1.0)
        x = torch.arange(timesteps, dtype=torch.float64) / max(timesteps - 1, 1)
        ramp = x if weight == "linear" else (1 - torch.cos(math.pi * x)) / 2
        self.lambdas = self.lambda_start + (self.lambda_end - self.lambda_start) * ramp

    def sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise of the given shape ``(B, ...)`` (float32) for timesteps ``t``, a LongTensor ``(B,)``."""
        shape = _check_shape(shape)
        if t is None:
            raise ValueError("HybridNoise.sample needs the timesteps t, a LongTensor (B,)")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"t must be an integer tensor, got dtype {t.dtype}")
        if len(shape) == 0 or t.shape != (shape[0],):
            raise ValueError(f"expected t of shape (B,) = ({shape[0] if shape else '?'},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise ValueError(f"t must lie in [0, {self.timesteps - 1}], got values in [{int(t.min())}, {int(t.max())}]")
        eps_q = self.quantum.sample(shape, generator=generator, t=t)
        eps_g = self.gaussian.sample(shape, generator=generator, t=t)
        lam = self.lambdas.to(eps_q.device)[t.to(eps_q.device)].to(eps_q.dtype)
        lam = lam.reshape((shape[0],) + (1,) * (len(shape) - 1))
        return lam.sqrt() * eps_q + (1 - lam).sqrt() * eps_g

    def __repr__(self) -> str:
        return (
            f"HybridNoise({self.quantum!r}, {self.gaussian!r}, weight={self.weight!r}, timesteps={self.timesteps}, "
            f"lambda_start={self.lambda_start:g}, lambda_end={self.lambda_end:g})"
        )


_HYBRID_OPTIONS = ("weight", "lambda_start", "lambda_end")


def make_noise_source(
    name: str, timesteps: int = 1000, device: torch.device | str = "cpu", **kwargs
) -> GaussianNoise | QuantumNoise | HybridNoise:
    """The noise source ``name`` (one of :data:`NOISE_SOURCES`).

    ``kwargs`` go to :class:`QuantumNoise` (``"quantum"``), or are split between :class:`HybridNoise`
    (``weight``, ``lambda_start``, ``lambda_end``) and its :class:`QuantumNoise` (the rest) for ``"hybrid"``;
    ``"gaussian"`` takes none.
    """
    check_choice("noise source", name, NOISE_SOURCES)
    if name == "gaussian":
        if kwargs:
            raise ValueError(f"options {sorted(kwargs)} do not apply to the gaussian noise source")
        return GaussianNoise(device=device)
    if name == "quantum":
        return QuantumNoise(device=device, **kwargs)
    hybrid_kwargs = {key: kwargs.pop(key) for key in _HYBRID_OPTIONS if key in kwargs}
    return HybridNoise(
        QuantumNoise(device=device, **kwargs), GaussianNoise(device=device), timesteps=timesteps, **hybrid_kwargs
    )
