"""Tests of qdiff_lib.metrics.calibration and the speckle metric: KID against torchmetrics on the same features, the
normalised score on constructed cases, monotone degradation curves in MNIST classifier features (the cached
classifier; small samples), the speckle metric on real digits, and the paper's protocol."""

import json
import warnings

import numpy as np
import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from qdiff_lib import data, metrics
from qdiff_lib.classifier import get_classifier
from qdiff_lib.metrics import PrecomputedFeatures, calibration


@pytest.fixture(scope="module")
def clf():
    return get_classifier("mnist", progress=False)


@pytest.fixture(scope="module")
def digits():
    return data.load_images("mnist", "test", label=3, n=200, seed=0), data.load_images("mnist", "test", 8, n=100)


def test_kid_from_features_equals_torchmetrics_on_the_same_features(clf, digits):
    threes, eights = digits
    f3, f8 = metrics.extract_features(threes, clf.feature), metrics.extract_features(eights, clf.feature)
    for a, b in ((f3[:100], f3[100:]), (f8, f3[:100])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchmetrics: "will save all extracted features"
            tm = KernelInceptionDistance(feature=PrecomputedFeatures(a.shape[1]), subsets=1, subset_size=len(a))
        tm.update(b[:, :, None, None], real=True)
        tm.update(a[:, :, None, None], real=False)
        expected = float(tm.compute()[0])  # one subset of all images: the full-sample unbiased MMD^2
        assert calibration.kid_from_features(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # and the value the study reports (metrics.kid, through the classifier's feature module)
    full = metrics.kid(eights, threes[:100], clf.feature, n_subsets=1)
    assert full["mean"] == pytest.approx(calibration.kid_from_features(f8, f3[:100]), rel=1e-9)


def test_normalised_score_on_constructed_cases():
    score = calibration.normalised_score
    # lower is better (KID-like): floor 2, ceiling 10
    assert score(2.0, 2.0, 10.0) == 0.0 and score(10.0, 2.0, 10.0) == 1.0
    assert score(6.0, 2.0, 10.0) == 0.5 and score(0.0, 2.0, 10.0) == -0.25
    # higher is better (precision-like): floor 0.9, ceiling 0.1; a worse value scores higher
    assert score(0.9, 0.9, 0.1) == 0.0 and score(0.1, 0.9, 0.1) == 1.0
    assert score(0.5, 0.9, 0.1) == pytest.approx(0.5)
    values = np.linspace(0.0, 1.0, 11)
    assert np.all(np.diff(score(values, 0.9, 0.1)) < 0) and np.all(np.diff(score(values, 0.1, 0.9)) > 0)
    with pytest.raises(ValueError, match=r"floor == ceiling \(0.3 and 0.3\)"):
        score(0.5, 0.3, 0.3)
    with pytest.raises(ValueError, match="finite"):
        score(0.5, float("nan"), 1.0)


def test_normalised_score_zero_at_real_floor_and_one_at_other_class_ceiling_on_constructed_features():
    # constructed feature sets: the class is N(0, I), the "other class" N(1.5, I); samples of the class score 0,
    # samples of the other class 1, a half-and-half mixture strictly between (KID, FID, precision)
    g = torch.Generator().manual_seed(0)
    ref, same, other = (torch.randn(200, 8, generator=g, dtype=torch.float64) for _ in range(3))
    other = other + 1.5
    mix = torch.cat([same[:100], other[:100]])
    p = torch.zeros(200, dtype=torch.long)
    floor, ceil, mid = (calibration.feature_metrics(f, ref, p, 0) for f in (same, other, mix))
    for m in ("kid", "fid", "precision", "recall"):
        assert calibration.normalised_score(floor[m], floor[m], ceil[m]) == 0.0
        assert calibration.normalised_score(ceil[m], floor[m], ceil[m]) == 1.0
        if m != "recall":  # half the samples still cover the real images: recall stays at its floor, rightly
            assert 0.05 < calibration.normalised_score(mid[m], floor[m], ceil[m]) < 0.95, m
    assert abs(calibration.normalised_score(mid["recall"], floor["recall"], ceil["recall"])) < 0.1


def test_degradation_curves_monotone_in_mnist_features(clf):
    kinds = ("gaussian", "blur", "speckle", "other_class")
    strengths = {"gaussian": (0.0, 0.2, 0.4, 0.8), "blur": (0.0, 0.75, 1.5), "speckle": (0.0, 0.02, 0.1),
                 "other_class": (0.0, 0.5, 1.0)}
    recs = calibration.degradation_curves("mnist", 3, kinds, strengths, n_samples=100, n_reference=100, draws=1,
                                          seed=0, other_label=8, classifier=clf)
    by = {kind: [r for r in recs if r["kind"] == kind] for kind in kinds}
    assert [r["strength"] for r in by["gaussian"]] == [0.0, 0.2, 0.4, 0.8]
    for kind in ("gaussian", "blur", "other_class"):
        kid = [r["kid"]["mean"] for r in by[kind]]
        assert np.all(np.diff(kid) > 0), (kind, kid)
        cc = [r["class_consistency"]["mean"] for r in by[kind]]
        assert cc[-1] < cc[0], (kind, cc)
    sp = [r["speckle"]["mean"] for r in by["speckle"]]
    assert abs(sp[0]) < 1e-3 and np.all(np.diff(sp) > 0), sp
    json.dumps(recs, allow_nan=False)


def test_degrade_shapes_ranges_and_seeding(digits):
    threes, eights = digits
    x = threes[:20]
    for kind in calibration.DEGRADATIONS:
        y = calibration.degrade(x, kind, 0.5, torch.Generator().manual_seed(1), other=eights)
        assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1, kind
        assert torch.equal(calibration.degrade(x, kind, 0.0, other=eights), x)
    a = calibration.degrade(x, "gaussian", 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, calibration.degrade(x, "gaussian", 0.3, torch.Generator().manual_seed(1)))
    assert torch.equal(calibration.degrade(x, "other_class", 0.5, other=eights)[:10], eights[:10])
    with pytest.raises(ValueError, match="unknown degradation 'jpeg'"):
        calibration.degrade(x, "jpeg", 0.1)


def test_speckle_zero_on_clean_real_digits_and_rising_with_added_speckle(digits):
    threes, _ = digits
    ref, fresh = threes[:150], threes[150:]
    assert metrics.speckle(ref[:40], ref)["mean"] == 0.0  # images of the reference light no background pixel
    clean = metrics.speckle(fresh, ref)
    assert clean["n_background"] > 50 and abs(clean["excess"]) < 2e-3 and clean["mean"] < 2e-3
    g = torch.Generator().manual_seed(0)
    rates = [metrics.speckle(calibration.degrade(fresh, "speckle", p, g), ref)["mean"] for p in (0.01, 0.03, 0.1)]
    assert clean["mean"] < rates[0] < rates[1] < rates[2]
    assert rates[2] == pytest.approx(0.05, abs=0.015)  # half of the hit pixels are salt
    # no background: a textured class (every pixel lit somewhere) gives None, not a number
    flat = torch.zeros(5, 1, 28, 28)
    assert metrics.speckle(flat, flat)["mean"] is None


def test_evaluate_reports_speckle_and_the_version_is_bumped(clf, digits):
    threes, _ = digits
    train = data.load_images("mnist", "train", 3, n=30, seed=0)
    out = metrics.evaluate(threes[:40], "mnist", 3, train, reference=threes[40:], n_subsets=5, classifier=clf)
    assert set(out["speckle"]) == {"mean", "real_rate", "excess", "n_background", "threshold"}
    assert abs(out["speckle"]["excess"]) < 5e-3
    json.dumps(out, allow_nan=False)
    assert metrics.METRICS_VERSION >= 2


def test_metric_floor_ceiling_floor_near_zero_and_ceiling_far(clf):
    r = calibration.metric_floor_ceiling("mnist", 3, n_samples=80, n_reference=100, draws=2, classifier=clf,
                                         pool_cap=300)
    assert (r["n_samples"], r["n_reference"]) == (80, 100) and r["ceiling_label"] in range(10)
    assert r["ceiling_label"] == min(r["kid_by_class"], key=r["kid_by_class"].get) != 3
    f, c = r["floor"], r["ceiling"]
    assert abs(f["kid"]["mean"]) < 0.05 * c["kid"]["mean"]
    assert f["precision"]["mean"] > c["precision"]["mean"] and f["class_consistency"]["mean"] > 0.9
    json.dumps(r, allow_nan=False)


def test_paper_fid_spread_over_redraws_of_13_images(clf, digits):
    threes, eights = digits
    r = calibration.paper_fid(threes[:100], threes[100:], clf.feature, n=13, draws=10, seed=0, ssim_reference=eights)
    assert r["n"] == 13 and len(r["fid"]["values"]) == 10 and r["fid"]["std"] > 0
    many = metrics.fid_from_features(metrics.extract_features(threes[:100], clf.feature),
                                     metrics.extract_features(threes[100:], clf.feature))
    assert r["fid"]["min"] > many  # 13 vectors: FID biased upwards against 100
    assert -1 <= r["ssim"]["min"] <= r["ssim"]["max"] <= 1
    assert r == calibration.paper_fid(threes[:100], threes[100:], clf.feature, draws=10, seed=0, ssim_reference=eights)
    with pytest.raises(ValueError, match="n must be in 2..100"):
        calibration.paper_fid(threes[:100], threes[100:], clf.feature, n=101)
