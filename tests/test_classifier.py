"""Tests of qdiff_lib.classifier. One test trains (or loads from the cache) the MNIST classifier through its
command line and checks its test accuracy independently; the others use tiny recipes."""

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from torchmetrics.image.kid import KernelInceptionDistance

from qdiff_lib import REPO_ROOT, classifier, data
from qdiff_lib.classifier import ClassifierRecipe, SmallCNN, TrainedClassifier

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
    monkeypatch.setattr(classifier, "recipe_for", lambda dataset: TINY)
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
