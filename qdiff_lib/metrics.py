"""Sample-quality metrics that mean something with fewer than 100 training images.

The paper's numbers are FID of about 13 images against an unrelated real set, and SSIM between unpaired images
(PAPER.md, defect 4). Here every metric is computed on raw sample tensors ``(B, C, 28, 28)`` in [-1, 1], in
the feature space of a classifier trained on the same dataset (:mod:`qdiff_lib.classifier`), against held-out
real images of the same class:

* **KID** (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial kernel
  :math:`k(x, y) = (x^\\top y / d + 1)^3`. Unbiased at any sample size, so it is the headline small-sample
  metric. Computed by torchmetrics' ``KernelInceptionDistance`` with our feature module; its standard error
  comes from a delete-one jackknife over both sample sets.
* **FID** (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two feature sets,
  :math:`\\|\\mu_1-\\mu_2\\|^2 + \\mathrm{Tr}(\\Sigma_1+\\Sigma_2-2(\\Sigma_1\\Sigma_2)^{1/2})`. Biased upwards at
  small N (a covariance from N vectors in 128 dimensions); reported for comparison with the paper, with its
  spread under redrawing of the real reference (:func:`fid_spread`).
* **precision / recall** (Kynkaanniemi et al. 2019): the fraction of generated samples inside the real
  k-nearest-neighbour manifold, and of real images inside the generated one; with density and coverage
  (Naeem et al. 2020), which an isolated real image sways less.
* **class consistency**: the classifier's accuracy on samples meant to be of class ``label``.
* **memorization**: median distance from held-out real images to their nearest training image, divided by the
  same median for generated samples. About 1 for a model that generalises; large when samples copy training
  images (:data:`MEMORIZATION_THRESHOLD`).

:func:`inception_fid` gives the paper's Inception-v3 FID when its weights and ``torch-fidelity`` are installed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from qdiff_lib import data

if TYPE_CHECKING:
    from qdiff_lib.classifier import TrainedClassifier

__all__ = [
    "MEMORIZATION_THRESHOLD",
    "INCEPTION_WEIGHTS_FILE",
    "extract_features",
    "fid",
    "fid_from_features",
    "PrecomputedFeatures",
    "kid",
    "kid_jackknife_se",
    "precision_recall",
    "class_consistency",
    "memorization",
    "fid_spread",
    "small_sample_bias",
    "inception_fid",
    "held_out_reference",
    "evaluate",
]

#: A memorization score above this flags copying: generated samples sit, in median, 1.5 times closer to
#: their nearest training image than fresh real images of the class do.
MEMORIZATION_THRESHOLD = 1.5

#: torch-fidelity's Inception-v3 weights (the TensorFlow FID network ported to PyTorch), as torch.hub caches it.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE


def _check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected (B, C, H, W), got {shape}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x.detach() if x.is_floating_point() else x.detach().float()


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


@torch.no_grad()
def extract_features(images: torch.Tensor, feature: nn.Module, batch_size: int = 512) -> torch.Tensor:
    """Features ``(B, D)`` (float64, CPU) of images ``(B, C, H, W)`` through ``feature`` (on its device)."""
    device = _device_of(feature)
    out = [feature(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def fid(samples: torch.Tensor, reference: torch.Tensor, feature: nn.Module) -> float:
    """FID between ``samples`` and ``reference`` ``(B, C, H, W)`` in ``feature``'s space (torchmetrics).

    ``feature`` maps ``(B, C, H, W)`` to ``(B, D)``; each set needs at least 2 images.
    """
    samples, reference = _check_images(samples, "samples"), _check_images(reference, "reference")
    device = _device_of(feature)
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True).to(device)
    metric.update(reference.to(device), real=True)
    metric.update(samples.to(device), real=False)
    return float(metric.compute())


def kid(
    samples: torch.Tensor,
    reference: torch.Tensor,
    feature: nn.Module,
    n_subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 0,
) -> dict:
    """KID between ``samples`` and ``reference`` ``(B, C, H, W)`` (torchmetrics, custom ``feature``).

    torchmetrics averages the unbiased MMD^2 over ``n_subsets`` random subsets of ``subset_size`` images from
    each set (default and maximum: the smaller set size, so that with N < 100 all images count). It draws the
    subsets from torch's global generator: we seed it with ``seed`` inside ``torch.random.fork_rng``, so the
    result is reproducible and the caller's RNG state is unchanged.

    Returns ``{"mean", "se", "subset_std", "subset_size", "n_subsets"}``: ``mean`` is torchmetrics' value,
    ``se`` the jackknife standard error of the full-sample estimate (:func:`kid_jackknife_se`; it accounts for
    the finite number of generated and reference images), ``subset_std`` torchmetrics' spread over subsets
    (not a standard error: the subsets overlap).
    """
    samples, reference = _check_images(samples, "samples"), _check_images(reference, "reference")
    n_max = min(len(samples), len(reference))
    if n_max < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(samples)} samples and {len(reference)} reference")
    subset_size = n_max if subset_size is None else min(int(subset_size), n_max)
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=feature, subsets=int(n_subsets), subset_size=subset_size)
    device = _device_of(feature)
    metric = metric.to(device)
    metric.update(reference.to(device), real=True)
    metric.update(samples.to(device), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    f_gen = torch.cat(metric.fake_features).double().cpu()
    f_ref = torch.cat(metric.real_features).double().cpu()
    return {
        "mean": float(mean),
        "se": kid_jackknife_se(f_gen, f_ref),
        "subset_std": float(std),
        "subset_size": subset_size,
        "n_subsets": int(n_subsets),
    }


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_jackknife_se(f_gen: torch.Tensor, f_ref: torch.Tensor) -> float:
    """Delete-one jackknife standard error of the full-sample unbiased MMD^2 (KID's kernel).

    ``f_gen`` ``(n, D)``, ``f_ref`` ``(m, D)``. The estimate is
    ``sum_{i!=j} k(x_i,x_j)/(n(n-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum k(x_i,y_j)/(nm)``; deleting one
    point changes each sum in closed form, so all ``n + m`` leave-one-out values cost one pass over the kernel
    matrices. The variance is the sum of the two one-sample jackknife variances (the sets are independent).
    Needs ``n, m >= 3``.
    """
    x, y = f_gen.double(), f_ref.double()
    n, m = len(x), len(y)
    if n < 3 or m < 3:
        return float("nan")
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    kxx.fill_diagonal_(0.0)
    kyy.fill_diagonal_(0.0)
    sxx, syy, sxy = kxx.sum(), kyy.sum(), kxy.sum()
    # delete x_i
    t_xx = (sxx - 2 * kxx.sum(1)) / ((n - 1) * (n - 2))
    t_xy = (sxy - kxy.sum(1)) / ((n - 1) * m)
    theta_x = t_xx + syy / (m * (m - 1)) - 2 * t_xy
    # delete y_j
    t_yy = (syy - 2 * kyy.sum(1)) / ((m - 1) * (m - 2))
    t_yx = (sxy - kxy.sum(0)) / (n * (m - 1))
    theta_y = sxx / (n * (n - 1)) + t_yy - 2 * t_yx
    var = (n - 1) / n * ((theta_x - theta_x.mean()) ** 2).sum() + (m - 1) / m * ((theta_y - theta_y.mean()) ** 2).sum()
    return float(var.sqrt())


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (no ``|a|^2 + |b|^2 - 2ab`` shortcut, which blurs exact copies)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(f: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``f`` ``(N, D)`` to its k-th nearest other row."""
    d = _cdist(f, f)
    return d.kthvalue(k + 1, dim=1).values  # k+1: the point itself is at distance 0


def precision_recall(f_gen: torch.Tensor, f_ref: torch.Tensor, k: int = 3) -> dict:
    """Improved precision and recall (Kynkaanniemi et al. 2019) from features ``(n, D)`` and ``(m, D)``.

    The real manifold is the union of balls around each real feature with radius its distance to its k-th
    nearest real neighbour; precision is the fraction of generated features inside it. Recall swaps the roles.
    Use equal set sizes (the radii shrink as a set grows); :func:`evaluate` does.

    One isolated real image has a large radius and can swallow many bad samples, so with a few dozen images
    precision depends on which real images were drawn. Also returned: density and coverage (Naeem et al. 2020),
    built on the same real balls and less sensitive to such outliers: density is the number of real balls
    containing a generated sample, averaged over samples and divided by k (about 1 for matching
    distributions, unbounded above); coverage is the fraction of real balls that contain at least one sample.

    Returns ``{"precision", "recall", "density", "coverage"}``, each ``{"mean", "se"}``; for the three
    fractions ``se`` is the binomial ``sqrt(p(1-p)/n)`` given the balls (it ignores their own sampling noise);
    for density the standard error of the mean over samples.
    """
    f_gen, f_ref = f_gen.double(), f_ref.double()
    if min(len(f_gen), len(f_ref)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} features per set, got {len(f_gen)} and {len(f_ref)}")
    d = _cdist(f_gen, f_ref)  # (n, m)
    r_ref, r_gen = _knn_radii(f_ref, k), _knn_radii(f_gen, k)
    inside_ref = d <= r_ref[None, :]  # (n, m): sample i inside real ball j
    precision = inside_ref.any(1).double().mean().item()
    recall = (d <= r_gen[:, None]).any(0).double().mean().item()
    per_sample_density = inside_ref.double().sum(1) / k
    coverage = inside_ref.any(0).double().mean().item()

    def se(p: float, n: int) -> float:
        return math.sqrt(p * (1 - p) / n)

    return {
        "precision": {"mean": precision, "se": se(precision, len(f_gen))},
        "recall": {"mean": recall, "se": se(recall, len(f_ref))},
        "density": {"mean": per_sample_density.mean().item(), "se": (per_sample_density.std() / math.sqrt(len(f_gen))).item()},
        "coverage": {"mean": coverage, "se": se(coverage, len(f_ref))},
    }


def _precision_recall_draws(f_gen: torch.Tensor, f_ref: torch.Tensor, k: int, n_draws: int, seed: int) -> dict:
    """:func:`precision_recall` averaged over seeded draws of equal-size subsets of both sets."""
    n = min(len(f_gen), len(f_ref))
    n_draws = 1 if len(f_gen) == len(f_ref) else n_draws
    g = torch.Generator().manual_seed(seed)
    draws = [
        precision_recall(f_gen[torch.randperm(len(f_gen), generator=g)[:n]], f_ref[torch.randperm(len(f_ref), generator=g)[:n]], k)
        for _ in range(n_draws)
    ]
    out = {}
    for key in draws[0]:
        means = np.array([d[key]["mean"] for d in draws])
        ses = np.array([d[key]["se"] for d in draws])
        out[key] = {
            "mean": float(means.mean()),
            "se": float(ses.mean()),
            "draw_std": float(means.std(ddof=1)) if n_draws > 1 else 0.0,
        }
    return out


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


def memorization(
    samples: torch.Tensor,
    reference: torch.Tensor,
    train: torch.Tensor,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """How much closer generated samples come to the training set than held-out real images do.

    All inputs are vectors ``(B, D)`` (flattened pixels or features). With ``d(x) = min_t ||x - t||`` over the
    training rows, the score is ``median_r d(reference_r) / median_s d(samples_s)``. Held-out real images of the
    class score about 1; exact copies of training images score ``1 / eps`` (the denominator is floored at
    ``1e-3 * median d(reference)``, so the score is at most 1000 and stays finite). ``flag`` is
    ``score > MEMORIZATION_THRESHOLD``. ``copy_fraction`` is the fraction of samples closer to a training image
    than the 5% quantile of ``d(reference)`` (about 0.05 for fresh real images, 1 for copies). The interval is a
    percentile bootstrap over samples and reference (training set fixed), seeded by ``seed``.

    Returns ``{"mean", "ci_low", "ci_high", "flag", "threshold", "copy_fraction"}``.
    """
    s, r, t = (v.detach().double().flatten(1) for v in (samples, reference, train))
    d_gen = _cdist(s, t).min(1).values
    d_ref = _cdist(r, t).min(1).values

    def score(dg: torch.Tensor, dr: torch.Tensor) -> torch.Tensor:
        med_r = dr.median(-1).values
        return med_r / torch.maximum(dg.median(-1).values, 1e-3 * med_r)

    value = float(score(d_gen, d_ref))
    g = torch.Generator().manual_seed(seed)
    boot = score(
        d_gen[torch.randint(len(d_gen), (n_boot, len(d_gen)), generator=g)],
        d_ref[torch.randint(len(d_ref), (n_boot, len(d_ref)), generator=g)],
    ).numpy()
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    q05 = torch.quantile(d_ref, 0.05)
    return {
        "mean": value,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "flag": bool(value > MEMORIZATION_THRESHOLD),
        "threshold": MEMORIZATION_THRESHOLD,
        "copy_fraction": float((d_gen < q05).double().mean()),
    }


def fid_from_features(f_gen: torch.Tensor, f_ref: torch.Tensor) -> float:
    """torchmetrics FID on precomputed features ``(n, D)`` and ``(m, D)`` (through :class:`PrecomputedFeatures`)."""
    if f_gen.ndim != 2 or f_ref.ndim != 2 or f_gen.shape[1] != f_ref.shape[1]:
        raise ValueError(f"expected (n, D) and (m, D), got {tuple(f_gen.shape)} and {tuple(f_ref.shape)}")
    return fid(f_gen[:, :, None, None], f_ref[:, :, None, None], PrecomputedFeatures(f_gen.shape[1]))


class PrecomputedFeatures(nn.Module):
    """``(B, D, 1, 1)`` -> ``(B, D)``: lets torchmetrics' FID/KID run on features computed once.

    ``num_features`` tells torchmetrics the dimension (it would otherwise probe with a 3x299x299 dummy image).
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def fid_spread(
    samples: torch.Tensor,
    reference_pool: torch.Tensor,
    feature: nn.Module,
    n_reference: int,
    n_draws: int = 100,
    seed: int = 0,
) -> dict:
    """Spread of FID when only the real reference sample is redrawn.

    ``samples`` ``(n, C, H, W)`` stay fixed (the paper: about 13 images); ``n_draws`` reference samples of
    ``n_reference`` images are drawn without replacement from ``reference_pool`` ``(M, C, H, W)`` with a
    generator seeded by ``seed``; FID of each (torchmetrics, features of the pool computed once).

    Returns ``{"values": [...], "mean", "std", "q05", "q50", "q95", "min", "max", "n_samples", "n_reference"}``.
    """
    samples, reference_pool = _check_images(samples, "samples"), _check_images(reference_pool, "reference_pool")
    if not 2 <= n_reference <= len(reference_pool):
        raise ValueError(f"n_reference must be in 2..{len(reference_pool)} (the pool size), got {n_reference}")
    f_gen = extract_features(samples, feature)
    f_pool = extract_features(reference_pool, feature)
    g = torch.Generator().manual_seed(seed)
    values = np.array(
        [
            fid_from_features(f_gen, f_pool[torch.randperm(len(f_pool), generator=g)[:n_reference]])
            for _ in range(n_draws)
        ]
    )
    q05, q50, q95 = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "values": values.tolist(),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if n_draws > 1 else 0.0,
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "min": float(values.min()),
        "max": float(values.max()),
        "n_samples": len(samples),
        "n_reference": int(n_reference),
    }


def small_sample_bias(
    pool: torch.Tensor,
    feature: nn.Module,
    sizes: Sequence[int] = (13, 25, 50, 100, 250),
    n_draws: int = 10,
    seed: int = 0,
) -> list[dict]:
    """FID and KID between two disjoint real samples of the same distribution, as the sample size N grows.

    Both samples come from ``pool`` ``(M, C, H, W)`` (e.g. held-out real images of one class), so the true
    distance is 0: FID's excess over 0 is its small-sample bias (it falls roughly like 1/N), KID stays
    centred on 0 at every N. For each N, ``n_draws`` pairs of disjoint subsets are drawn with a generator
    seeded by ``seed``; needs ``M >= 2 max(sizes)``.

    Returns one record per N: ``{"n", "fid_mean", "fid_std", "kid_mean", "kid_std"}`` (std over draws).
    """
    pool = _check_images(pool, "pool")
    if 2 * max(sizes) > len(pool) or min(sizes) < 2:
        raise ValueError(f"sizes must be in 2..{len(pool) // 2} (half the pool), got {list(sizes)}")
    f_pool = extract_features(pool, feature)
    ident = PrecomputedFeatures(f_pool.shape[1])
    g = torch.Generator().manual_seed(seed)
    records = []
    for n in sizes:
        fids, kids = [], []
        for _ in range(n_draws):
            perm = torch.randperm(len(f_pool), generator=g)
            a, b = f_pool[perm[:n]], f_pool[perm[n : 2 * n]]
            fids.append(fid_from_features(a, b))
            kids.append(kid(a[:, :, None, None], b[:, :, None, None], ident, n_subsets=1, subset_size=n)["mean"])
        records.append(
            {
                "n": int(n),
                "fid_mean": float(np.mean(fids)),
                "fid_std": float(np.std(fids, ddof=1)) if n_draws > 1 else 0.0,
                "kid_mean": float(np.mean(kids)),
                "kid_std": float(np.std(kids, ddof=1)) if n_draws > 1 else 0.0,
            }
        )
    return records


def _inception_weights_candidates(weights_path: str | Path | None) -> list[Path]:
    if weights_path is not None:
        return [Path(weights_path)]
    return [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE]


def inception_fid(
    samples: torch.Tensor, reference: torch.Tensor, weights_path: str | Path | None = None
) -> float:
    """The paper's FID: Inception-v3 (2048-d pool features, torch-fidelity's port of the TF FID network).

    Images ``(B, C, H, W)`` in [-1, 1]; grey images are repeated to 3 channels, torchmetrics resizes to 299x299.
    Needs the weights file (``weights_path``, or torch.hub's cache ``$TORCH_HOME/hub/checkpoints/``) and the
    ``torch-fidelity`` package. Neither is available offline: raises ``FileNotFoundError`` naming the missing
    file, where it was looked for and how to get it, or ``ModuleNotFoundError`` for the package.
    """
    samples, reference = _check_images(samples, "samples"), _check_images(reference, "reference")
    candidates = _inception_weights_candidates(weights_path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"Inception-v3 FID weights not found: {INCEPTION_WEIGHTS_FILE} was looked for at "
            f"{', '.join(str(p) for p in candidates)}. Download it from {INCEPTION_WEIGHTS_URL} into "
            f"{candidates[-1].parent} (or pass weights_path=...). The companion's own metrics (classifier-feature "
            "KID/FID) do not need it."
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as err:
        raise ModuleNotFoundError(
            "inception_fid needs the torch-fidelity package (its Inception-v3 port); torch-fidelity imports "
            "torchvision when imported, so install both, with a torchvision built for the installed CPU torch "
            f"(import failed: {err})"
        ) from err

    def to_rgb01(x: torch.Tensor) -> torch.Tensor:
        x = ((x.clamp(-1, 1) + 1) / 2).float()
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    metric = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(found))
    metric.update(to_rgb01(reference), real=True)
    metric.update(to_rgb01(samples), real=False)
    return float(metric.compute())


def held_out_reference(
    dataset: str, label: int, train_images: torch.Tensor, n: int | None = None, seed: int = 0
) -> torch.Tensor:
    """Real images of class ``label`` disjoint from ``train_images``, ``(n, C, 28, 28)`` in [-1, 1].

    From the test split when it is on disk; otherwise (offline PathMNIST subset) from the training split, minus
    every image equal to one of ``train_images``. ``n`` images drawn without replacement with ``seed``
    (None: all).
    """
    try:
        pool = data.load_images(dataset, "test", label)
    except FileNotFoundError:  # data.py warns (DataNotice) that the training subset is used
        pool = data.load_images(dataset, "train", label)
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
        classifier: a :class:`~qdiff_lib.classifier.TrainedClassifier` (default: ``get_classifier(dataset)``).

    Returns a JSON-serialisable dict: ``kid`` and ``fid``-style entries are ``{"mean", ...}`` dicts:
    ``kid`` {mean, se, subset_std, ...}; ``fid`` {mean} (biased at small N: see :func:`small_sample_bias`, :func:`fid_spread`);
    ``precision``/``recall``/``density``/``coverage`` {mean, se, draw_std} (see :func:`precision_recall`;
    mean over ``n_pr_draws`` equal-size draws, ``draw_std`` their spread, ``se`` the mean binomial SE);
    ``class_consistency`` {mean, ci_low, ci_high, n}; ``memorization`` (pixels) and ``memorization_features``
    {mean, ci_low, ci_high, flag, threshold, copy_fraction}; plus ``n_samples``, ``n_reference``,
    ``n_train``, ``out_of_range_fraction``, ``classifier_test_accuracy``, ``seed``.
    """
    from qdiff_lib.classifier import get_classifier

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
    clf = (classifier if classifier is not None else get_classifier(dataset, device=device, progress=True)).to(device)
    feature = clf.feature

    f_gen = extract_features(samples, feature)
    f_ref = extract_features(reference, feature)
    f_train = extract_features(train_images, feature)
    pr = _precision_recall_draws(f_gen, f_ref, k, n_pr_draws, seed)
    predicted = clf.predict(samples.to(device)).cpu()
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
        "out_of_range_fraction": out_of_range,
        "n_samples": len(samples),
        "n_reference": len(reference),
        "n_train": len(train_images),
        "classifier_test_accuracy": clf.test_accuracy,
        "seed": seed,
    }
