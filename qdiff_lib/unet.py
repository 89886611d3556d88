"""The lightweight U-Net of the paper's official code ("v7"), with a choice of bottleneck module.

Shapes for a 28x28 input with ``C`` channels (batch ``B``)::

    x (B, C, 28, 28) --conv3x3--> e1 (B, 32, 28, 28) --conv3x3 s2--> e2 (B, 64, 14, 14)
      --conv3x3 s2--> e3 (B, 128, 7, 7) + Linear(sinusoidal(t), 128) --residual block--> h (B, 128, 7, 7)
      --bottleneck module--> h' (B, 128, 7, 7) --convT 2x2 s2--> (B, 64, 14, 14) --convT 2x2 s2--> d2 (B, 32, 28, 28)
      --concat e1--> (B, 64, 28, 28) --conv3x3--> epsilon prediction (B, C, 28, 28)

ReLU after every convolution except the last; the residual block is ``relu(h + conv(relu(conv(h))))``.

The bottleneck module (``bottleneck=``) is a squeeze-and-excitation gate on the pooled feature map
(Hu et al. 2018), with the middle chosen per arm::

    g = up(middle(scale(squeeze(avgpool(h)))))      squeeze: Linear(128, n_qubits), up: Linear(n_qubits, 128)
    h' = h * g           (gate="product", the official code: no sigmoid, g is unbounded)
    h' = h * sigmoid(g)  (gate="sigmoid", the textbook SE gate)

* ``"none"``: no module, ``h' = h``: the official classical baseline, an *unmatched* control;
* ``"se"``: ``middle`` is a parameter-free classical nonlinearity (``nonlinearity=``, default ``tanh``, bounded
  in [-1, 1] like the circuit's ``<Z_i>``; the authors' later ``se`` arm used ReLU);
* ``"se_frozen"``: as ``se`` with ``squeeze`` frozen at its initialisation. This is our reading of what the
  official quantum arm actually trained: its circuit weights had zero gradient (RZ + CNOT measured in Z) and its
  input was detached, so ``squeeze`` never trained and the gate was a fixed random feature of the pooled map
  followed by a trainable ``up``;
* ``"quantum"``: ``middle`` is :class:`qdiff_lib.quantum.QuantumLayer` (angles ``(B, n_qubits)`` -> ``<Z_i>``);
* ``"fourier"``: ``middle`` is :class:`qdiff_lib.surrogate.FourierSurrogate`, a classical trigonometric polynomial
  over the frequencies the circuit's angle encoding can produce, with as many trainable weights as the ``rzry``
  circuit (``n_layers * n_qubits * 2``): the classical-surrogate control of the circuit.

Two switches freeze parts of a gated arm at their initialisation (``requires_grad`` False; the forward pass and the
gradient *through* the frozen part are unchanged):

* ``freeze_squeeze=True`` freezes ``squeeze`` in any gated arm. ``UNet(bottleneck="quantum", ansatz="paper",
  freeze_squeeze=True)`` is the paper's circuit as the released code effectively trained it (its layer detached
  its input, so nothing before the circuit learned); ``"se_frozen"`` is ``"se"`` with ``freeze_squeeze=True``;
* ``freeze_circuit=True`` (``"quantum"`` only) freezes the circuit's weights: the circuit is then a fixed random
  feature map of the squeezed angles, whose input still receives a gradient.

``se`` and ``quantum`` are matched controls: their parameter counts differ by exactly the circuit's weights
(96 for ``ansatz="rzry"``, 16 qubits, 3 layers); ``fourier`` has exactly as many as ``quantum`` with ``rzry``.
``scale`` is the map from the squeeze output to RY angles, applied in every gated arm so that the arms differ only
in ``middle``: ``"none"`` (the official code: the Linear output is the angle) or ``"pi_tanh"`` (``pi * tanh(.)``,
angles kept in (-pi, pi)).

The model knows nothing of noise schedules: it maps ``(x_t, t)`` to a prediction of the noise.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from qdiff_lib._checks import check_choice

__all__ = [
    "BOTTLENECKS",
    "GATES",
    "NONLINEARITIES",
    "ANGLE_SCALINGS",
    "UNet",
    "SqueezeExcitationGate",
    "ClassicalNonlinearity",
    "timestep_embedding",
    "count_parameters",
]

BOTTLENECKS = ("none", "se", "se_frozen", "quantum", "fourier")
GATES = ("product", "sigmoid")
NONLINEARITIES = ("tanh", "relu", "cos")
ANGLE_SCALINGS = ("none", "pi_tanh")

Bottleneck = Literal["none", "se", "se_frozen", "quantum", "fourier"]
Gate = Literal["product", "sigmoid"]
Nonlinearity = Literal["tanh", "relu", "cos"]
AngleScaling = Literal["none", "pi_tanh"]

#: Channel widths of the official v7 network: encoder 32 -> 64 -> 128, decoder 128 -> 64 -> 32.
CHANNELS = (32, 64, 128)
#: Spatial size the network is built for (MNIST / MedMNIST at 28x28).
IMAGE_SIZE = 28


def timestep_embedding(t: torch.Tensor, dim: int = 128) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, as the official code (Vaswani et al. 2017, Ho et al. 2020).

    ``t`` (B,) -> ``(B, dim)``: ``[sin(t * f_k), cos(t * f_k)]`` with ``f_k = 10000^(-k / (dim/2 - 1))``,
    ``k = 0 .. dim/2 - 1``.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps: expected (B,), got {tuple(t.shape)}")
    if dim % 2 or dim < 4:
        raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ClassicalNonlinearity(nn.Module):
    """A parameter-free elementwise map ``(B, n) -> (B, n)``: the middle of the ``se`` arms.

    ``"tanh"`` (default; bounded in [-1, 1] like ``<Z_i>``), ``"relu"`` (the authors' later SE arm) or ``"cos"``
    (``<Z>`` of a single qubit after ``RY(x)`` on ``|0>``: the circuit without its entangling layers and weights).
    """

    def __init__(self, name: Nonlinearity = "tanh"):
        super().__init__()
        check_choice("nonlinearity", name, NONLINEARITIES)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "tanh":
            return torch.tanh(x)
        if self.name == "relu":
            return F.relu(x)
        return torch.cos(x)

    def extra_repr(self) -> str:
        return repr(self.name)


class SqueezeExcitationGate(nn.Module):
    """Channel-wise gate ``h -> h * gate(up(middle(scale(squeeze(avgpool(h))))))`` on ``(B, C, H, W)``.

    Args:
        channels: ``C`` of the gated feature map.
        width: the squeezed width (the quantum arm's ``n_qubits``).
        middle: module ``(B, width) -> (B, width)``: a classical nonlinearity or a quantum layer.
        gate: ``"product"`` (official, ``h * g``) or ``"sigmoid"`` (``h * sigmoid(g)``).
        angle_scaling: ``"none"`` or ``"pi_tanh"`` (``pi * tanh``) between ``squeeze`` and ``middle``.
        freeze_squeeze: freeze ``squeeze`` at its initialisation (the ``se_frozen`` arm).
    """

    def __init__(
        self,
        channels: int,
        width: int,
        middle: nn.Module,
        gate: Gate = "product",
        angle_scaling: AngleScaling = "none",
        freeze_squeeze: bool = False,
    ):
        super().__init__()
        check_choice("gate", gate, GATES)
        check_choice("angle_scaling", angle_scaling, ANGLE_SCALINGS)
        self.gate = gate
        self.angle_scaling = angle_scaling
        self.squeeze = nn.Linear(channels, width)
        self.middle = middle
        self.up = nn.Linear(width, channels)
        if freeze_squeeze:
            self.squeeze.requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        pooled = h.mean(dim=(2, 3))  # (B, C)
        z = self.squeeze(pooled)  # (B, width)
        if self.angle_scaling == "pi_tanh":
            z = math.pi * torch.tanh(z)
        g = self.up(self.middle(z))  # (B, C)
        if self.gate == "sigmoid":
            g = torch.sigmoid(g)
        return h * g[:, :, None, None]


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class UNet(nn.Module):
    """The paper's lightweight U-Net (official "v7") predicting the noise epsilon of DDPM.

    ``forward(x, t)``: ``x`` (B, C, 28, 28), ``t`` LongTensor (B,) -> ``(B, C, 28, 28)``.

    Args:
        in_channels: ``C`` (1 for MNIST, 3 for PathMNIST).
        bottleneck: ``"none" | "se" | "se_frozen" | "quantum" | "fourier"`` (see the module docstring).
        n_qubits: the squeezed width of the gate (the number of qubits of the quantum arm; the classical arms
            use the same width so that the arms are matched).
        n_layers, ansatz, quantum_backend: passed to :class:`qdiff_lib.quantum.QuantumLayer` (quantum arm only;
            the fourier arm uses ``n_layers`` and, like the classical arms, ignores the other two). The default
            backend ``"auto"`` is the statevector up to 8 qubits, MPS where cheaper (``select_backend``).
        quantum_kwargs: further keyword arguments of ``QuantumLayer`` (e.g. ``shots``, ``depolarizing``).
        gate: ``"product"`` (official: ``h * g``, no sigmoid) or ``"sigmoid"``.
        nonlinearity: middle of the ``se`` and ``se_frozen`` arms: ``"tanh" | "relu" | "cos"``.
        angle_scaling: ``"none"`` (official: the Linear output is the RY angle) or ``"pi_tanh"``.
        freeze_squeeze: freeze the gate's ``squeeze`` Linear at its initialisation (any gated arm; ``"se_frozen"``
            always freezes it).
        freeze_circuit: freeze the circuit's weights at their initialisation (``bottleneck="quantum"`` only).
        time_dim: width of the sinusoidal timestep embedding (128 in the official code).
        seed: every weight is initialised from this seed inside a forked RNG, so two models built with the same
            arguments are identical and the global RNG is left untouched (the circuit's weights are drawn by
            ``QuantumLayer(generator=seed)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        bottleneck: Bottleneck = "quantum",
        n_qubits: int = 16,
        n_layers: int = 3,
        ansatz: str = "rzry",
        gate: Gate = "product",
        nonlinearity: Nonlinearity = "tanh",
        angle_scaling: AngleScaling = "none",
        quantum_backend: str = "auto",
        quantum_kwargs: dict[str, Any] | None = None,
        time_dim: int = 128,
        seed: int = 0,
        freeze_squeeze: bool = False,
        freeze_circuit: bool = False,
    ):
        super().__init__()
        check_choice("bottleneck", bottleneck, BOTTLENECKS)
        check_choice("gate", gate, GATES)
        check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        check_choice("angle_scaling", angle_scaling, ANGLE_SCALINGS)
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not isinstance(n_qubits, int) or n_qubits < 1:
            raise ValueError(f"n_qubits must be a positive integer, got {n_qubits!r}")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        if freeze_squeeze and bottleneck == "none":
            gated = [b for b in BOTTLENECKS if b != "none"]
            raise ValueError(f"freeze_squeeze=True needs a gated bottleneck (one of {gated}), got bottleneck='none'")
        if freeze_circuit and bottleneck != "quantum":
            raise ValueError(f"freeze_circuit=True needs bottleneck='quantum', got bottleneck={bottleneck!r}")
        self.in_channels = in_channels
        self.bottleneck = bottleneck
        self.n_qubits = n_qubits
        self.time_dim = time_dim
        c1, c2, c3 = CHANNELS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.enc1 = nn.Conv2d(in_channels, c1, 3, padding=1)
            self.enc2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
            self.enc3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
            self.time_proj = nn.Linear(time_dim, c3)
            self.res = _ResidualBlock(c3)
            self.dec1 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
            self.dec2 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
            self.out = nn.Conv2d(2 * c1, in_channels, 3, padding=1)
            # Built last, so that every arm built with the same seed shares the same U-Net weights.
            self.bottleneck_gate: SqueezeExcitationGate | None = None
            if bottleneck != "none":
                if bottleneck == "quantum":
                    from qdiff_lib.quantum import QuantumLayer

                    middle: nn.Module = QuantumLayer(
                        n_qubits, n_layers, ansatz=ansatz, backend=quantum_backend, generator=seed,
                        **(quantum_kwargs or {}),
                    )
                    if freeze_circuit:
                        middle.requires_grad_(False)
                elif bottleneck == "fourier":
                    from qdiff_lib.surrogate import FourierSurrogate

                    middle = FourierSurrogate(n_qubits, n_layers, generator=seed)
                else:
                    middle = ClassicalNonlinearity(nonlinearity)
                self.bottleneck_gate = SqueezeExcitationGate(
                    c3, n_qubits, middle, gate=gate, angle_scaling=angle_scaling,
                    freeze_squeeze=freeze_squeeze or bottleneck == "se_frozen",
                )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"x: expected (B, {self.in_channels}, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"t: expected ({x.shape[0]},), got {tuple(t.shape)}")
        e1 = F.relu(self.enc1(x))  # (B, 32, 28, 28)
        e2 = F.relu(self.enc2(e1))  # (B, 64, 14, 14)
        temb = self.time_proj(timestep_embedding(t, self.time_dim))  # (B, 128)
        e3 = F.relu(self.enc3(e2)) + temb[:, :, None, None]  # (B, 128, 7, 7)
        h = self.res(e3)
        if self.bottleneck_gate is not None:
            h = self.bottleneck_gate(h)
        d1 = F.relu(self.dec1(h))  # (B, 64, 14, 14)
        d2 = F.relu(self.dec2(d1))  # (B, 32, 28, 28)
        return self.out(torch.cat([d2, e1], dim=1))  # (B, C, 28, 28)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
