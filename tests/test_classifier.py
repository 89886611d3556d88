"""Tests of qdiff_lib.classifier (the adoption of recipes: tests/test_classifier_choice.py). One test trains (or
loads from the cache) the MNIST classifier through its command line and checks its test accuracy independently; the
others use tiny recipes."""

import os
import re
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from qdiff_lib import REPO_ROOT, classifier, data
from qdiff_lib.classifier import (
    AUGMENTATIONS,
    SHIFT_PIXELS,
    ClassifierRecipe,
    SmallCNN,
    TrainedClassifier,
    augment_batch,
)

sys.path.insert(0, str(REPO_ROOT / "tools"))

TINY = ClassifierRecipe(epochs=1, min_steps=0, batch_size=64)


@pytest.mark.slow
def test_mnist_classifier_reaches_98_percent_from_its_training_command():
    """`python -m qdiff_lib.classifier --dataset mnist` (trains if not cached: about 1-2 min on 2 cores)."""
    out = subprocess.run(
        [sys.executable, "-m", "qdiff_lib.classifier", "--dataset", "mnist", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    ).stdout
    printed = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert printed >= 0.98, out
    # Independent check of the stored number: recompute the accuracy of the cached weights on the test split.
    clf = classifier.get_classifier("mnist", progress=False)
    x, y = data.load_labelled("mnist", "test")
    acc = (clf.predict(x) == y).double().mean().item()
    assert acc == pytest.approx(clf.test_accuracy, abs=1e-12)
    assert acc >= 0.98
    assert clf.test_split.startswith("mnist test split")


def test_training_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = classifier.train_classifier("breastmnist", TINY, progress=False)
    b = classifier.train_classifier("breastmnist", TINY, progress=False)
    assert torch.equal(state, torch.get_rng_state())
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    other_seed = ClassifierRecipe(epochs=1, min_steps=0, batch_size=64, seed=1)
    c = classifier.train_classifier("breastmnist", other_seed, progress=False)
    assert not torch.equal(a.net.head.weight, c.net.head.weight)


def test_weights_do_not_depend_on_the_callers_thread_count():
    """Training pins TRAIN_THREADS: the cached weights are the same whichever process trains them first."""
    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            weights.append(classifier.train_classifier("breastmnist", TINY, progress=False).net.state_dict())
            assert torch.get_num_threads() == threads, "the caller's thread count was not restored"
    finally:
        torch.set_num_threads(before)
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_pathmnist_offline_holds_out_part_of_the_training_subset():
    if data.find_file("pathmnist.npz") is not None:
        pytest.skip("full PathMNIST present: it has a test split")
    x, y, xt, yt, desc = classifier._train_test("pathmnist", TINY)
    assert (len(x), len(xt)) == (800, 200)
    assert "held out" in desc and "no test split" in desc
    seen = {r.numpy().tobytes() for r in x.flatten(1)}
    assert not any(r.numpy().tobytes() in seen for r in xt.flatten(1))


def test_cache_round_trip_is_atomic_and_keyed_by_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("QDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(classifier, "recipe_for", lambda dataset, augment="none": replace(TINY, augment=augment))
    first = classifier.get_classifier("breastmnist", progress=False)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("classifier_"))  # data.py caches too
    assert len(files) == 1 and files[0].startswith("classifier_breastmnist_") and files[0].endswith(".pt")
    assert not list(tmp_path.glob("*.tmp"))
    tag = classifier._numerics_tag()  # weights trained with other kernels are cached apart
    assert TINY.hash(str(False) + tag) in files[0] or TINY.hash(str(True) + tag) in files[0]
    again = classifier.get_classifier("breastmnist", progress=False)
    assert again.test_accuracy == first.test_accuracy and again.test_split == first.test_split
    assert torch.equal(again.net.head.weight, first.net.head.weight)
    assert ClassifierRecipe(seed=1).hash() != ClassifierRecipe().hash()


def test_feature_extractor_works_as_torchmetrics_custom_feature():
    torch.manual_seed(0)
    clf = TrainedClassifier(SmallCNN(3, 5), "retinamnist", 0.0, "untrained", ClassifierRecipe())
    x = torch.rand(12, 3, 28, 28) * 2 - 1
    f = clf.feature(x)
    assert f.shape == (12, clf.feature.num_features) == (12, 128)
    assert not f.requires_grad and not clf.feature.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=clf.feature, subsets=2, subset_size=6)
    kid.update(x[:6], real=True)
    kid.update(x[6:], real=False)
    assert torch.isfinite(kid.compute()[0])
    with pytest.raises(ValueError, match=r"expected \(B, 3, 28, 28\), got \(2, 1, 28, 28\)"):
        clf.feature(torch.zeros(2, 1, 28, 28))


# --- Recipe hash: cached weights and committed results are named by it ---------------------------------------------

def test_default_recipe_keeps_the_hash_of_the_cached_weights():
    """Adding fields (augment) must not rename the weights every committed metric was measured with."""
    default = ClassifierRecipe()
    assert default.hash() == "985c6a26d134"
    # _cache_path's extra text: data source present (True/False) and numerics tag; these are the names on disk.
    assert default.hash("True" + "pinned") == "d08fca33ec57"
    assert default.hash("False" + "pinned") == "5d19c7ad12ff"
    assert ClassifierRecipe(augment="none") == default


def test_each_augmentation_has_its_own_hash():
    hashes = {a: ClassifierRecipe(augment=a).hash() for a in AUGMENTATIONS}
    assert len(set(hashes.values())) == len(AUGMENTATIONS)
    assert hashes["none"] == ClassifierRecipe().hash()
    assert ClassifierRecipe(augment="dihedral", min_steps=1800).hash() != ClassifierRecipe(augment="dihedral").hash()


def test_unknown_augmentation_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown augmentation 'rotate'; allowed: \['none', 'hflip', .*'dihedral'"):
        ClassifierRecipe(augment="rotate")
    with pytest.raises(ValueError, match="'shift\\+dihedral'"):
        augment_batch(torch.zeros(1, 1, 28, 28), "shift+dihedral", torch.Generator())


def test_recipe_for_is_still_the_default_for_every_dataset():
    for ds in ("mnist", "pathmnist", "pneumoniamnist", "retinamnist", "breastmnist"):
        assert classifier.recipe_for(ds) == ClassifierRecipe()
        # an augmentation changes that field only, hence the hash and the cache file
        assert classifier.recipe_for(ds, "flips") == ClassifierRecipe(augment="flips")
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        classifier.recipe_for("mnist", "rotate")


def test_get_classifier_trains_and_caches_the_recipe_of_the_augmentation(tmp_path, monkeypatch):
    monkeypatch.setenv("QDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(classifier, "recipe_for", lambda dataset, augment="none": replace(TINY, augment=augment))
    plain = classifier.get_classifier("breastmnist", progress=False)
    flips = classifier.get_classifier("breastmnist", progress=False, augment="flips")
    assert plain.recipe.augment == "none" and flips.recipe.augment == "flips"
    assert not torch.equal(plain.net.head.weight, flips.net.head.weight)
    files = sorted(p.name for p in tmp_path.glob("classifier_*.pt"))
    assert len(files) == 2  # one cache file per recipe
    record = classifier.classifier_record(flips)
    assert record["augment"] == "flips" and record["file"] in files and record["file"] != \
        classifier.classifier_record(plain)["file"]
    assert record["sha256"] == classifier.weights_sha256(flips) != classifier.weights_sha256(plain)


def test_evaluate_scores_with_the_classifier_of_the_runs_augmentation(tmp_path, monkeypatch):
    """``classifier_augment`` selects the classifier (tiny recipes here, no expensive training); the output names it
    for a non-default recipe and stays as before for the default one; a classifier of another recipe is refused."""
    from qdiff_lib import metrics

    monkeypatch.setenv("QDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(classifier, "recipe_for", lambda dataset, augment="none": replace(TINY, augment=augment))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)
        x = data.load_images("breastmnist", "test", 1)
    samples, reference, train = x[:16], x[16:40], x[40:56]
    kw = dict(reference=reference, n_subsets=3, n_pr_draws=1, paper_draws=2)
    out = metrics.evaluate(samples, "breastmnist", 1, train, classifier_augment="flips", **kw)
    flips = classifier.get_classifier("breastmnist", progress=False, augment="flips")
    assert out["classifier"] == classifier.classifier_record(flips) and out["classifier"]["augment"] == "flips"
    assert out["classifier_test_accuracy"] == flips.test_accuracy
    plain = metrics.evaluate(samples, "breastmnist", 1, train, **kw)
    assert "classifier" not in plain  # the default's output is metrics version 3's, unchanged
    assert plain["kid"]["mean"] != out["kid"]["mean"]  # another feature space
    with pytest.raises(ValueError, match="trained with augmentation 'none', but classifier_augment is 'flips'"):
        metrics.evaluate(samples, "breastmnist", 1, train, classifier=classifier.get_classifier(
            "breastmnist", progress=False), classifier_augment="flips", **kw)


def test_weights_cached_before_the_augment_field_still_load(tmp_path):
    """Payloads written before ``augment`` existed have no such key in their recipe."""
    net = SmallCNN(1, 2)
    recipe = {k: v for k, v in vars(ClassifierRecipe()).items() if k != "augment"}
    payload = {"state_dict": net.state_dict(), "dataset": "breastmnist", "test_accuracy": 0.5, "test_split": "x",
               "recipe": recipe, "n_channels": 1, "n_classes": 2}
    torch.save(payload, tmp_path / "old.pt")
    assert classifier._load(tmp_path / "old.pt").recipe == ClassifierRecipe()


# --- Augmentation ----------------------------------------------------------------------------------------------------

def _images(n: int = 256, c: int = 3) -> torch.Tensor:
    return torch.rand(n, c, 28, 28, generator=torch.Generator().manual_seed(7)) * 2 - 1


def _symmetries(img: torch.Tensor) -> list[torch.Tensor]:
    """The eight images of ``img`` (C, H, W) under the symmetries of the square."""
    rots = [torch.rot90(img, k, dims=(-2, -1)) for k in range(4)]
    return rots + [r.flip(-1) for r in rots]


def _which(out: torch.Tensor, candidates: list[torch.Tensor]) -> int:
    matches = [i for i, c in enumerate(candidates) if torch.equal(out, c)]
    assert len(matches) == 1, matches
    return matches[0]


def test_augmentation_is_deterministic_for_a_seed_and_keeps_shape_and_values():
    x = _images()
    for a in AUGMENTATIONS[1:]:
        one = augment_batch(x, a, torch.Generator().manual_seed(3))
        assert torch.equal(one, augment_batch(x, a, torch.Generator().manual_seed(3))), a
        assert not torch.equal(one, augment_batch(x, a, torch.Generator().manual_seed(4))), a
        assert one.shape == x.shape and one.dtype == x.dtype, a
        for i in (0, 100, 255):  # only moves pixels: every output value is a value of the same image
            assert torch.isin(one[i], x[i]).all(), a
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    assert augment_batch(x, "none", g) is x
    assert torch.equal(g.get_state(), state), "'none' must draw nothing (the default training is unchanged)"


def test_hflip_mirrors_left_right_about_half_of_the_images():
    x = torch.arange(28.0).expand(64, 1, 28, 28)  # a left-to-right ramp: a mirrored image is a descending ramp
    out = augment_batch(x, "hflip", torch.Generator().manual_seed(0))
    flipped = out[:, 0, 0, 0] == 27
    assert all(torch.equal(o, x[0].flip(-1) if f else x[0]) for o, f in zip(out, flipped, strict=True))
    assert 16 < int(flipped.sum()) < 48


def test_flips_and_dihedral_reach_exactly_their_symmetries():
    x = _images(400, 1)[:1].expand(400, 1, 28, 28)  # one asymmetric image, 400 draws
    sym = _symmetries(x[0])
    flips = [sym[0], sym[4], sym[6], sym[2]]  # identity, left-right, top-bottom, both (= rotation by 180)
    seen = {_which(o, flips) for o in augment_batch(x, "flips", torch.Generator().manual_seed(0))}
    assert seen == {0, 1, 2, 3}
    counts = torch.bincount(torch.tensor([_which(o, sym) for o in
                                          augment_batch(x, "dihedral", torch.Generator().manual_seed(0))]), minlength=8)
    assert (counts > 20).all(), counts  # all eight, each about 1/8 of 400


def test_shift_translates_by_at_most_shift_pixels_with_replicated_edges():
    s = SHIFT_PIXELS
    x = _images(200, 2)
    out = augment_batch(x, "shift", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (s,) * 4, mode="replicate")
    shifts = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
                 if torch.equal(out[i], padded[i, :, s - dy : s - dy + 28, s - dx : s - dx + 28])]
        assert len(found) == 1, (i, found)
        shifts.append(found[0])
    assert len(set(shifts)) == (2 * s + 1) ** 2  # every offset in range occurs
    # explicit: a shift by (1, 2) moves pixel (5, 5) to (6, 7), and the vacated left columns repeat column 0
    i = shifts.index((1, 2))
    assert torch.equal(out[i, :, 6, 7], x[i, :, 5, 5])
    assert torch.equal(out[i, :, 6, 0], x[i, :, 5, 0]) and torch.equal(out[i, :, 6, 1], x[i, :, 5, 0])


def test_training_with_augmentation_is_deterministic_and_differs_from_plain(monkeypatch):
    real = classifier._train_test

    def small(dataset, recipe):  # 128 training images: two steps per training keep the test quick
        x, y, xt, yt, desc = real(dataset, recipe)
        return x[:128], y[:128], xt, yt, desc

    monkeypatch.setattr(classifier, "_train_test", small)
    aug = ClassifierRecipe(epochs=1, min_steps=0, batch_size=64, augment="dihedral+shift")
    a = classifier.train_classifier("breastmnist", aug, progress=False)
    b = classifier.train_classifier("breastmnist", aug, progress=False)
    assert torch.equal(a.net.head.weight, b.net.head.weight)
    plain = classifier.train_classifier("breastmnist", TINY, progress=False)
    assert not torch.equal(a.net.head.weight, plain.net.head.weight)
    assert a.recipe.augment == "dihedral+shift"
