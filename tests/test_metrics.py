"""Tests of qdiff_lib.metrics: cross-checks against scipy, scikit-learn, hand-written estimators and analytic
results. No test here trains the classifier: feature spaces are synthetic or a seeded, untrained SmallCNN."""

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.neighbors import NearestNeighbors

from qdiff_lib import data, metrics
from qdiff_lib.classifier import ClassifierRecipe, SmallCNN, TrainedClassifier
from qdiff_lib.metrics import PrecomputedFeatures


def _frechet_scipy(x: np.ndarray, y: np.ndarray) -> float:
    """Independent Frechet distance of Gaussians fitted to x and y (scipy.linalg.sqrtm)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Independent unbiased MMD^2 with KID's kernel (x.y/d + 1)^3 (Gretton et al. 2012, eq. 3)."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).mean()
    )


@pytest.fixture(scope="module")
def random_clf() -> TrainedClassifier:
    """An untrained, seeded SmallCNN for MNIST: a fixed feature map, enough to separate digit classes."""
    torch.manual_seed(0)
    net = SmallCNN(1, 10)
    return TrainedClassifier(net, "mnist", 0.0, "untrained (test fixture)", ClassifierRecipe())


@pytest.fixture(scope="module")
def mnist_digits():
    train3, ref3 = data.few_shot_split("mnist", 3, n_train=64, n_ref=300, seed=0)
    ref7 = data.load_images("mnist", "test", label=7, n=150, seed=0)
    return train3, ref3, ref7


def test_fid_equals_scipy_frechet_distance_on_sample_moments():
    g = np.random.default_rng(0)
    x = g.normal(size=(300, 6)) @ g.normal(size=(6, 6))
    y = g.normal(size=(250, 6)) @ g.normal(size=(6, 6)) + 0.5
    ours = metrics.fid_from_features(torch.from_numpy(x), torch.from_numpy(y))
    assert ours == pytest.approx(_frechet_scipy(x, y), rel=1e-6)


def test_fid_converges_to_analytic_gaussian_frechet_distance():
    # N(mu1, diag(s1)) vs N(mu2, diag(s2)): d^2 = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    d = 5
    mu1, mu2 = torch.zeros(d), torch.linspace(0.0, 1.0, d)
    s1, s2 = torch.linspace(0.5, 2.0, d), torch.linspace(2.0, 0.5, d)
    analytic = float(((mu1 - mu2) ** 2).sum() + ((s1.sqrt() - s2.sqrt()) ** 2).sum())
    g = torch.Generator().manual_seed(0)
    x = mu1 + s1.sqrt() * torch.randn(40000, d, generator=g, dtype=torch.float64)
    y = mu2 + s2.sqrt() * torch.randn(40000, d, generator=g, dtype=torch.float64)
    assert metrics.fid_from_features(x, y) == pytest.approx(analytic, rel=0.03)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular covariances
def test_fid_through_a_custom_feature_module_matches_features_path(random_clf, mnist_digits):
    train3, ref3, ref7 = mnist_digits
    ours = metrics.fid(ref7, ref3, random_clf.feature)
    f7 = metrics.extract_features(ref7, random_clf.feature).numpy()
    f3 = metrics.extract_features(ref3, random_clf.feature).numpy()
    assert ours == pytest.approx(_frechet_scipy(f7, f3), rel=1e-4)


def test_kid_full_subset_equals_independent_unbiased_mmd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    y = torch.randn(40, 8, generator=g, dtype=torch.float64) + 0.3
    r = metrics.kid(x[:, :, None, None], y[:, :, None, None], PrecomputedFeatures(8), n_subsets=3)
    assert r["subset_size"] == 40
    assert r["mean"] == pytest.approx(_mmd2_unbiased(x.numpy(), y.numpy()), rel=1e-9)
    assert r["subset_std"] == pytest.approx(0.0, abs=1e-12)  # every subset is the full set


def test_kid_jackknife_se_equals_brute_force_leave_one_out():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)
    xn, yn = x.numpy(), y.numpy()
    tx = np.array([_mmd2_unbiased(np.delete(xn, i, 0), yn) for i in range(12)])
    ty = np.array([_mmd2_unbiased(xn, np.delete(yn, j, 0)) for j in range(9)])
    var = 11 / 12 * ((tx - tx.mean()) ** 2).sum() + 8 / 9 * ((ty - ty.mean()) ** 2).sum()
    assert metrics.kid_jackknife_se(x, y) == pytest.approx(math.sqrt(var), rel=1e-9)


def test_kid_near_zero_within_a_class_and_clearly_larger_between_classes(random_clf, mnist_digits):
    _, ref3, ref7 = mnist_digits
    same = metrics.kid(ref3[:150], ref3[150:], random_clf.feature, n_subsets=20, subset_size=100)
    between = metrics.kid(ref7, ref3[150:], random_clf.feature, n_subsets=20, subset_size=100)
    assert abs(same["mean"]) < 3 * same["se"]
    assert between["mean"] > 10 * between["se"]
    assert between["mean"] > 20 * abs(same["mean"])


def test_kid_is_seeded_and_leaves_global_rng_alone(random_clf, mnist_digits):
    _, ref3, ref7 = mnist_digits
    state = torch.get_rng_state()
    a = metrics.kid(ref7, ref3, random_clf.feature, n_subsets=5, subset_size=50, seed=4)
    assert torch.equal(state, torch.get_rng_state())
    assert a == metrics.kid(ref7, ref3, random_clf.feature, n_subsets=5, subset_size=50, seed=4)
    assert a["mean"] != metrics.kid(ref7, ref3, random_clf.feature, n_subsets=5, subset_size=50, seed=5)["mean"]


def test_precision_recall_match_sklearn_knn_implementation():
    g = np.random.default_rng(3)
    fg, fr = g.normal(size=(60, 5)), g.normal(size=(60, 5)) * 1.5 + 0.4
    k = 3
    # independent: k-th neighbour radius with sklearn (the point itself is neighbour 0)
    r_real = NearestNeighbors(n_neighbors=k + 1).fit(fr).kneighbors(fr)[0][:, k]
    r_gen = NearestNeighbors(n_neighbors=k + 1).fit(fg).kneighbors(fg)[0][:, k]
    dist = np.linalg.norm(fg[:, None] - fr[None], axis=2)
    precision = np.mean([(dist[i] <= r_real).any() for i in range(60)])
    recall = np.mean([(dist[:, j] <= r_gen).any() for j in range(60)])
    ours = metrics.precision_recall(torch.from_numpy(fg), torch.from_numpy(fr), k=k)
    assert ours["precision"]["mean"] == pytest.approx(precision)
    assert ours["recall"]["mean"] == pytest.approx(recall)
    assert 0 < precision < 1 and 0 < recall < 1


def test_precision_recall_limits():
    f = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
    same = metrics.precision_recall(f, f.clone())
    assert same["precision"]["mean"] == 1.0 and same["recall"]["mean"] == 1.0
    far = metrics.precision_recall(f, f + 100.0)
    assert far["precision"]["mean"] == 0.0 and far["recall"]["mean"] == 0.0


def test_class_consistency_wilson_interval():
    r = metrics.class_consistency(torch.tensor([3] * 8 + [5, 1]), label=3)
    p, n, z = 0.8, 10, 1.959964
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert r["mean"] == 0.8 and r["n"] == 10
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((centre - half, centre + half), rel=1e-5)


def test_memorization_flags_copies_and_not_held_out_images(mnist_digits):
    train3, ref3, _ = mnist_digits
    fresh = metrics.memorization(ref3[:100], ref3[100:], train3, n_boot=200)
    assert 0.8 < fresh["mean"] < 1.25 and not fresh["flag"]
    assert fresh["ci_low"] < 1.0 < fresh["ci_high"]
    copies = metrics.memorization(train3, ref3[100:], train3, n_boot=200)
    assert copies["flag"] and copies["mean"] == pytest.approx(1000.0) and copies["copy_fraction"] == 1.0
    noisy = train3 + 0.05 * torch.randn(train3.shape, generator=torch.Generator().manual_seed(0))
    assert metrics.memorization(noisy, ref3[100:], train3, n_boot=200)["flag"]


def test_fid_spread_redraws_only_the_reference(random_clf, mnist_digits):
    _, ref3, ref7 = mnist_digits
    a = metrics.fid_spread(ref7[:13], ref3, random_clf.feature, n_reference=100, n_draws=8, seed=0)
    b = metrics.fid_spread(ref7[:13], ref3, random_clf.feature, n_reference=100, n_draws=8, seed=0)
    assert a == b and len(a["values"]) == 8 and a["std"] > 0
    assert a["min"] <= a["q05"] <= a["q50"] <= a["q95"] <= a["max"]
    with pytest.raises(ValueError, match="n_reference"):
        metrics.fid_spread(ref7[:13], ref3, random_clf.feature, n_reference=10_000)


def test_inception_fid_missing_weights_says_what_and_where(tmp_path, monkeypatch):
    x = torch.zeros(4, 1, 28, 28)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as err:
        metrics.inception_fid(x, x, weights_path=missing)
    assert metrics.INCEPTION_WEIGHTS_URL in str(err.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=metrics.INCEPTION_WEIGHTS_FILE) as err:
        metrics.inception_fid(x, x)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in str(err.value)


def test_inception_fid_without_torch_fidelity_says_so(tmp_path):
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch-fidelity is installed here")
    weights = tmp_path / metrics.INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"")
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
        metrics.inception_fid(x, x, weights_path=weights)


def test_held_out_reference_is_disjoint_from_training_images():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)
        train, _ = data.few_shot_split("pathmnist", 1, n_train=20, n_ref=5, seed=0)
    with pytest.warns(data.DataNotice) if data.find_file("pathmnist.npz") is None else contextlib.nullcontext():
        ref = metrics.held_out_reference("pathmnist", 1, train, n=30, seed=0)
    assert ref.shape == (30, 3, 28, 28)
    assert torch.cdist(ref.flatten(1), train.flatten(1)).min() > 0


def test_evaluate_returns_all_metrics_json_ready_and_catches_copying(random_clf, mnist_digits):
    train3, ref3, _ = mnist_digits
    kw = dict(dataset="mnist", label=3, train_images=train3, n_subsets=10, classifier=random_clf)
    fresh = metrics.evaluate(ref3[:60], reference=ref3[60:], **kw)
    for key in ("kid", "fid", "precision", "recall", "class_consistency", "memorization"):
        assert "mean" in fresh[key], key
    assert fresh["kid"]["subset_size"] == 60 and fresh["n_reference"] == 240
    json.dumps(fresh, allow_nan=False)
    assert not fresh["memorization"]["flag"]
    copied = metrics.evaluate(train3, reference=ref3[60:], **kw)
    assert copied["memorization"]["flag"] and copied["memorization_features"]["flag"]
    # default reference: held-out test images of the class, seeded
    auto = metrics.evaluate(ref3[:20], n_reference=100, **kw)
    assert auto["n_reference"] == 100
    with pytest.raises(ValueError, match=r"expected \(B, 1, 28, 28\)"):
        metrics.evaluate(torch.zeros(10, 3, 28, 28), reference=ref3, **kw)


def test_small_sample_bias_fid_positive_and_shrinking_kid_centred(random_clf, mnist_digits):
    _, ref3, _ = mnist_digits
    rec = metrics.small_sample_bias(ref3, random_clf.feature, sizes=(13, 100), n_draws=6, seed=0)
    assert [r["n"] for r in rec] == [13, 100]
    assert rec[0]["fid_mean"] > 2 * rec[1]["fid_mean"] > 0  # same distribution: FID > 0, shrinking with N
    for r in rec:  # KID: unbiased, centred on 0 within its spread over draws
        assert abs(r["kid_mean"]) < 3 * r["kid_std"] / math.sqrt(6) + 1e-12
    with pytest.raises(ValueError, match="half the pool"):
        metrics.small_sample_bias(ref3, random_clf.feature, sizes=(200,))


def test_density_and_coverage_match_hand_computation():
    g = np.random.default_rng(5)
    fg, fr = g.normal(size=(40, 3)), g.normal(size=(40, 3)) + 0.5
    k = 3
    r_real = NearestNeighbors(n_neighbors=k + 1).fit(fr).kneighbors(fr)[0][:, k]
    dist = np.linalg.norm(fg[:, None] - fr[None], axis=2)
    density = (dist <= r_real[None]).sum() / (k * 40)  # Naeem et al. 2020, eq. for density
    coverage = (dist <= r_real[None]).any(0).mean()
    ours = metrics.precision_recall(torch.from_numpy(fg), torch.from_numpy(fr), k=k)
    assert ours["density"]["mean"] == pytest.approx(density)
    assert ours["coverage"]["mean"] == pytest.approx(coverage)


def _blobs(n: int, seed: int, centres: torch.Tensor) -> torch.Tensor:
    """``n`` points around random rows of ``centres`` (a mixture with unit noise), seeded."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(centres), (n,), generator=g)
    return (centres[pick] + 0.3 * torch.randn(n, centres.shape[1], generator=g, dtype=torch.float64)) / 10


def test_memorization_floor_from_is_seeded_and_equals_memorization_on_the_whole_pool():
    centres = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    train, ref, pool = _blobs(30, 1, centres), _blobs(200, 2, centres), _blobs(300, 3, centres)
    a = metrics.memorization_floor_from(train, ref, pool, n_samples=100, draws=8, seed=4)
    b = metrics.memorization_floor_from(train, ref, pool, n_samples=100, draws=8, seed=4)
    c = metrics.memorization_floor_from(train, ref, pool, n_samples=100, draws=8, seed=5)
    assert a == b and a["scores"] != c["scores"]
    assert a["std"] > 0 and a["q025"] <= a["mean"] <= a["q975"] and len(a["scores"]) == 8
    # one draw of the whole pool: exactly the score memorization() gives the pool as samples
    whole = metrics.memorization_floor_from(train, ref, pool, n_samples=len(pool), draws=1, seed=0)
    assert whole["mean"] == pytest.approx(metrics.memorization(pool, ref, train)["mean"], rel=1e-12)
    with pytest.raises(ValueError, match="n_samples"):
        metrics.memorization_floor_from(train, ref, pool, n_samples=len(pool) + 1)


def test_memorization_floor_from_is_near_one_for_fresh_draws_and_large_for_copies():
    centres = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    train, ref = _blobs(30, 1, centres), _blobs(400, 2, centres)
    fresh = metrics.memorization_floor_from(train, ref, _blobs(2000, 3, centres), n_samples=200, draws=20, seed=0)
    assert abs(fresh["mean"] - 1) < 0.1 and not fresh["mean"] > metrics.MEMORIZATION_THRESHOLD
    copies = train[torch.arange(400) % len(train)]  # the training images themselves, repeated
    copied = metrics.memorization_floor_from(train, ref, copies, n_samples=200, draws=5, seed=0)
    assert copied["mean"] == pytest.approx(1000)  # the denominator's floor: 1e-3 of the reference median
    near = metrics.memorization_floor_from(train, ref, copies + 1e-3 * torch.randn(copies.shape, dtype=torch.float64,
                                           generator=torch.Generator().manual_seed(1)), n_samples=200, draws=5)
    assert near["mean"] > 10 * metrics.MEMORIZATION_THRESHOLD


def test_memorization_floor_of_a_study_run_uses_its_split_and_fresh_images():
    floor = metrics.memorization_floor("mnist", 3, n_train=10, n_ref=50, n_samples=100, seed=0, draws=4)
    again = metrics.memorization_floor("mnist", 3, n_train=10, n_ref=50, n_samples=100, seed=0, draws=4)
    assert floor == again
    assert (floor["n_train"], floor["n_reference"], floor["n_samples"]) == (10, 50, 100)
    assert 0.7 < floor["mean"] < 1.3  # real images of the digit: no copying
