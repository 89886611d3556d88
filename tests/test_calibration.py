"""Tests of qdiff_lib.metrics.calibration and the speckle metric: KID against torchmetrics on the same features, the
normalised score on constructed cases, monotone degradation curves in MNIST classifier features (the cached
classifier; small samples), the speckle metric on real digits, and the paper's protocol (qdiff_lib.metrics.protocol:
its SSIM against a window-by-window computation, its determinism, its reduction to paper_fid on the same draws, its
small-sample floor, the rankings it gives)."""

import dataclasses
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


def test_metric_floor_ceiling_draws_from_the_held_out_pool_of_the_runs(clf):
    """With ``reference_pool="held_out"`` the floor's two samples split every held-out image of the class (the pool of
    a run's reference: no image of the run's training set), and the ceiling takes the other class's images from all
    its splits. The MNIST classifier serves as a feature map of the 1-channel BreastMNIST images: the pools, not
    the features, are under test."""
    pool = data.held_out_pool("breastmnist", 1, 64, seed=0)
    r = calibration.metric_floor_ceiling("breastmnist", 1, n_samples=500, n_reference=1000, draws=2, classifier=clf,
                                         reference_pool="held_out", n_train=64)
    assert (r["n_samples"], r["n_reference"]) == (len(pool) - len(pool) // 2, len(pool) // 2)
    assert r["ceiling_source"] == "held_out" and r["ceiling_label"] == 0
    test_only = calibration.metric_floor_ceiling("breastmnist", 1, n_samples=500, n_reference=1000, draws=2,
                                                 classifier=clf)
    n_test = len(data.load_images("breastmnist", "test", 1))
    assert (test_only["n_samples"], test_only["n_reference"]) == (n_test - n_test // 2, n_test // 2)
    assert test_only["n_reference"] < r["n_reference"] / 2  # the test split alone: less than half the power
    train = data.load_images("breastmnist", "train", 1, 64, seed=0)
    pools = calibration._Pools("breastmnist", clf, 3000, 0, 1, "held_out", 64)
    seen = {tuple(x.flatten().tolist()) for x in train}
    assert not any(tuple(x.flatten().tolist()) in seen for x in pools.held_out(1)["x"])
    assert len(pools.held_out(0)["x"]) == sum(len(data.load_images("breastmnist", s, 0)) for s in ("train", "val",
                                                                                                   "test"))
    with pytest.raises(ValueError, match=r"reference pool.*'everything'.*allowed"):
        calibration.metric_floor_ceiling("breastmnist", 1, classifier=clf, reference_pool="everything")


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
    with pytest.raises(ValueError, match="ssim_reference must be None"):
        calibration.paper_fid(threes[:100], threes[100:], clf.feature, n_reference=13, ssim_reference=eights)


# ------------------------------------------------------------------ the paper's protocol (metrics version 3)


def _ssim_window_by_window(x: np.ndarray, y: np.ndarray, w: int = 7) -> float:
    """scikit-image's default SSIM written out window by window (8-bit images (H, W), data range 255)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for i in range(x.shape[0] - w + 1):
        for j in range(x.shape[1] - w + 1):
            a, b = x[i : i + w, j : j + w].ravel(), y[i : i + w, j : j + w].ravel()
            cov = np.cov(a, b)  # sample (co)variances, 1 / (w^2 - 1)
            out.append((2 * a.mean() * b.mean() + c1) * (2 * cov[0, 1] + c2)
                       / ((a.mean() ** 2 + b.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
    return float(np.mean(out))


def test_paper_ssim_is_scikit_image_default_ssim_on_8_bit_images(digits):
    threes, eights = digits
    a, b = threes[:3], eights[:3]
    got = metrics.paper_ssim(a, b)
    to8 = lambda t: ((t[0].double() + 1) * 127.5).round().numpy()  # noqa: E731
    expected = [_ssim_window_by_window(to8(x), to8(y)) for x, y in zip(a, b, strict=True)]
    assert got.tolist() == pytest.approx(expected, rel=1e-10)
    assert metrics.paper_ssim(a, a).tolist() == pytest.approx([1.0] * 3)
    assert metrics.paper_ssim(b, a).tolist() == pytest.approx(got.tolist(), rel=1e-12)
    # colour: the mean over channels (scikit-image's channel_axis)
    rgb_a, rgb_b = torch.cat([a, b, a], 1), torch.cat([b, b, a], 1)
    per_channel = [metrics.paper_ssim(rgb_a[:, c : c + 1], rgb_b[:, c : c + 1]) for c in range(3)]
    assert metrics.paper_ssim(rgb_a, rgb_b).tolist() == pytest.approx(torch.stack(per_channel).mean(0).tolist())


def test_paper_protocol_is_seeded_and_reduces_to_paper_fid_on_the_same_draws(clf, digits):
    threes, eights = digits
    samples, reference, pool = threes[:60], threes[60:], torch.cat([eights[:50], threes[150:]])
    r = metrics.paper_protocol(samples, reference, clf.feature, "mnist", seed=3, draws=8, pool=pool)
    assert r == metrics.paper_protocol(samples, reference, clf.feature, "mnist", seed=3, draws=8, pool=pool)
    assert r != metrics.paper_protocol(samples, reference, clf.feature, "mnist", seed=4, draws=8, pool=pool)
    assert r["n"] == metrics.PAPER_N == 13 and r["draws"] == 8
    # the all-digits table: paper_fid against the whole reference; the main table: against n drawn real images
    own = metrics.paper_fid(samples, reference, clf.feature, n=13, draws=8, seed=3)
    assert r["class"]["fid"] == own["fid"] and r["class"]["ssim"] == own["ssim"]
    assert r["class"]["n_reference"] == len(reference)
    anyc = metrics.paper_fid(samples, pool, clf.feature, n=13, draws=8, seed=3, n_reference=13)
    assert r["any_class"]["fid"] == anyc["fid"] and r["any_class"]["n_reference"] == 13
    assert r["any_class"]["pool"] == len(pool)
    # ... and paper_fid is the FID and SSIM of the draws it makes: the first two redraws recomputed by hand
    f_gen, f_pool = metrics.extract_features(samples, clf.feature), metrics.extract_features(pool, clf.feature)
    g = torch.Generator().manual_seed(3)
    for d in range(2):
        si, ri = torch.randperm(len(samples), generator=g)[:13], torch.randperm(len(pool), generator=g)[:13]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fid = metrics.fid_from_features(f_gen[si], f_pool[ri])
        assert r["any_class"]["fid"]["values"][d] == pytest.approx(fid, rel=1e-5)  # values keep six digits
        ssim = float(metrics.paper_ssim(samples[si], pool[ri]).mean())
        assert r["any_class"]["ssim"]["values"][d] == pytest.approx(ssim, rel=1e-5)
    json.dumps(r, allow_nan=False)
    # the default pool: held-out images of every class, drawn with the seed
    r0 = metrics.paper_protocol(samples, reference, clf.feature, "mnist", seed=3, draws=2)
    assert r0["any_class"]["pool"] == metrics.PAPER_POOL


def test_paper_protocol_on_identical_pools_sits_at_the_small_sample_floor(clf, digits):
    threes, eights = digits
    same = metrics.paper_protocol(threes, threes, clf.feature, "mnist", draws=20, pool=threes)
    wrong = metrics.paper_protocol(eights, threes, clf.feature, "mnist", draws=20, pool=threes)
    (floor,) = metrics.small_sample_bias(threes, clf.feature, sizes=[13], n_draws=20, seed=0)
    # 13 against 13 images of one pool: FID is the small-sample floor of two real sets of 13, far above 0 ...
    s = same["any_class"]["fid"]
    assert abs(s["mean"] - floor["fid_mean"]) < 3 * np.hypot(s["std"], floor["fid_std"]) / np.sqrt(20)
    assert s["q05"] > 0.2 * s["mean"] > 0
    # ... and far below images of another class, in both variants
    for v in ("any_class", "class"):
        assert same[v]["fid"]["q95"] < 0.3 * wrong[v]["fid"]["q05"], v
    # against the whole pool the floor is lower (one side has 200 images), still above 0
    assert 0 < same["class"]["fid"]["mean"] < s["mean"]


def test_evaluate_has_the_paper_protocol_and_the_version_is_3(clf, digits):
    threes, eights = digits
    train = data.load_images("mnist", "train", 3, n=30, seed=0)
    out = metrics.evaluate(threes[:40], "mnist", 3, train, reference=threes[40:], n_subsets=5, classifier=clf,
                           paper_draws=5, paper_pool=eights)
    assert metrics.METRICS_VERSION == 3
    expected = metrics.paper_protocol(threes[:40], threes[40:], clf.feature, "mnist", seed=0, draws=5, pool=eights)
    assert out["paper_protocol"] == expected
    json.dumps(out, allow_nan=False)


def test_win_probability_and_protocol_ranking_on_constructed_redraws():
    assert metrics.win_probability([1, 2], [3, 4]) == 1.0 and metrics.win_probability([3, 4], [1, 2]) == 0.0
    assert metrics.win_probability([1, 3], [2, 3]) == 0.625  # (1<2, 1<3, 3=3 half, 3>2) / 4
    rng = np.random.default_rng(0)

    def run(fid_centre, fid_sd, kid, kid_se):
        fids = (fid_centre + fid_sd * rng.standard_normal(100)).tolist()
        entry = {"fid": {"values": fids, "mean": float(np.mean(fids)), "std": float(np.std(fids, ddof=1)),
                         "q05": float(np.quantile(fids, 0.05)), "q95": float(np.quantile(fids, 0.95))}}
        return {"kid": {"mean": kid, "se": kid_se}, "paper_protocol": {"any_class": entry}}

    # separated: the protocol decides every pair, in KID's order; one run reproduces KID's ranking
    sep = metrics.protocol_ranking({"a": run(100, 1, 10, 1), "b": run(200, 1, 20, 1), "c": run(300, 1, 30, 1)})
    assert all(p["protocol_decided"] and p["kid_decided"] and p["agree"] for p in sep["pairs"])
    assert sep["p_same_ranking"] == 1.0 and sep["kendall_tau_means"] == 1.0 == sep["mean_kendall_tau"]
    assert [r["rank_protocol"] for r in sep["arms"]] == [1.0, 2.0, 3.0] == [r["rank_kid"] for r in sep["arms"]]
    # the protocol's spread swamps the differences: KID decides, the protocol is near a coin flip
    noisy = metrics.protocol_ranking({"a": run(100, 80, 10, 1), "b": run(105, 80, 20, 1),
                                          "c": run(110, 80, 30, 1)}, seed=1)
    assert all(p["kid_decided"] and not p["protocol_decided"] and 0.3 < p["p_protocol"] < 0.7
               for p in noisy["pairs"])
    assert noisy["p_same_ranking"] < 0.4 and abs(noisy["mean_kendall_tau"]) < 0.4
    # reversed order: the protocol's likelier order disagrees with KID's
    rev = metrics.protocol_ranking({"a": run(300, 1, 10, 1), "b": run(100, 1, 20, 1)})
    assert rev["pairs"][0]["agree"] is False and rev["kendall_tau_means"] == -1.0
    with pytest.raises(ValueError, match="at least 2 arms"):
        metrics.protocol_ranking({"a": run(1, 1, 1, 1)})


def test_kendall_tau_b_equals_scipy_row_by_row_ties_and_constants_included():
    from scipy import stats

    rng = np.random.default_rng(3)
    y = np.array([3.0, 1.0, 2.0, 2.0, 5.0, 0.5, 4.0])  # one tie in y
    x = rng.integers(0, 4, size=(400, y.size)).astype(float)  # small integers: many ties in the rows
    x[0] = 7.0  # a constant row: tau undefined
    x[1] = y  # the same ranking as y
    got = metrics.kendall_tau_b(x, y)
    want = np.array([stats.kendalltau(row, y).statistic for row in x])
    assert np.isnan(got[0]) and np.isnan(want[0]) and got[1] == want[1]
    assert np.array_equal(got[1:], want[1:])  # the same bits: scipy's order of operations
    continuous = rng.standard_normal((200, 5))
    assert np.array_equal(metrics.kendall_tau_b(continuous, y[:5]),
                          [stats.kendalltau(row, y[:5]).statistic for row in continuous])
    assert np.isnan(metrics.kendall_tau_b(x[:3], np.ones(y.size))).all()
    with pytest.raises(ValueError, match="columns"):
        metrics.kendall_tau_b(x, y[:3])


def test_protocol_groups_and_table_gather_runs_by_dataset_label_and_seed():
    from qdiff_lib.study import arm_of, arm_options

    def entry(x):
        s = {"mean": x, "std": 1.0, "q05": x - 2, "q95": x + 2, "values": [x]}
        return {"any_class": {"fid": s, "ssim": s}, "class": {"fid": s, "ssim": s}}

    def summary(arm, label, x, version=3):
        o = arm_options(arm, dataset="mnist", label=label, seed=0)
        m = {"kid": {"mean": x, "se": 1.0}, **({"paper_protocol": entry(x)} if version >= 3 else {})}
        return {"options": dataclasses.asdict(o), "metrics": m}

    groups = metrics.protocol_groups([summary("se", 1, 5.0), summary("quantum_rzry", 0, 3.0), summary("se", 0, 4.0),
                                      summary("se_cos", 0, 9.0, version=2)], arm_of)
    assert list(groups) == [("mnist", 0, 0), ("mnist", 1, 0)]  # sorted; the version-2 run is left out
    assert list(groups[("mnist", 0, 0)]) == ["quantum_rzry", "se"]
    table = metrics.protocol_table(groups)
    assert len(table) == 3 and table.loc[("mnist", 0, 0, "se"), "fid_any_class_mean"] == 4.0
    assert table.loc[("mnist", 0, 0, "se"), "ssim_class_q95"] == 6.0 and table["kid_se"].eq(1.0).all()
    with pytest.raises(ValueError, match="two runs of arm se"):
        metrics.protocol_groups([summary("se", 0, 1.0), summary("se", 0, 2.0)], arm_of)
