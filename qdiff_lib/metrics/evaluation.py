"""Every metric of a set of generated samples at once (:func:`evaluate`), the held-out real reference it compares
against, and the class consistency of the samples. Part of :mod:`qdiff_lib.metrics`, which exports the public names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from scipy import stats

from qdiff_lib import data
from qdiff_lib.metrics.distances import _check_images, extract_features, fid, kid
from qdiff_lib.metrics.neighbours import _precision_recall_draws, memorization
from qdiff_lib.metrics.pixels import speckle
from qdiff_lib.metrics.protocol import PAPER_DRAWS, paper_protocol

if TYPE_CHECKING:
    from qdiff_lib.classifier import TrainedClassifier


def class_consistency(predicted: torch.Tensor, label: int, alpha: float = 0.05) -> dict:
    """Fraction of predicted classes ``(B,)`` equal to ``label``, with a Wilson interval.

    Returns ``{"mean", "ci_low", "ci_high", "n"}``.
    """
    n = int(predicted.numel())
    if n == 0:
        raise ValueError("class_consistency: expected (B,) with B >= 1, got an empty tensor")
    hits = int((predicted == label).sum())
    ci = stats.binomtest(hits, n).proportion_ci(confidence_level=1 - alpha, method="wilson")
    return {"mean": hits / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def held_out_reference(
    dataset: str, label: int, train_images: torch.Tensor, n: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Real images of class ``label`` disjoint from ``train_images``, ``(n, C, 28, 28)`` in [-1, 1].

    From the test split when it is on disk; otherwise (offline PathMNIST subset) from the training split, minus
    every image equal to one of ``train_images``. ``n`` images drawn without replacement with ``seed``
    (None: all).
    """
    # from the training subset, data.load_images warns (DataNotice) that the training split is used
    pool = data.load_images(dataset, data.held_out_split(dataset), label)
    # Drop exact copies of training images (the training subset case; harmless otherwise).
    seen = {row.numpy().tobytes() for row in train_images.detach().float().cpu().flatten(1)}
    keep = torch.tensor([row.numpy().tobytes() not in seen for row in pool.flatten(1)], dtype=torch.bool)
    pool = pool[keep]
    if n is None:
        return pool
    if n > len(pool):
        raise ValueError(f"n={n} held-out images requested, only {len(pool)} available for {dataset} label {label}")
    g = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(len(pool), generator=g)[:n]]


def evaluate(
    samples: torch.Tensor,
    dataset: str,
    label: int,
    train_images: torch.Tensor,
    reference: torch.Tensor | None = None,
    seed: int = 0,
    n_subsets: int = 100,
    subset_size: int | None = None,
    k: int = 3,
    device: str | torch.device = "cpu",
    n_reference: int = 1000,
    classifier: TrainedClassifier | None = None,
    n_pr_draws: int = 10,
    paper_draws: int = PAPER_DRAWS,
    paper_pool: torch.Tensor | None = None,
    classifier_augment: str = "none",
) -> dict:
    """All metrics of generated ``samples`` ``(B, C, 28, 28)`` in [-1, 1] meant to be of class ``label``.

    Args:
        samples: raw generated images (never figures), ``(B, C, 28, 28)`` in [-1, 1]; values outside are
            clamped (as when an image is shown), their fraction is returned as ``out_of_range_fraction``.
        dataset: dataset name (see :data:`qdiff_lib.data.DATASETS`); selects the classifier.
        label: the class the samples should show.
        train_images: the model's training images ``(N, C, 28, 28)`` (for memorization).
        reference: held-out real images of class ``label``; None: :func:`held_out_reference` draws
            ``n_reference`` of them (or all, if fewer) with ``seed``.
        seed: seeds KID's subset draws and the bootstrap of the memorization interval.
        n_subsets, subset_size: KID's subsets (default size: min(B, reference size), i.e. all of the samples).
        k: neighbourhood size of precision/recall.
        n_pr_draws: precision/recall use equal set sizes: they are averaged over this many seeded draws of
            ``min(B, reference size)`` images from each set (one draw suffices when the sizes are equal).
        device: where the classifier runs.
        n_reference: size of the default reference.
        classifier: a :class:`~qdiff_lib.classifier.TrainedClassifier` (default: ``get_classifier(dataset,
            augment=classifier_augment)``); its recipe's augmentation must be ``classifier_augment``.
        classifier_augment: the training-time augmentation of the classifier whose features and predictions score
            the samples (a run's option ``classifier_augment``; see :data:`qdiff_lib.classifier.AUGMENTATIONS`).
        paper_draws, paper_pool: redraws of the paper's protocol and its real images of every class (None: drawn
            from the held-out split with ``seed``); see :func:`~qdiff_lib.metrics.paper_protocol`.

    Returns a JSON-serialisable dict: ``kid`` and ``fid``-style entries are ``{"mean", ...}`` dicts:
    ``kid`` {mean, se, subset_std, ...}; ``fid`` {mean} (biased at small N: see
    :func:`~qdiff_lib.metrics.small_sample_bias`, :func:`~qdiff_lib.metrics.fid_spread`);
    ``precision``/``recall``/``density``/``coverage`` {mean, se, draw_std} (see :func:`precision_recall`;
    mean over ``n_pr_draws`` equal-size draws, ``draw_std`` their spread, ``se`` the mean binomial SE);
    ``class_consistency`` {mean, ci_low, ci_high, n}; ``memorization`` (pixels) and ``memorization_features``
    {mean, ci_low, ci_high, flag, threshold, copy_fraction}; ``speckle`` {mean, real_rate, excess, n_background,
    threshold} (pixel space, :func:`~qdiff_lib.metrics.speckle`; None entries where the class has no background);
    ``paper_protocol``: the paper's FID of 13 samples and its SSIM, in both of its variants, with their spread
    over ``paper_draws`` seeded redraws (:func:`~qdiff_lib.metrics.paper_protocol`; metrics version 3); plus
    ``n_samples``, ``n_reference``,
    ``n_train``, ``out_of_range_fraction``, ``classifier_test_accuracy``, ``seed``; and, only for a classifier
    trained with augmentation, ``classifier`` (:func:`~qdiff_lib.classifier.classifier_record`: its cache file,
    weights checksum, augmentation, test accuracy), so that the output of the default classifier is exactly that of
    metrics version 3 as before.
    """
    from qdiff_lib.classifier import classifier_record, get_classifier

    samples = _check_images(samples, "samples").cpu()
    out_of_range = float((samples.abs() > 1).double().mean())
    samples = samples.clamp(-1, 1)
    train_images = _check_images(train_images, "train_images").cpu()
    info = data.dataset_info(dataset)
    if samples.shape[1:] != (info.n_channels, 28, 28):
        raise ValueError(f"samples: expected (B, {info.n_channels}, 28, 28) for {dataset}, got {tuple(samples.shape)}")
    if len(samples) < max(k + 1, 3):
        raise ValueError(f"evaluate needs at least {max(k + 1, 3)} samples, got {len(samples)}")
    if reference is None:
        reference = held_out_reference(dataset, label, train_images)
        if len(reference) > n_reference:
            g_ref = torch.Generator().manual_seed(seed)
            reference = reference[torch.randperm(len(reference), generator=g_ref)[:n_reference]]
    reference = _check_images(reference, "reference").cpu()
    if classifier is None:
        classifier = get_classifier(dataset, device=device, progress=True, augment=classifier_augment)
    elif classifier.recipe.augment != classifier_augment:
        raise ValueError(f"the classifier given was trained with augmentation {classifier.recipe.augment!r}, but "
                         f"classifier_augment is {classifier_augment!r}")
    clf = classifier.to(device)
    feature = clf.feature

    f_gen = extract_features(samples, feature)
    f_ref = extract_features(reference, feature)
    f_train = extract_features(train_images, feature)
    pr = _precision_recall_draws(f_gen, f_ref, k, n_pr_draws, seed)
    predicted = clf.predict(samples.to(device)).cpu()
    # Which classifier scored them, for the non-default recipes only: the default's output stays version 3's.
    provenance = {} if clf.recipe.augment == "none" else {"classifier": classifier_record(clf)}
    return {
        "kid": kid(samples, reference, feature, n_subsets, subset_size, seed),
        "fid": {"mean": fid(samples, reference, feature)},
        "precision": pr["precision"],
        "recall": pr["recall"],
        "density": pr["density"],
        "coverage": pr["coverage"],
        "class_consistency": class_consistency(predicted, label),
        "memorization": memorization(samples, reference, train_images, seed=seed),
        "memorization_features": memorization(f_gen, f_ref, f_train, seed=seed),
        "speckle": speckle(samples, reference),
        "paper_protocol": paper_protocol(samples, reference, feature, dataset, seed=seed, draws=paper_draws,
                                         pool=paper_pool),
        "out_of_range_fraction": out_of_range,
        "n_samples": len(samples),
        "n_reference": len(reference),
        "n_train": len(train_images),
        "classifier_test_accuracy": clf.test_accuracy,
        "seed": seed,
        **provenance,
    }
