"""Distances between two image sets in a feature space: FID, KID (with its jackknife standard error), their behaviour at
small sample sizes, and the paper's Inception-v3 FID. Part of :mod:`qdiff_lib.metrics`, which exports the public
names."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

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
        raise ValueError(
            f"KID needs at least 2 images per set, got {len(samples)} samples and {len(reference)} reference")
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
