"""The classical surrogate of the rzry circuit (qdiff_lib.surrogate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qdiff_lib.quantum import QuantumLayer, weight_shape
from qdiff_lib.surrogate import FourierSurrogate, surrogate_windows
from qdiff_lib.unet import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n_qubits, n_layers", [(1, 1), (4, 3), (8, 3), (16, 3), (16, 5), (5, 2)])
def test_weight_count_and_shape_equal_the_circuits(n_qubits, n_layers):
    surrogate = FourierSurrogate(n_qubits, n_layers)
    circuit = QuantumLayer(n_qubits, n_layers, ansatz="rzry")
    assert tuple(surrogate.weights.shape) == weight_shape("rzry", n_layers, n_qubits)
    assert FourierSurrogate.shape(n_layers, n_qubits) == weight_shape("rzry", n_layers, n_qubits)
    assert count_parameters(surrogate, trainable_only=True) == count_parameters(circuit, trainable_only=True)
    assert count_parameters(surrogate) == n_layers * n_qubits * 2
    assert len(surrogate.state_dict()) == 1  # the window index is not state


def test_windows():
    assert surrogate_windows(5, 4) == (
        ((0,), (1,), (2,), (3,), (4,)),
        ((0, 1), (1, 2), (2, 3), (3, 4), (4,)),
        ((0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4)),
        ((0, 1, 2), (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4), (3, 4)),
    )
    with pytest.raises(ValueError, match="need n_qubits >= 1 and n_layers >= 1"):
        surrogate_windows(0, 3)


def test_forward_matches_the_formula():
    n, L = 5, 3
    surrogate = FourierSurrogate(n, L, generator=4, dtype=torch.float64)
    x = torch.linspace(-3, 3, 4 * n, dtype=torch.float64).reshape(4, n)
    w = surrogate.weights.detach().numpy()
    theta, amp = w[..., 0], w[..., 1]
    xn = x.numpy()
    expected = np.zeros((4, n))
    for j in range(n):
        for layer, row in enumerate(surrogate_windows(n, L)):
            expected[:, j] += amp[layer, j] * np.prod([np.cos(xn[:, i] - theta[layer, i]) for i in row[j]], axis=0)
        expected[:, j] /= max(1.0, np.abs(amp[:, j]).sum())
    np.testing.assert_allclose(surrogate(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bounded_zero_mean_and_only_the_circuits_frequencies():
    n, L = 3, 3
    surrogate = FourierSurrogate(n, L, generator=1, dtype=torch.float64)
    with torch.no_grad():
        surrogate.weights[..., 1] *= 40  # amplitudes far outside the unit ball: the l1 projection bounds the output
    x = (torch.rand(4000, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * 10
    assert surrogate(x).abs().max() <= 1.0
    # On a grid of 4 angles per input the DFT resolves frequencies -1, 0, 1, 2 without aliasing: the surrogate, like
    # the circuit, has no power at 2 (each input enters each term once) and none at 0 (zero mean over a period).
    grid = torch.arange(4, dtype=torch.float64) * (math.pi / 2)
    points = torch.cartesian_prod(*[grid] * n)  # (4^n, n)
    circuit = QuantumLayer(n, L, ansatz="rzry", dtype=torch.float64, generator=1)
    with torch.no_grad():
        for model in (surrogate, circuit):
            values = model(points).numpy().reshape([4] * n + [n])
            power = np.abs(np.fft.fftn(values, axes=tuple(range(n))) / 4**n) ** 2  # index k: frequency k (3 = -1)
            freq = np.stack(np.meshgrid(*[np.arange(4)] * n, indexing="ij"), -1)
            has_two = (freq == 2).any(-1)
            assert power[has_two].max() < 1e-24
            assert power[(0,) * n].max() < 1e-24  # mean over the period is 0
            assert power[~has_two].max() > 1e-4  # and the other frequencies are used


def test_deterministic_from_the_seed_and_global_rng_untouched():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, b = FourierSurrogate(6, 3, generator=2), FourierSurrogate(6, 3, generator=2)
    c = FourierSurrogate(6, 3, generator=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a.weights, b.weights) and not torch.equal(a.weights, c.weights)
    theta, amp = a.weights[..., 0], a.weights[..., 1]
    assert 0 <= theta.min() and theta.max() < 2 * math.pi and amp.abs().max() <= 1 / 3


def test_gradients_reach_weights_and_inputs():
    surrogate = FourierSurrogate(4, 2)
    x = torch.linspace(-1, 1, 8).reshape(2, 4).requires_grad_(True)
    surrogate(x).square().sum().backward()
    assert surrogate.weights.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match=r"expected \(B, n_qubits\) = \(B, 4\), got \(2, 3\)"):
        FourierSurrogate(4, 2)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unsupported dtype"):
        FourierSurrogate(4, 2, dtype=torch.float16)


def test_light_cone_of_the_circuit():
    """The premise of the windows: <Z_j> of the rzry circuit depends on inputs 0 .. j + L - 1 only."""
    n, L = 6, 2
    circuit = QuantumLayer(n, L, ansatz="rzry", dtype=torch.float64, generator=0)
    x = torch.rand(3, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 6 - 3
    jac = torch.autograd.functional.jacobian(lambda v: circuit(v).sum(0), x).abs().amax(1)  # (out j, input i)
    reach = torch.arange(n)[None, :] <= torch.arange(n)[:, None] + L - 1
    assert (jac[~reach] < 1e-12).all() and (jac[reach] > 1e-8).all()


def _r2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Pooled R^2 over every output: 1 - SSE / SS around the held-out means."""
    return float(1 - (pred - target).square().sum() / (target - target.mean(0)).square().sum())


def _fit(model: FourierSurrogate, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> FourierSurrogate:
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    return model


@pytest.mark.parametrize("n_qubits", [4, 8])
def test_fits_the_circuit_at_initialisation_better_than_chance(n_qubits):
    """A few hundred Adam steps on 1024 seeded uniform angles; held-out R^2 against a surrogate trained on shuffled
    targets (the chance level) and against predicting the training mean, for three circuits."""
    L, scores = 3, []
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        x = (torch.rand(1536, n_qubits, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
        with torch.no_grad():
            y = QuantumLayer(n_qubits, L, ansatz="rzry", dtype=torch.float64, generator=seed)(x)
        x, y = x.float(), y.float()
        (x_train, x_test), (y_train, y_test) = x.split([1024, 512]), y.split([1024, 512])
        fitted = _fit(FourierSurrogate(n_qubits, L, generator=seed), x_train, y_train)
        shuffled = _fit(FourierSurrogate(n_qubits, L, generator=seed), x_train,
                        y_train[torch.randperm(1024, generator=torch.Generator().manual_seed(seed))])
        with torch.no_grad():
            r2, r2_chance = _r2(fitted(x_test), y_test), _r2(shuffled(x_test), y_test)
            mse, mse_mean = (fitted(x_test) - y_test).square().mean(), (y_train.mean(0) - y_test).square().mean()
        assert r2_chance < 0.05
        assert r2 > r2_chance + 0.05 and mse < mse_mean, (seed, r2, r2_chance)
        scores.append(r2)
    assert np.median(scores) > 0.3, scores
