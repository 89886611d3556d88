"""Nearest-neighbour metrics of generated samples against real images: improved precision and recall with density and
coverage, and memorization (closeness to the training images). Part of :mod:`qdiff_lib.metrics`, which exports the
public names."""

from __future__ import annotations

import math

import numpy as np
import torch

#: A memorization score above this flags copying: generated samples sit, in median, 1.5 times closer to
#: their nearest training image than fresh real images of the class do.
MEMORIZATION_THRESHOLD = 1.5


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
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} features per set, got {len(f_gen)} and {len(f_ref)}")
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
        "density": {"mean": per_sample_density.mean().item(),
                    "se": (per_sample_density.std() / math.sqrt(len(f_gen))).item()},
        "coverage": {"mean": coverage, "se": se(coverage, len(f_ref))},
    }


def _precision_recall_draws(f_gen: torch.Tensor, f_ref: torch.Tensor, k: int, n_draws: int, seed: int) -> dict:
    """:func:`precision_recall` averaged over seeded draws of equal-size subsets of both sets."""
    n = min(len(f_gen), len(f_ref))
    n_draws = 1 if len(f_gen) == len(f_ref) else n_draws
    g = torch.Generator().manual_seed(seed)
    draws = [
        precision_recall(f_gen[torch.randperm(len(f_gen), generator=g)[:n]],
                         f_ref[torch.randperm(len(f_ref), generator=g)[:n]], k)
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


def _memorization_score(d_gen: torch.Tensor, d_ref: torch.Tensor) -> float:
    """The score of :func:`memorization` from the nearest-training-image distances (the same formula)."""
    med_r = d_ref.median()
    return float(med_r / torch.maximum(d_gen.median(), 1e-3 * med_r))


def memorization_floor_from(
    train: torch.Tensor,
    reference: torch.Tensor,
    pool: torch.Tensor,
    n_samples: int,
    draws: int = 20,
    seed: int = 0,
) -> dict:
    """The :func:`memorization` score of a perfect non-copying generator: real images instead of samples.

    Each of ``draws`` seeded draws takes ``n_samples`` rows of ``pool`` (fresh real images of the class, disjoint
    from ``train`` and ``reference``) without replacement and scores them as :func:`memorization` scores generated
    samples against ``reference`` and ``train`` (same distances, same median ratio, same floor of the denominator).
    Inputs are images or vectors ``(B, ...)``, flattened as :func:`memorization` does; images are clamped to
    [-1, 1] first, as :func:`~qdiff_lib.metrics.evaluate` clamps samples (real images already are).

    Returns ``{"mean", "std", "q025", "q975", "draws", "scores", "n_samples", "n_reference", "n_train"}``: the mean
    and standard deviation (ddof 1) of the score over the draws, its 2.5% and 97.5% quantiles, and every score.
    """
    if draws < 1:
        raise ValueError(f"draws={draws}: expected at least 1")
    if not 1 <= n_samples <= len(pool):
        raise ValueError(f"n_samples={n_samples}: expected 1..{len(pool)} (the size of the pool)")
    t, r, p = (v.detach().clamp(-1, 1).double().flatten(1) for v in (train, reference, pool))
    d_ref = _cdist(r, t).min(1).values
    g = torch.Generator().manual_seed(seed)
    picks = [torch.randperm(len(p), generator=g)[:n_samples] for _ in range(draws)]
    used = torch.unique(torch.cat(picks))  # distances only for the pool rows some draw uses
    d_pool = torch.full((len(p),), float("nan"), dtype=torch.float64)
    d_pool[used] = _cdist(p[used], t).min(1).values
    scores = np.array([_memorization_score(d_pool[i], d_ref) for i in picks])
    q025, q975 = np.quantile(scores, [0.025, 0.975])
    return {
        "mean": float(scores.mean()),
        "std": float(scores.std(ddof=1)) if draws > 1 else 0.0,
        "q025": float(q025),
        "q975": float(q975),
        "draws": draws,
        "scores": scores.tolist(),
        "n_samples": n_samples,
        "n_reference": len(r),
        "n_train": len(t),
    }


def memorization_floor(
    dataset: str,
    label: int,
    n_train: int,
    n_ref: int,
    n_samples: int,
    seed: int = 0,
    draws: int = 20,
    draw_seed: int = 0,
    reference_pool: str = "test",
) -> dict:
    """:func:`memorization_floor_from` for one run of a study: the score its samples would get if the model were a
    perfect generator that never copies.

    The training and reference images are the run's own, ``qdiff_lib.data.few_shot_split(dataset, label, n_train,
    n_ref, seed, pool=reference_pool)``, as :func:`qdiff_lib.experiment.prepare` draws them. The fresh images come
    from every real image of the class on disk (training and held-out splits) minus exact copies of the training and
    reference images; ``draws`` draws of ``n_samples`` of them, seeded by ``draw_seed``.
    """
    import warnings

    from qdiff_lib import data

    train, reference = data.few_shot_split(dataset, label, n_train, n_ref, seed, pool=reference_pool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)  # the offline subset has only its training split
        splits = dict.fromkeys(["train", data.held_out_split(dataset)])
        everything = torch.cat([data.load_images(dataset, s, label) for s in splits])
    seen = {row.numpy().tobytes() for row in torch.cat([train, reference]).float().flatten(1)}
    keep = torch.tensor([row.numpy().tobytes() not in seen for row in everything.float().flatten(1)], dtype=torch.bool)
    return memorization_floor_from(train, reference, everything[keep], n_samples, draws, draw_seed)
