"""The U-Net of the official code and its bottleneck arms (qdiff_lib.unet)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qdiff_lib.unet import (
    BOTTLENECKS,
    ClassicalNonlinearity,
    SqueezeExcitationGate,
    UNet,
    count_parameters,
    timestep_embedding,
)

#: The matched arms of the study as UNet options (same U-Net, squeeze and up; only the middle or what is frozen
#: differs). The arm names are the study's; the options are all this module knows of them.
ARM_OPTIONS = {
    "none": {"bottleneck": "none"},
    "se": {"bottleneck": "se"},
    "se_cos": {"bottleneck": "se", "nonlinearity": "cos"},
    "se_frozen": {"bottleneck": "se_frozen"},
    "quantum_paper": {"bottleneck": "quantum", "ansatz": "paper"},
    "quantum_paper_released": {"bottleneck": "quantum", "ansatz": "paper", "freeze_squeeze": True},
    "quantum_rzry": {"bottleneck": "quantum", "ansatz": "rzry"},
    "quantum_rzry_frozen": {"bottleneck": "quantum", "ansatz": "rzry", "freeze_circuit": True},
    "quantum_rzry_separable": {"bottleneck": "quantum", "ansatz": "rzry_separable"},
    "fourier": {"bottleneck": "fourier"},
}

#: (total, trainable) parameters of every arm at 8 and 16 qubits, 3 layers.
PARAMETER_TABLE = {
    8: {
        "none": (445_985, 445_985), "se": (448_169, 448_169), "se_cos": (448_169, 448_169),
        "se_frozen": (448_169, 447_137), "quantum_paper": (448_193, 448_193),
        "quantum_paper_released": (448_193, 447_161), "quantum_rzry": (448_217, 448_217),
        "quantum_rzry_frozen": (448_217, 448_169), "quantum_rzry_separable": (448_217, 448_217),
        "fourier": (448_217, 448_217),
    },
    16: {
        "none": (445_985, 445_985), "se": (450_225, 450_225), "se_cos": (450_225, 450_225),
        "se_frozen": (450_225, 448_161), "quantum_paper": (450_273, 450_273),
        "quantum_paper_released": (450_273, 448_209), "quantum_rzry": (450_321, 450_321),
        "quantum_rzry_frozen": (450_321, 450_225), "quantum_rzry_separable": (450_321, 450_321),
        "fourier": (450_321, 450_321),
    },
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(batch: int = 3, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, batch * channels * 28 * 28).reshape(batch, channels, 28, 28)
    t = torch.arange(batch, dtype=torch.long) * 7
    return x, t


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_follow_the_official_network(channels):
    model = UNet(in_channels=channels, bottleneck="se", n_qubits=4)
    sizes = {}
    for name in ("enc1", "enc2", "enc3", "res", "bottleneck_gate", "dec1", "dec2", "out"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape)))
    x, t = _inputs(2, channels)
    assert model(x, t).shape == (2, channels, 28, 28)
    assert sizes == {
        "enc1": (2, 32, 28, 28), "enc2": (2, 64, 14, 14), "enc3": (2, 128, 7, 7), "res": (2, 128, 7, 7),
        "bottleneck_gate": (2, 128, 7, 7), "dec1": (2, 64, 14, 14), "dec2": (2, 32, 28, 28),
        "out": (2, channels, 28, 28),
    }


def test_parameter_counts_are_matched():
    n, C = 16, 128
    squeeze_up = (C * n + n) + (n * C + C)
    counts = {b: count_parameters(UNet(bottleneck=b, n_qubits=n, n_layers=3, ansatz="rzry")) for b in BOTTLENECKS}
    assert counts["quantum"] - counts["se"] == 96 == 3 * 16 * 2
    assert counts["se"] - counts["none"] == squeeze_up
    assert counts["se_frozen"] == counts["se"]
    frozen = UNet(bottleneck="se_frozen", n_qubits=n)
    assert count_parameters(frozen, trainable_only=True) == counts["se"] - (C * n + n)
    # the official baseline (v7, use_quantum=False), layer by layer: enc1, enc2, enc3, time_proj, residual block,
    # dec1, dec2, out
    official = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (128 * 128 + 128) \
        + 2 * (9 * 128 * 128 + 128) + (4 * 128 * 64 + 64) + (4 * 64 * 32 + 32) + (9 * 64 + 1)
    assert counts["none"] == official == 445_985


@pytest.mark.parametrize("n", [8, 16])
def test_parameter_table_of_the_matched_arms(n):
    L, C = 3, 128
    table = {}
    for arm, options in ARM_OPTIONS.items():
        model = UNet(n_qubits=n, n_layers=L, **options)
        table[arm] = (count_parameters(model), count_parameters(model, trainable_only=True))
    assert table == PARAMETER_TABLE[n]
    # the same numbers from the formulas: squeeze Linear(C, n), up Linear(n, C), the circuit's weights
    squeeze, up = C * n + n, n * C + C
    total, trainable = {a: t[0] for a, t in table.items()}, {a: t[1] for a, t in table.items()}
    se = total["none"] + squeeze + up
    assert total["se"] == total["se_cos"] == total["se_frozen"] == se
    assert total["quantum_paper"] - se == L * n  # RZ weights (L, n)
    for arm in ("quantum_rzry", "quantum_rzry_frozen", "quantum_rzry_separable", "fourier"):
        assert total[arm] - se == L * n * 2  # RZ, RY weights (L, n, 2); the surrogate has as many
    assert total["quantum_paper_released"] == total["quantum_paper"]
    for arm in ("none", "se", "se_cos", "quantum_paper", "quantum_rzry", "quantum_rzry_separable", "fourier"):
        assert trainable[arm] == total[arm]
    assert total["se_frozen"] - trainable["se_frozen"] == squeeze  # frozen: exactly the frozen tensors
    assert total["quantum_paper_released"] - trainable["quantum_paper_released"] == squeeze
    assert total["quantum_rzry_frozen"] - trainable["quantum_rzry_frozen"] == L * n * 2
    assert trainable["fourier"] == trainable["quantum_rzry"]


def test_frozen_circuit_keeps_its_initial_weights_and_passes_gradient_to_its_input():
    x, t = _inputs()
    frozen = UNet(bottleneck="quantum", n_qubits=4, n_layers=2, ansatz="rzry", freeze_circuit=True, seed=3)
    trained = UNet(bottleneck="quantum", n_qubits=4, n_layers=2, ansatz="rzry", seed=3)
    assert not frozen.bottleneck_gate.middle.weights.requires_grad
    torch.testing.assert_close(frozen(x, t), trained(x, t), rtol=0, atol=0)  # the same function at initialisation
    frozen(x, t).square().mean().backward()
    assert frozen.bottleneck_gate.middle.weights.grad is None
    assert frozen.bottleneck_gate.squeeze.weight.grad.abs().sum() > 0
    assert frozen.enc1.weight.grad.abs().sum() > 0


def test_freeze_squeeze_in_any_gated_arm_is_the_released_paper_arm():
    x, t = _inputs()
    released = UNet(bottleneck="quantum", ansatz="paper", n_qubits=4, n_layers=2, freeze_squeeze=True, seed=1)
    released(x, t).square().mean().backward()
    gate = released.bottleneck_gate
    assert gate.squeeze.weight.grad is None and gate.squeeze.bias.grad is None
    assert gate.up.weight.grad.abs().sum() > 0
    assert gate.middle.weights.requires_grad  # the paper's circuit weights are nominally trainable...
    assert gate.middle.weights.grad.abs().max() < 1e-6  # ...but their gradient vanishes (float32 rounding only)
    assert released.enc1.weight.grad.abs().sum() > 0  # the U-Net around the gate still trains
    for bottleneck in ("se", "fourier", "se_frozen"):
        model = UNet(bottleneck=bottleneck, n_qubits=4, freeze_squeeze=True)
        assert not model.bottleneck_gate.squeeze.weight.requires_grad
    # se_frozen is unchanged: it freezes the squeeze without the switch
    assert not UNet(bottleneck="se_frozen", n_qubits=4).bottleneck_gate.squeeze.weight.requires_grad
    assert UNet(bottleneck="se", n_qubits=4).bottleneck_gate.squeeze.weight.requires_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bottleneck": "none", "freeze_squeeze": True},
         r"freeze_squeeze=True needs a gated bottleneck \(one of \['se', 'se_frozen', 'quantum', 'fourier'\]\), "
         r"got bottleneck='none'"),
        ({"bottleneck": "se", "freeze_circuit": True},
         "freeze_circuit=True needs bottleneck='quantum', got bottleneck='se'"),
        ({"bottleneck": "fourier", "freeze_circuit": True}, "got bottleneck='fourier'"),
        ({"bottleneck": "none", "freeze_circuit": True}, "got bottleneck='none'"),
    ],
)
def test_freezing_switches_refuse_arms_without_the_part(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(n_qubits=4, **kwargs)


def test_se_cos_arm():
    x, t = _inputs()
    model = UNet(bottleneck="se", nonlinearity="cos", n_qubits=4, seed=2)
    assert model.bottleneck_gate.middle.name == "cos"
    out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert model.bottleneck_gate.squeeze.weight.grad.abs().sum() > 0


def test_separable_circuit_is_passed_through():
    from qdiff_lib.quantum import QuantumLayer

    model = UNet(bottleneck="quantum", n_qubits=4, n_layers=2, ansatz="rzry_separable", seed=3)
    middle = model.bottleneck_gate.middle
    assert middle.ansatz == "rzry_separable"
    angles = torch.linspace(-2, 2, 12).reshape(3, 4)
    torch.testing.assert_close(middle(angles), QuantumLayer(4, 2, ansatz="rzry_separable", generator=3)(angles))
    x, t = _inputs()
    model(x, t).square().mean().backward()
    assert middle.weights.grad.abs().sum() > 0


def test_fourier_arm_is_the_seeded_surrogate_and_trains():
    from qdiff_lib.surrogate import FourierSurrogate

    model = UNet(bottleneck="fourier", n_qubits=4, n_layers=2, seed=3)
    middle = model.bottleneck_gate.middle
    assert isinstance(middle, FourierSurrogate)
    torch.testing.assert_close(middle.weights, FourierSurrogate(4, 2, generator=3).weights, rtol=0, atol=0)
    x, t = _inputs()
    model(x, t).square().mean().backward()
    assert middle.weights.grad.abs().sum() > 0
    assert model.bottleneck_gate.squeeze.weight.grad.abs().sum() > 0


def test_same_seed_same_model_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = UNet(bottleneck="quantum", n_qubits=4, seed=5), UNet(bottleneck="quantum", n_qubits=4, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    c = UNet(bottleneck="quantum", n_qubits=4, seed=6)
    assert not torch.equal(a.enc1.weight, c.enc1.weight)
    assert not torch.equal(a.bottleneck_gate.middle.weights, c.bottleneck_gate.middle.weights)


def test_arms_with_the_same_seed_share_their_common_weights():
    arms = {b: UNet(bottleneck=b, n_qubits=4, seed=1).state_dict() for b in BOTTLENECKS}
    for b in BOTTLENECKS:
        for key, value in arms["none"].items():
            assert torch.equal(arms[b][key], value), (b, key)
    for key in ("bottleneck_gate.squeeze.weight", "bottleneck_gate.up.weight", "bottleneck_gate.up.bias"):
        assert torch.equal(arms["se"][key], arms["quantum"][key])
        assert torch.equal(arms["se"][key], arms["se_frozen"][key])
        assert torch.equal(arms["se"][key], arms["fourier"][key])
    for options in ARM_OPTIONS.values():  # the switches and ansätze change nothing else either
        model = UNet(n_qubits=4, seed=1, **options).state_dict()
        for key, value in arms["se" if options["bottleneck"] != "none" else "none"].items():
            if "middle" not in key:
                assert torch.equal(model[key], value), (options, key)


def test_gate_matches_a_hand_written_squeeze_excitation():
    torch.manual_seed(0)
    h = torch.randn(2, 8, 3, 3)
    for gate, angle_scaling in [("product", "none"), ("sigmoid", "pi_tanh")]:
        module = SqueezeExcitationGate(8, 4, ClassicalNonlinearity("tanh"), gate=gate, angle_scaling=angle_scaling)
        Ws, bs = module.squeeze.weight.detach().numpy(), module.squeeze.bias.detach().numpy()
        Wu, bu = module.up.weight.detach().numpy(), module.up.bias.detach().numpy()
        hn = h.double().numpy()
        z = hn.mean(axis=(2, 3)) @ Ws.T + bs
        if angle_scaling == "pi_tanh":
            z = math.pi * np.tanh(z)
        g = np.tanh(z) @ Wu.T + bu
        if gate == "sigmoid":
            g = 1 / (1 + np.exp(-g))
        expected = hn * g[:, :, None, None]
        np.testing.assert_allclose(module(h).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_none_arm_is_the_ungated_network():
    x, t = _inputs()
    plain = UNet(bottleneck="none", seed=2)
    gated = UNet(bottleneck="se", seed=2, gate="product")
    with torch.no_grad():  # a gate that outputs exactly 1 leaves the feature map unchanged
        gated.bottleneck_gate.up.weight.zero_()
        gated.bottleneck_gate.up.bias.fill_(1.0)
    torch.testing.assert_close(plain(x, t), gated(x, t), rtol=0, atol=0)


def test_nonlinearities():
    z = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(ClassicalNonlinearity("tanh")(z), torch.tanh(z))
    torch.testing.assert_close(ClassicalNonlinearity("relu")(z), z.clamp(min=0))
    torch.testing.assert_close(ClassicalNonlinearity("cos")(z), torch.cos(z))


def test_timestep_embedding_matches_the_formula():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 8).double().numpy()
    freqs = 10000.0 ** (-np.arange(4) / 3)
    args = np.array([0, 1, 17, 999])[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], axis=1), rtol=1e-4, atol=1e-4)


def test_se_frozen_trains_only_the_expansion_and_quantum_trains_everything():
    x, t = _inputs()
    frozen = UNet(bottleneck="se_frozen", n_qubits=4)
    frozen(x, t).square().mean().backward()
    assert frozen.bottleneck_gate.squeeze.weight.grad is None
    assert frozen.bottleneck_gate.up.weight.grad.abs().sum() > 0
    quantum = UNet(bottleneck="quantum", n_qubits=4, n_layers=2, ansatz="rzry")
    quantum(x, t).square().mean().backward()
    assert quantum.bottleneck_gate.middle.weights.grad.abs().sum() > 0  # the circuit's weights learn
    assert quantum.bottleneck_gate.squeeze.weight.grad.abs().sum() > 0  # and gradient reaches its input
    assert quantum.enc1.weight.grad.abs().sum() > 0


def test_quantum_middle_is_the_circuit():
    from qdiff_lib.quantum import QuantumLayer

    model = UNet(bottleneck="quantum", n_qubits=4, n_layers=2, ansatz="rzry", seed=3)
    reference = QuantumLayer(4, 2, ansatz="rzry", generator=3)
    angles = torch.linspace(-2, 2, 12).reshape(3, 4)
    torch.testing.assert_close(model.bottleneck_gate.middle(angles), reference(angles))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bottleneck": "classical"},
         r"unknown bottleneck 'classical'; allowed: \['none', 'se', 'se_frozen', 'quantum', 'fourier'\]"),
        ({"gate": "softmax"}, r"unknown gate 'softmax'; allowed: \['product', 'sigmoid'\]"),
        ({"nonlinearity": "gelu"}, r"unknown nonlinearity 'gelu'; allowed: \['tanh', 'relu', 'cos'\]"),
        ({"angle_scaling": "pi"}, r"unknown angle_scaling 'pi'; allowed: \['none', 'pi_tanh'\]"),
        ({"n_qubits": 0}, "n_qubits must be a positive integer"),
        ({"in_channels": 0}, "in_channels must be a positive integer"),
    ],
)
def test_bad_configurations(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{"bottleneck": "se", **kwargs})


def test_bad_ansatz_for_the_quantum_arm():
    with pytest.raises(ValueError, match="bogus"):
        UNet(bottleneck="quantum", n_qubits=4, ansatz="bogus")


def test_shape_errors():
    model = UNet(bottleneck="none")
    with pytest.raises(ValueError, match=r"expected \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"t: expected \(2,\), got \(3,\)"):
        model(torch.zeros(2, 1, 28, 28), torch.zeros(3, dtype=torch.long))
