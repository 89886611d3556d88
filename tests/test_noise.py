"""Tests of qdiff_lib.noise: circuits against analytic Born distributions and PennyLane channels, exact and
empirical moments of every mapping, a KS test that only the Gaussianising mapping passes, determinism, the
spatial layout of correlations, the hybrid mixture and the factory."""

import itertools
import math

import numpy as np
import pennylane as qml
import pytest
import torch
from scipy import stats

from qdiff_lib.noise import (
    CIRCUITS,
    HYBRID_WEIGHTS,
    MAPPINGS,
    NOISE_SOURCES,
    GaussianNoise,
    HybridNoise,
    NoiseSource,
    QuantumNoise,
    make_noise_source,
    noise_circuit,
)


def chain_probs(n: int, gamma: float) -> np.ndarray:
    """Analytic Born distribution of the entangled circuit: a fair first bit, then flips w.p. sin^2(gamma/2)."""
    flip = math.sin(gamma / 2) ** 2
    probs = np.empty(2**n)
    for index, bits in enumerate(itertools.product((0, 1), repeat=n)):  # wire 0 most significant
        p = 0.5
        for a, b in itertools.pairwise(bits):
            p *= flip if a != b else 1 - flip
        probs[index] = p
    return probs


def spin_moments(probs: np.ndarray, n: int) -> np.ndarray:
    """<Z_i Z_j> for all pairs, from a probability vector."""
    spins = 1 - 2 * np.array(list(itertools.product((0, 1), repeat=n)))
    return spins.T @ (probs[:, None] * spins)


# ----------------------------------------------------------------------------------------------- circuits


def test_hadamard_circuit_is_uniform():
    probs = np.asarray(noise_circuit("hadamard", 5)())
    np.testing.assert_allclose(probs, np.full(32, 1 / 32), atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.7, math.pi / 2, 2.5])
def test_entangled_circuit_matches_markov_chain(gamma):
    probs = np.asarray(noise_circuit("entangled", 5, entangling_angle=gamma)())
    np.testing.assert_allclose(probs, chain_probs(5, gamma), atol=1e-12)
    zz = spin_moments(probs, 5)
    expected = np.cos(gamma) ** np.abs(np.subtract.outer(np.arange(5), np.arange(5)))
    np.testing.assert_allclose(zz, expected, atol=1e-12)


def test_readout_error_matches_pennylane_bitflip():
    n, p, gamma = 3, 0.13, 0.9

    @qml.qnode(qml.device("default.mixed", wires=n))
    def with_bitflip():
        qml.Hadamard(wires=0)
        for w in range(1, n):
            qml.CNOT(wires=[w - 1, w])
            qml.RY(gamma, wires=w)
        for w in range(n):
            qml.BitFlip(p, wires=w)
        return qml.probs(wires=range(n))

    noise = QuantumNoise("entangled", n_qubits=n, qubits_per_value=1, entangling_angle=gamma, readout_error=p)
    np.testing.assert_allclose(noise.probs.numpy(), np.asarray(with_bitflip()), atol=1e-12)


def test_depolarizing_damps_correlation_analytically():
    # Heisenberg picture: Z0 Z1 -> Z1 through the CNOT; the three channels on its path each damp by 1 - 4p/3.
    gamma, p = 0.8, 0.05
    noise = QuantumNoise("entangled", n_qubits=2, qubits_per_value=1, entangling_angle=gamma, depolarizing=p)
    zz = spin_moments(noise.probs.numpy(), 2)
    assert zz[0, 1] == pytest.approx(math.cos(gamma) * (1 - 4 * p / 3) ** 3, abs=1e-10)
    assert zz[0, 0] == pytest.approx(1.0)


def test_circuit_is_drawable():
    drawing = qml.draw(QuantumNoise("entangled", n_qubits=3, qubits_per_value=1).qnode)()
    assert "H" in drawing and "RY" in drawing and "Probs" in drawing


# ----------------------------------------------------------------------------------------------- mappings


@pytest.mark.parametrize("circuit,mapping", list(itertools.product(CIRCUITS, MAPPINGS)))
def test_moments_exact_and_empirical(circuit, mapping):
    noise = QuantumNoise(circuit, n_qubits=8, mapping=mapping)
    exact_mean = noise.probs @ noise.table
    exact_var = noise.probs @ noise.table**2
    np.testing.assert_allclose(exact_mean.numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(exact_var.numpy(), 1.0, atol=1e-12)
    x = noise.sample((200_000,), generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32 and x.shape == (200_000,)
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.var()) - 1) < 0.02


def test_binomial_mapping_is_scaled_binomial_for_hadamard():
    k = 6
    noise = QuantumNoise("hadamard", n_qubits=k, mapping="binomial", qubits_per_value=k)
    levels, inverse = torch.unique(noise.table[:, 0], return_inverse=True)
    masses = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, inverse, noise.probs)
    np.testing.assert_allclose(levels.numpy(), (2 * np.arange(k + 1) - k) / math.sqrt(k), atol=1e-12)
    np.testing.assert_allclose(masses.numpy(), stats.binom.pmf(np.arange(k + 1), k, 0.5), atol=1e-12)


@pytest.mark.parametrize("circuit,mapping", [("hadamard", "binomial"), ("entangled", "gaussianize")])
def test_value_distribution_is_the_law_of_the_samples(circuit, mapping):
    noise = QuantumNoise(circuit, n_qubits=8, mapping=mapping, qubits_per_value=4)
    levels, masses = noise.value_distribution()
    assert float(masses.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(masses @ levels) == pytest.approx(0.0, abs=1e-6)
    assert float(masses @ levels**2) == pytest.approx(1.0, abs=1e-6)
    # one value per shot keeps the draws independent; slot 1 reads qubits 1, 3, 5, 7, the translate of slot 0's
    # 0, 2, 4, 6, and the chain is translation invariant in law, so every slot has the law of the mixture
    x = noise.sample((200_000,), generator=torch.Generator().manual_seed(5)).double()[:: noise.values_per_shot]
    observed, counts = torch.unique(x, return_counts=True)
    assert set(observed.tolist()) <= set(levels.tolist())
    expected = torch.zeros_like(masses)
    expected[torch.searchsorted(levels, observed)] = counts.double()
    assert stats.chisquare(expected.numpy(), masses.numpy() * len(x)).pvalue > 1e-3
    if circuit == "hadamard":  # every value slot has the same 5 binomial levels
        np.testing.assert_allclose(masses.numpy(), stats.binom.pmf(np.arange(5), 4, 0.5), atol=1e-12)


def test_gaussianize_mapping_is_normal_quantile_for_hadamard():
    k = 5
    noise = QuantumNoise("hadamard", n_qubits=k, mapping="gaussianize", qubits_per_value=k)
    levels = stats.norm.ppf((np.arange(2**k) + 0.5) / 2**k)
    levels /= np.sqrt(np.mean(levels**2))
    np.testing.assert_allclose(noise.table[:, 0].numpy(), levels, atol=1e-12)


def test_only_gaussianize_passes_ks_against_normal():
    tolerance = 0.02  # gaussianize with k=6 is a 64-level quantisation: KS about 1/128 plus sampling error
    ks = {}
    for mapping in MAPPINGS:
        noise = QuantumNoise("hadamard", n_qubits=12, mapping=mapping)
        x = noise.sample((100_000,), generator=torch.Generator().manual_seed(1)).double().numpy()
        ks[mapping] = stats.kstest(x, "norm").statistic
    assert ks["gaussianize"] < tolerance, ks
    assert ks["binomial"] > 5 * tolerance and ks["integer"] > 2 * tolerance, ks


@pytest.mark.parametrize("gamma,readout", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.1)])
def test_sampler_draws_the_born_distribution(gamma, readout):
    n = 4  # mapping "integer" with k = n: the value is a bijection of the measured outcome
    noise = QuantumNoise("entangled", n_qubits=n, mapping="integer", qubits_per_value=n, entangling_angle=gamma,
                         readout_error=readout)
    # the alias tables encode the Born distribution exactly
    accept, alias = noise._accept, noise._alias
    encoded = (accept + torch.zeros(2**n, dtype=torch.float64).index_add_(0, alias, 1 - accept)) / 2**n
    np.testing.assert_allclose(encoded.numpy(), noise.probs.numpy(), atol=1e-14)
    # and the sampler follows them: chi-square goodness of fit on 100k shots
    x = noise.sample((100_000,), generator=torch.Generator().manual_seed(2))
    outcome = torch.searchsorted(noise.table[:, 0].float(), x)  # table is increasing in the outcome integer
    counts = torch.bincount(outcome, minlength=2**n).numpy()
    support = noise.probs.numpy() > 0
    assert counts[~support].sum() == 0  # GHZ (gamma = 0): only 0000 and 1111
    expected = noise.probs.numpy()[support] * counts.sum()
    assert stats.chisquare(counts[support], expected).pvalue > 1e-3


def test_sample_is_deterministic_for_a_generator():
    noise = QuantumNoise("entangled", n_qubits=6)
    a = noise.sample((4, 1, 7, 7), generator=torch.Generator().manual_seed(3))
    b = noise.sample((4, 1, 7, 7), generator=torch.Generator().manual_seed(3))
    c = noise.sample((4, 1, 7, 7), generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, 1, 7, 7) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert noise.sample((0, 3)).shape == (0, 3)


def test_entangled_correlation_lands_on_horizontal_neighbours():
    n, k, gamma = 8, 4, math.pi / 3
    noise = QuantumNoise("entangled", n_qubits=n, mapping="binomial", qubits_per_value=k, entangling_angle=gamma)
    # independent check of the exact covariance: spins of value j sit on qubits j, j + 2, j + 4, j + 6
    zz = np.cos(gamma) ** np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    q0, q1 = np.arange(0, n, 2), np.arange(1, n, 2)
    expected = zz[np.ix_(q0, q1)].sum() / zz[np.ix_(q0, q0)].sum()
    cov = noise.value_covariance()
    assert float(cov[0, 1]) == pytest.approx(expected, abs=1e-12)
    field = noise.sample((4000, 28, 28), generator=torch.Generator().manual_seed(0)).double()
    within = torch.corrcoef(torch.stack([field[..., 0::2].reshape(-1), field[..., 1::2].reshape(-1)]))[0, 1]
    across = torch.corrcoef(torch.stack([field[..., 1:-1:2].reshape(-1), field[..., 2::2].reshape(-1)]))[0, 1]
    assert float(within) == pytest.approx(expected, abs=0.01)
    assert abs(float(across)) < 0.01
    hadamard = QuantumNoise("hadamard", n_qubits=n, mapping="binomial", qubits_per_value=k)
    np.testing.assert_allclose(hadamard.value_covariance().numpy(), np.eye(2), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"circuit": "ghz"}, r"unknown circuit 'ghz'; allowed: \['hadamard', 'entangled'\]"),
        ({"mapping": "normal"}, r"unknown mapping 'normal'; allowed: \['binomial', 'gaussianize', 'integer'\]"),
        ({"n_qubits": 0}, "n_qubits must be an integer in"),
        ({"n_qubits": 21}, "n_qubits must be an integer in"),
        ({"n_qubits": 6, "qubits_per_value": 4}, "positive divisor of n_qubits=6"),
        ({"readout_error": 0.6}, r"readout_error must be in \[0, 0.5\]"),
        ({"depolarizing": -0.1}, r"depolarizing must be in \[0, 1.0\]"),
        ({"n_qubits": 12, "depolarizing": 0.01}, "n_qubits must be <= 10"),
        ({"entangling_angle": float("nan")}, "entangling_angle must be finite"),
    ],
)
def test_quantum_noise_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantumNoise(**kwargs)


def test_bad_shape():
    with pytest.raises(ValueError, match="shape must be a tuple of non-negative integers"):
        QuantumNoise(n_qubits=4).sample((2, -1))


# ----------------------------------------------------------------------------------------------- hybrid


@pytest.mark.parametrize("weight", HYBRID_WEIGHTS)
def test_hybrid_lambda_endpoints(weight):
    hybrid = HybridNoise(QuantumNoise(n_qubits=4), weight=weight, timesteps=11, lambda_start=0.2, lambda_end=0.9)
    assert hybrid.lambdas.shape == (11,) and hybrid.lambdas.dtype == torch.float64
    assert float(hybrid.lambdas[0]) == pytest.approx(0.2) and float(hybrid.lambdas[-1]) == pytest.approx(0.9)
    assert float(hybrid.lambdas[5]) == pytest.approx(0.55)  # both ramps pass through the midpoint at T/2
    assert bool((hybrid.lambdas.diff() > 0).all())


def test_hybrid_has_unit_variance_at_every_t():
    T, per_t = 6, 80_000  # adjacent values correlate (0.76): the standard error of a mean is about 0.005
    quantum = QuantumNoise("entangled", n_qubits=8, mapping="binomial")
    hybrid = HybridNoise(quantum, timesteps=T)
    t = torch.arange(T).repeat_interleave(8)
    x = hybrid.sample((len(t), per_t // 8), generator=torch.Generator().manual_seed(0), t=t).double()
    per_step = x.reshape(T, -1)
    np.testing.assert_allclose(per_step.mean(1).numpy(), 0.0, atol=0.025)
    np.testing.assert_allclose(per_step.var(1).numpy(), 1.0, atol=0.03)


def test_hybrid_endpoints_are_the_pure_sources():
    quantum = QuantumNoise(n_qubits=6)
    hybrid = HybridNoise(quantum, timesteps=5)
    x = hybrid.sample((1, 50), generator=torch.Generator().manual_seed(7), t=torch.tensor([4]))
    assert torch.equal(x, quantum.sample((1, 50), generator=torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(7)
    quantum.sample((1, 50), generator=g)  # the hybrid draws the quantum part first
    y = hybrid.sample((1, 50), generator=torch.Generator().manual_seed(7), t=torch.tensor([0]))
    assert torch.equal(y, torch.randn((1, 50), generator=g))


@pytest.mark.parametrize(
    "t,match",
    [
        (None, "needs the timesteps t"),
        (torch.tensor([0.5, 1.0]), "t must be an integer tensor"),
        (torch.tensor([0, 1, 2]), r"expected t of shape \(B,\) = \(2,\), got \(3,\)"),
        (torch.tensor([0, 5]), r"t must lie in \[0, 4\]"),
    ],
)
def test_hybrid_bad_t(t, match):
    hybrid = HybridNoise(QuantumNoise(n_qubits=4), timesteps=5)
    with pytest.raises(ValueError, match=match):
        hybrid.sample((2, 3), t=t)


def test_hybrid_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown hybrid weight 'step'; allowed: \['linear', 'cosine'\]"):
        HybridNoise(QuantumNoise(n_qubits=4), weight="step")
    with pytest.raises(ValueError, match=r"lambda_end must be in \[0, 1.0\]"):
        HybridNoise(QuantumNoise(n_qubits=4), lambda_end=1.5)


# ----------------------------------------------------------------------------------------------- factory


def test_factory_builds_every_source():
    sources = {name: make_noise_source(name, timesteps=10, n_qubits=4) if name != "gaussian" else
               make_noise_source(name, timesteps=10) for name in NOISE_SOURCES}
    assert isinstance(sources["gaussian"], GaussianNoise)
    assert isinstance(sources["quantum"], QuantumNoise) and sources["quantum"].n_qubits == 4
    assert isinstance(sources["hybrid"], HybridNoise) and sources["hybrid"].timesteps == 10
    t = torch.tensor([0, 9])
    for name, source in sources.items():
        assert isinstance(source, NoiseSource) and source.name == name
        x = source.sample((2, 1, 4, 4), generator=torch.Generator().manual_seed(0), t=t)
        assert x.shape == (2, 1, 4, 4) and x.dtype == torch.float32
    assert isinstance(make_noise_source("quantum"), QuantumNoise)  # usable with its defaults
    hybrid = make_noise_source("hybrid", timesteps=10, weight="cosine", lambda_end=0.5, mapping="binomial")
    assert hybrid.weight == "cosine" and hybrid.lambda_end == 0.5 and hybrid.quantum.mapping == "binomial"


def test_factory_errors():
    with pytest.raises(ValueError, match=r"unknown noise source 'qrng'; allowed: \['gaussian', 'quantum', 'hybrid'\]"):
        make_noise_source("qrng")
    with pytest.raises(ValueError, match=r"options \['n_qubits'\] do not apply to the gaussian"):
        make_noise_source("gaussian", n_qubits=4)
    with pytest.raises(TypeError):
        make_noise_source("quantum", weight="linear")
