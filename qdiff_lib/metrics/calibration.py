"""What the numbers of :func:`~qdiff_lib.metrics.evaluate` mean: each metric's floor and ceiling on real images, a
score placed between them, degradation curves, and the paper's own protocol. Part of :mod:`qdiff_lib.metrics`,
which exports the public names.

* :func:`metric_floor_ceiling`: for one class, every metric between two disjoint real samples of the class (the
  *floor*: what a perfect generator would score at these sample sizes) and between real images of the nearest other
  class and the class's reference (the *ceiling*: what a generator that draws the wrong class would score).
* :func:`normalised_score`: ``(value - floor) / (ceiling - floor)``; 0 at the floor, 1 at the ceiling.
* :func:`degrade`, :func:`degradation_curves`: real images corrupted at growing strength (Gaussian pixel noise,
  blur, salt-and-pepper speckle, a growing share of another class), and every metric's response.
* :func:`~qdiff_lib.metrics.paper_fid` (in :mod:`~qdiff_lib.metrics.protocol`, re-exported here): the paper's
  protocol (FID of 13 images, SSIM of unpaired images) with its spread over redraws.

Every draw takes a seeded ``torch.Generator``; the metrics are computed on features extracted once per image set,
with the estimators of :func:`~qdiff_lib.metrics.evaluate` (KID: the unbiased MMD^2 on all images, whose expectation
torchmetrics' subset average in :func:`evaluate` shares, and equal to torchmetrics' value with one subset of all
images when both sets have the same size; FID: torchmetrics'; precision and recall: equal-size draws).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from qdiff_lib import data
from qdiff_lib._checks import check_choice
from qdiff_lib.metrics.distances import _check_images, _poly_kernel, extract_features, fid_from_features
from qdiff_lib.metrics.neighbours import _precision_recall_draws
from qdiff_lib.metrics.pixels import speckle
from qdiff_lib.metrics.protocol import paper_fid  # noqa: F401 (re-exported: its home before metrics version 3)

if TYPE_CHECKING:
    from qdiff_lib.classifier import TrainedClassifier

#: Metrics of the calibration and the direction in which each gets worse (``"up"``: larger is worse).
METRICS: dict[str, str] = {
    "kid": "up", "fid": "up", "precision": "down", "recall": "down", "density": "down", "coverage": "down",
    "class_consistency": "down", "speckle": "up",
}
#: The degradations of :func:`degrade` and the default strengths of :func:`degradation_curves` (0: clean).
DEGRADATIONS: dict[str, tuple[float, ...]] = {
    "gaussian": (0.0, 0.1, 0.2, 0.4, 0.8),  # noise standard deviation, in units of the [-1, 1] pixel scale
    "blur": (0.0, 0.5, 1.0, 1.5, 2.0),  # Gaussian blur standard deviation, in pixels
    "speckle": (0.0, 0.005, 0.01, 0.02, 0.05),  # share of pixels set to white or black (salt and pepper)
    "other_class": (0.0, 0.1, 0.25, 0.5, 1.0),  # share of images replaced by images of another class
}


def normalised_score(value, floor, ceiling):
    """``(value - floor) / (ceiling - floor)``: 0 at the floor (real vs real), 1 at the ceiling (another class).

    The same formula serves metrics that grow with the damage (KID, FID) and metrics that shrink (precision,
    recall, class consistency): the floor of precision is high and its ceiling low, so the denominator is
    negative and a worse precision still scores higher. It is affine, hence monotone in ``value`` and exact at
    both ends; it is not clipped: below 0 means "closer to the reference than a fresh real sample" (noise, or
    copying), above 1 "further than the nearest other class". Works elementwise on numpy arrays.

    Raises ``ValueError`` naming both values when ``floor == ceiling`` (the metric does not separate the class
    from its neighbour at these sizes, so no scale exists) or when either is not finite.
    """
    value, floor, ceiling = (np.asarray(v, dtype=float) for v in (value, floor, ceiling))
    if not (np.isfinite(floor).all() and np.isfinite(ceiling).all()):
        raise ValueError(f"normalised_score: floor and ceiling must be finite, got floor={floor}, ceiling={ceiling}")
    if np.any(floor == ceiling):
        raise ValueError(f"normalised_score: floor == ceiling ({floor} and {ceiling}): the metric has no scale here")
    out = (value - floor) / (ceiling - floor)
    return float(out) if out.ndim == 0 else out


def kid_from_features(f_gen: torch.Tensor, f_ref: torch.Tensor) -> float:
    """Unbiased MMD^2 with KID's kernel ``(x.y/d + 1)^3`` on all of ``f_gen`` ``(n, D)`` and ``f_ref`` ``(m, D)``."""
    x, y = f_gen.double(), f_ref.double()
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {n} and {m}")
    kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
                 - 2 * _poly_kernel(x, y).mean())


def feature_metrics(f_gen: torch.Tensor, f_ref: torch.Tensor, predicted: torch.Tensor, label: int,
                    k: int = 3, n_pr_draws: int = 3, seed: int = 0) -> dict[str, float]:
    """The feature-space metrics of :func:`evaluate` as plain floats, from features and predicted classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead ReLU units: singular covariances (scipy's LinAlgWarning)
        fid = fid_from_features(f_gen, f_ref)
    pr = _precision_recall_draws(f_gen, f_ref, k, n_pr_draws, seed)
    return {"kid": kid_from_features(f_gen, f_ref), "fid": fid, **{key: v["mean"] for key, v in pr.items()},
            "class_consistency": float((predicted == label).double().mean())}


def _summary(values: Sequence[float]) -> dict:
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    if np.isnan(v).all():
        return {"mean": None, "std": None, "q05": None, "q95": None, "draws": len(v)}
    q05, q95 = np.nanquantile(v, [0.05, 0.95])
    return {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0,
            "q05": float(q05), "q95": float(q95), "draws": len(v)}


class _Pools:
    """Real images of a dataset by class with their features and predicted classes (computed once per class).

    ``held_out(c)``: the held-out images of class ``c`` (held out from the runs' training, not always from the
    classifier's: see the exceptions below), drawn from where the runs' reference comes from
    (``reference_pool``, :data:`qdiff_lib.data.REFERENCE_POOLS`):

    * ``"test"``: the test split (the offline PathMNIST subset has only a training split, which is then the
      held-out pool, as in :func:`~qdiff_lib.metrics.held_out_reference`); ``other(c, n)`` takes class ``c``'s
      training images where it has fewer than ``n`` held-out ones (``"train"``).
    * ``"held_out"``: every held-out image (:func:`qdiff_lib.data.held_out_pool`): of the class calibrated, the
      training images not drawn by a run of ``n_train`` images with ``seed`` plus the val and test splits, the pool
      that run's reference comes from; of another class, all its images (no run trains on it). The training
      images among them are also the classifier's, as in the runs' reference.

    ``label`` is the class calibrated. Each pool is shuffled with a seed and capped at ``pool_cap``.
    """

    def __init__(self, dataset: str, clf: TrainedClassifier, pool_cap: int, seed: int, label: int,
                 reference_pool: str = "test", n_train: int = 0):
        check_choice("reference pool", reference_pool, data.REFERENCE_POOLS)
        self.dataset, self.clf = data.dataset_info(dataset).name, clf
        self.pool_cap, self.seed, self._cache = pool_cap, seed, {}
        self.label, self.reference_pool, self.n_train = int(label), reference_pool, n_train
        self.held_out_split = data.held_out_split(self.dataset)

    def _load(self, split: str, label: int) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.DataNotice)
            if split != "held_out":
                return data.load_images(self.dataset, split, label)
            n_train = self.n_train if label == self.label else 0
            return data.held_out_pool(self.dataset, label, n_train, self.seed)

    def _get(self, split: str, label: int) -> dict:
        if (split, label) not in self._cache:
            x = self._load(split, label)
            g = torch.Generator().manual_seed(self.seed + 7919 * label)
            x = x[torch.randperm(len(x), generator=g)[: self.pool_cap]]
            f = extract_features(x, self.clf.feature)
            self._cache[(split, label)] = {"x": x, "f": f, "p": self.clf.net.head(f.float()).argmax(1)}
        return self._cache[(split, label)]

    def held_out(self, label: int) -> dict:
        """Class ``label``'s held-out pool (for the class calibrated, ``self.label``, without its run's training
        images)."""
        if self.reference_pool == "held_out":
            return self._get("held_out", label)
        return self._get(self.held_out_split, label)

    def other(self, label: int, n: int) -> tuple[dict, str]:
        """Images of another class for the ceiling, and where they come from: the held-out pool if it has ``n``
        images (always with ``"held_out"``), else the class's training images."""
        pool = self.held_out(label)
        if self.reference_pool == "held_out":
            return pool, "held_out"
        return (pool, self.held_out_split) if len(pool["x"]) >= n else (self._get("train", label), "train")


def _sizes(n_available: int, n_samples: int, n_reference: int) -> tuple[int, int]:
    """(samples, reference) drawn disjointly from ``n_available`` held-out images: the reference gets
    ``min(n_reference, n_available // 2)``, the samples ``min(n_samples, what is left)``."""
    n_ref = min(n_reference, n_available // 2)
    return min(n_samples, n_available - n_ref), n_ref


def _draw(pool: dict, idx: torch.Tensor) -> dict:
    return {key: v[idx] for key, v in pool.items()}


def _classifier(dataset: str, classifier: TrainedClassifier | None, augment: str = "none") -> TrainedClassifier:
    """``classifier``, or the cached one of ``dataset`` trained with ``augment``; ValueError when a given classifier
    was trained with another augmentation."""
    from qdiff_lib.classifier import get_classifier

    if classifier is None:
        return get_classifier(dataset, progress=False, augment=augment)
    if classifier.recipe.augment != augment:
        raise ValueError(f"the classifier given was trained with augmentation {classifier.recipe.augment!r}, but "
                         f"classifier_augment is {augment!r}")
    return classifier


def metric_floor_ceiling(
    dataset: str,
    label: int,
    n_samples: int = 500,
    n_reference: int = 800,
    draws: int = 5,
    seed: int = 0,
    ceiling: Literal["nearest", "mean"] = "nearest",
    classifier: TrainedClassifier | None = None,
    k: int = 3,
    pool_cap: int = 3000,
    classifier_augment: str = "none",
    reference_pool: str = "test",
    n_train: int = 0,
) -> dict:
    """Each metric's floor and ceiling for class ``label`` of ``dataset``, at (up to) the study's sample sizes.

    * **floor**: two disjoint samples of held-out real images of the class, one of
      ``n_samples`` images in the place of the generated ones, one of ``n_reference`` as the reference, both from
      the pool the runs' reference comes from (``reference_pool``, :data:`qdiff_lib.data.REFERENCE_POOLS`):
      ``"test"``, the test split (the offline PathMNIST subset has none, so its training images, as
      :func:`~qdiff_lib.metrics.held_out_reference` does); ``"held_out"``, every held-out image of the class
      (:func:`qdiff_lib.data.held_out_pool`: the training images a run of ``n_train`` images with ``seed`` did not
      draw, plus the val and test splits), the pool of ``few_shot_split(..., pool="held_out")``. What a
      perfect generator, drawing fresh images of the class, would score; only chance or copying beats it.
      With ``"test"`` the classifier has not trained on these images, as it has not seen generated samples
      (training images sit measurably closer to its training data: on MNIST digit 3 their KID against test
      images is a few units above 0). Two exceptions, as in the runs' own reference: on the offline PathMNIST
      subset the classifier trained on most of the subset, and a ``"held_out"`` pool includes training-split
      images, which the classifier trained on.
    * **ceiling**: ``n_samples`` real images of another class against the same reference (``ceiling_source``: with
      ``"test"``, held-out images of that class, or its training images when it has fewer than ``n_samples``; with
      ``"held_out"``, all the images of that class, which no run trains on).
      ``ceiling="nearest"`` (default) takes the other class closest to ``label`` by mean KID, for every metric:
      a score of 1 then means "as far from the class as its most similar wrong class", a failure every reader
      recognises (a 3 drawn like an 8), and the scale does not depend on how many other classes a dataset has
      (eight other tissue types in PathMNIST, one other class in BreastMNIST); the mean over all other classes
      (``"mean"``) is a larger distance that squeezes every model towards 0. This is the book's choice; the paper
      has no calibration.

    Sizes (:func:`_sizes`): the reference takes ``min(n_reference, half the held-out images)``, the samples
    ``min(n_samples, the rest)``; both are returned. Each of ``draws`` redraws takes new subsets of every pool,
    from a ``torch.Generator`` seeded by ``seed``. KID is unbiased, so its floor is about 0 and its ceiling does
    not depend on the sizes; FID, precision, recall, density and coverage do depend on them. ``speckle`` is the
    excess of :func:`~qdiff_lib.metrics.speckle` (None where the class has no background).

    Returns ``{"dataset", "label", "n_samples", "n_reference", "draws", "ceiling_rule", "ceiling_label",
    "ceiling_source", "floor": {metric: summary}, "ceiling": {metric: summary}, "kid_by_class": {other label:
    mean KID}, "classifier_test_accuracy"}``; a summary is ``{"mean", "std", "q05", "q95", "draws"}`` over the
    redraws (q05, q95: the 5% and 95% quantiles). The metrics are measured with ``classifier`` (default: the
    cached classifier of ``dataset`` trained with the augmentation ``classifier_augment``).
    """
    check_choice("ceiling", ceiling, ("nearest", "mean"))
    info = data.dataset_info(dataset)
    clf = _classifier(dataset, classifier, classifier_augment)
    pools = _Pools(dataset, clf, pool_cap, seed, label, reference_pool, n_train)
    own = pools.held_out(label)
    n, n_ref = _sizes(len(own["x"]), n_samples, n_reference)
    if n <= k or n_ref <= k:
        raise ValueError(f"{dataset} label {label}: only {len(own['x'])} held-out images, need more than {2 * k}")
    others = {c: pools.other(c, n) for c in range(info.n_classes) if c != label}
    g = torch.Generator().manual_seed(seed)
    per = {c: {m: [] for m in METRICS} for c in [label, *others]}
    for d in range(draws):
        perm = torch.randperm(len(own["x"]), generator=g)
        ref = _draw(own, perm[:n_ref])
        for c in [label, *others]:
            if c == label:
                smp = _draw(own, perm[n_ref : n_ref + n])
            else:
                pool = others[c][0]
                smp = _draw(pool, torch.randperm(len(pool["x"]), generator=g)[:n])
            vals = feature_metrics(smp["f"], ref["f"], smp["p"], label, k, seed=seed + d)
            vals["speckle"] = speckle(smp["x"], ref["x"])["excess"]
            for m in METRICS:
                per[c][m].append(vals[m])
    kid_by_class = {c: float(np.mean(per[c]["kid"])) for c in others}
    nearest = min(kid_by_class, key=kid_by_class.get)
    if ceiling == "nearest":
        ceil = {m: _summary(per[nearest][m]) for m in METRICS}
    else:  # mean over the other classes, draw by draw
        ceil = {m: _summary([None if any(per[c][m][d] is None for c in others)
                             else float(np.mean([per[c][m][d] for c in others])) for d in range(draws)])
                for m in METRICS}
    return {
        "dataset": info.name, "label": int(label), "n_samples": int(n), "n_reference": int(n_ref),
        "draws": int(draws), "ceiling_rule": ceiling, "ceiling_label": int(nearest) if ceiling == "nearest" else None,
        "ceiling_source": others[nearest][1] if ceiling == "nearest" else sorted({s for _, s in others.values()}),
        "floor": {m: _summary(per[label][m]) for m in METRICS}, "ceiling": ceil, "kid_by_class": kid_by_class,
        "classifier_test_accuracy": clf.test_accuracy,
    }


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    w = torch.exp(-(t**2) / (2 * sigma**2))
    return w / w.sum()


def degrade(images: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None,
            other: torch.Tensor | None = None) -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` in [-1, 1] corrupted by ``kind`` at ``strength`` (0: unchanged), in [-1, 1].

    * ``"gaussian"``: add ``strength`` x N(0, 1) per pixel and channel, clamp.
    * ``"blur"``: separable Gaussian blur of standard deviation ``strength`` pixels (edges replicated).
    * ``"speckle"``: salt and pepper: each pixel (all channels) with probability ``strength`` set to white or
      black, half and half.
    * ``"other_class"``: the first ``round(strength * B)`` images replaced by the first ones of ``other``
      ``(>= B, C, H, W)`` (real images of another class; draw both sets at random beforehand).
    """
    check_choice("degradation", kind, DEGRADATIONS)
    x = _check_images(images, "images").float()
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return x.clone()
    if kind == "gaussian":
        return (x + strength * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    if kind == "blur":
        w = _gaussian_kernel(strength)
        r, c = len(w) // 2, x.shape[1]
        y = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        y = torch.nn.functional.conv2d(y, w.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
        return torch.nn.functional.conv2d(y, w.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
    if kind == "speckle":
        b, _, h, w_ = x.shape
        hit = torch.rand((b, 1, h, w_), generator=generator) < strength
        salt = torch.rand((b, 1, h, w_), generator=generator) < 0.5
        return torch.where(hit, torch.where(salt, 1.0, -1.0), x)
    if other is None or len(other) < len(x) or other.shape[1:] != x.shape[1:]:
        raise ValueError(f"other_class needs other images shaped (>= {len(x)}, {', '.join(map(str, x.shape[1:]))})")
    n = int(round(min(strength, 1.0) * len(x)))
    return torch.cat([other[:n].float(), x[n:]])


def degradation_curves(
    dataset: str,
    label: int,
    kinds: Sequence[str] = tuple(DEGRADATIONS),
    strengths: dict[str, Sequence[float]] | None = None,
    n_samples: int = 500,
    n_reference: int = 800,
    draws: int = 3,
    seed: int = 0,
    other_label: int | None = None,
    classifier: TrainedClassifier | None = None,
    k: int = 3,
    pool_cap: int = 3000,
    classifier_augment: str = "none",
) -> list[dict]:
    """Every metric's response to real images of class ``label`` degraded at growing strength.

    For each draw (``torch.Generator`` seeded by ``seed``): two disjoint samples of held-out real images of the
    class, as the floor of :func:`metric_floor_ceiling` (sizes clamped the same way); the samples are degraded
    by :func:`degrade` for each kind and strength (``strengths``: default :data:`DEGRADATIONS`) and scored
    against the reference. ``other_class`` mixes in real images of
    ``other_label`` (default: the class whose KID against the reference is smallest, the nearest class).

    Returns one record per (kind, strength): ``{"kind", "strength", "n_samples", "n_reference", "other_label",
    metric: summary over draws for each metric of :data:`METRICS`}``.
    """
    for kind in kinds:
        check_choice("degradation", kind, DEGRADATIONS)
    strengths = {**DEGRADATIONS, **(strengths or {})}
    info = data.dataset_info(dataset)
    clf = _classifier(dataset, classifier, classifier_augment)
    pools = _Pools(dataset, clf, pool_cap, seed, label)
    own = pools.held_out(label)
    n, n_ref = _sizes(len(own["x"]), n_samples, n_reference)
    other = None
    if "other_class" in kinds:
        if other_label is None:  # the nearest class: smallest KID against the class's held-out images
            kid_by = {c: kid_from_features(pools.other(c, n)[0]["f"][:n], own["f"][:n_ref])
                      for c in range(info.n_classes) if c != label}
            other_label = min(kid_by, key=kid_by.get)
        other = pools.other(other_label, n)[0]
        n = min(n, len(other["x"]))
    g = torch.Generator().manual_seed(seed)
    values = {(kind, s): {m: [] for m in METRICS} for kind in kinds for s in strengths[kind]}
    for d in range(draws):
        perm = torch.randperm(len(own["x"]), generator=g)
        ref, x = _draw(own, perm[:n_ref]), own["x"][perm[n_ref : n_ref + n]]
        x_other = None if other is None else other["x"][torch.randperm(len(other["x"]), generator=g)[:n]]
        for kind in kinds:
            for s in strengths[kind]:
                y = degrade(x, kind, s, g, x_other)
                f = extract_features(y, clf.feature)
                vals = feature_metrics(f, ref["f"], clf.net.head(f.float()).argmax(1), label, k, seed=seed + d)
                vals["speckle"] = speckle(y, ref["x"])["excess"]
                for m in METRICS:
                    values[(kind, s)][m].append(vals[m])
    return [{"kind": kind, "strength": float(s), "n_samples": int(n), "n_reference": int(n_ref),
             "other_label": other_label if kind == "other_class" else None,
             **{m: _summary(v[m]) for m in METRICS}} for (kind, s), v in values.items()]
