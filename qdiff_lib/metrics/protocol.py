"""The paper's evaluation protocol, run on raw samples with its spread over redraws. Part of
:mod:`qdiff_lib.metrics`, which exports the public names.

What the paper's code did (the official repository's ``cal_fid_ssim.py``, behind the README's main table, and
``full_unet/calculate_metrics_all_digits.py``, behind its all-digits table):

* **FID** between about 13 generated images (cropped out of a saved figure) and real images in Inception-v3's
  2048 pooled features: in the main table the first 13 images of the MNIST training split, of *any* class; in the
  all-digits table 5000 training images of the digit.
* **SSIM** (scikit-image's ``structural_similarity`` with its defaults: a uniform 7x7 window, sample covariances,
  ``K1 = 0.01``, ``K2 = 0.03``, 8-bit images) between generated image i and real image i of that same real set,
  averaged over the pairs: no correspondence exists between the two images of a pair.

:func:`paper_ssim` is that SSIM, written out (scikit-image is not a dependency; a test checks it against a
window-by-window computation). :func:`paper_fid` redraws the ``n`` generated images (and, with ``n_reference``,
the real ones) ``draws`` times and reports the spread that a single run of the protocol hides.
:func:`paper_protocol` is the entry ``"paper_protocol"`` of :func:`~qdiff_lib.metrics.evaluate`: both of the
paper's variants on a run's samples, in the dataset classifier's features (Inception-v3 is not available offline;
:func:`~qdiff_lib.metrics.inception_fid` computes it where its weights are installed).
:func:`protocol_groups` and :func:`protocol_table` gather scored runs by dataset, class and seed;
:func:`protocol_ranking` sets the protocol's verdicts on such a group of arms beside KID's.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from qdiff_lib import data
from qdiff_lib.metrics.distances import _check_images, extract_features, fid_from_features

if TYPE_CHECKING:
    from torch import nn

__all__ = ["kendall_tau_b", "PAPER_N", "PAPER_DRAWS", "PAPER_POOL", "PAPER_SSIM_WINDOW", "paper_ssim", "paper_fid",
           "paper_protocol", "win_probability", "protocol_ranking", "protocol_groups", "protocol_table"]

#: Generated images behind each of the paper's FIDs (and SSIMs).
PAPER_N = 13
#: Redraws of those images in :func:`paper_protocol` (our choice: enough for a 5%-95% range, about a second).
PAPER_DRAWS = 100
#: Real images of every class, drawn once per run from the held-out split, from which each redraw takes the
#: paper's ``n`` real images of "any class" (our choice; the paper took the first ``n`` training images).
PAPER_POOL = 1000
#: scikit-image's default SSIM window (uniform, 7x7), as the paper used it.
PAPER_SSIM_WINDOW = 7
_K1, _K2 = 0.01, 0.03
_SIGNIFICANT = 6  # digits kept of each redraw's value in the summaries' "values"


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the 0-255 integers of an 8-bit image (the paper's PNGs), in float64."""
    return ((x.double().clamp(-1, 1) + 1) * 127.5).round()


def paper_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of each pair ``(a[i], b[i])`` of images ``(B, C, H, W)`` in [-1, 1], as the paper computed it: ``(B,)``.

    scikit-image's ``structural_similarity`` with its defaults on 8-bit images (``data_range`` 255): local means,
    variances and covariance over a uniform :data:`PAPER_SSIM_WINDOW` x :data:`PAPER_SSIM_WINDOW` window, the
    (co)variances with the sample normalisation ``1 / (w^2 - 1)``, ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 *
    255)^2``, averaged over the windows that lie inside the image (scikit-image crops the border its filter pads)
    and over channels (its ``channel_axis``). Images are rounded to 8 bits first, as the paper's were.
    """
    a, b = _check_images(a, "a"), _check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paper_ssim: pairs need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    w = PAPER_SSIM_WINDOW
    if min(a.shape[-2:]) < w:
        raise ValueError(f"paper_ssim: images must be at least {w}x{w}, got {tuple(a.shape[-2:])}")
    x, y = _to_8bit(a.cpu()), _to_8bit(b.cpu())

    def mean(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(t, w, stride=1)

    ux, uy = mean(x), mean(y)
    norm = w * w / (w * w - 1)
    vx, vy, vxy = norm * (mean(x * x) - ux * ux), norm * (mean(y * y) - uy * uy), norm * (mean(x * y) - ux * uy)
    c1, c2 = (_K1 * 255) ** 2, (_K2 * 255) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    q05, q95 = np.quantile(a, [0.05, 0.95])
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0, "q05": float(q05),
            "q95": float(q95), "min": float(a.min()), "max": float(a.max()),
            "values": [float(f"{v:.{_SIGNIFICANT}g}") for v in a]}


def paper_fid(
    samples: torch.Tensor,
    reference: torch.Tensor,
    feature: nn.Module,
    n: int = PAPER_N,
    draws: int = 100,
    seed: int = 0,
    ssim_reference: torch.Tensor | None = None,
    n_reference: int | None = None,
) -> dict:
    """The paper's protocol on raw samples, with its spread over redraws of the ``n`` images it looks at.

    For each of ``draws`` redraws (one ``torch.Generator`` seeded by ``seed``), ``n`` of ``samples``
    ``(B, C, H, W)`` are drawn, then:

    * ``n_reference=None`` (the all-digits table): FID between them and all of ``reference`` ``(M, C, H, W)``;
      SSIM (:func:`paper_ssim`) of the pairs (sample i, real image i), the ``n`` real images drawn from
      ``ssim_reference`` (default: ``reference``; pass images of every class to pair as the main table did).
    * ``n_reference=k`` (the main table, with ``k = n``): ``k`` images of ``reference`` are drawn; FID between
      the two draws, SSIM of the pairs (sample i, drawn real image i), as ``cal_fid_ssim.py`` used one real set for
      both. ``ssim_reference`` must then be None.

    FID is computed in ``feature``'s space (the dataset's classifier; the paper used Inception-v3). Returns
    ``{"fid": summary, "ssim": summary, "n", "draws", "n_reference"}``; a summary is ``{"mean", "std", "q05",
    "q95", "min", "max", "values"}`` over the redraws (``values`` rounded to six significant digits).
    """
    samples, reference = _check_images(samples, "samples").float(), _check_images(reference, "reference").float()
    if n_reference is not None:
        if ssim_reference is not None:
            raise ValueError("paper_fid: with n_reference the SSIM partners are the drawn reference images; "
                             "ssim_reference must be None")
        if not n <= n_reference <= len(reference):
            raise ValueError(f"n_reference must be in {n}..{len(reference)} (n to the reference size), got "
                             f"{n_reference}")
    pair = reference if ssim_reference is None else _check_images(ssim_reference, "ssim_reference").float()
    if not 2 <= n <= min(len(samples), len(pair)):
        raise ValueError(f"n must be in 2..{min(len(samples), len(pair))} (samples and SSIM partners), got {n}")
    f_gen, f_ref = extract_features(samples, feature), extract_features(reference, feature)
    g = torch.Generator().manual_seed(seed)
    fids, ssims = [], []
    for _ in range(draws):
        si = torch.randperm(len(samples), generator=g)[:n]
        if n_reference is None:
            ref_idx, pi = None, torch.randperm(len(pair), generator=g)[:n]
        else:
            ref_idx = torch.randperm(len(reference), generator=g)[:n_reference]
            pi = ref_idx[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dead ReLU units: singular covariances
            fids.append(fid_from_features(f_gen[si], f_ref if ref_idx is None else f_ref[ref_idx]))
        ssims.append(float(paper_ssim(samples[si], pair[pi]).mean()))
    return {"fid": _summary(fids), "ssim": _summary(ssims), "n": int(n), "draws": int(draws),
            "n_reference": len(reference) if n_reference is None else int(n_reference)}


def paper_protocol(samples: torch.Tensor, reference: torch.Tensor, feature: nn.Module, dataset: str,
                   seed: int = 0, draws: int = PAPER_DRAWS, pool: torch.Tensor | None = None) -> dict:
    """Both of the paper's protocols on a run's ``samples``: the entry ``"paper_protocol"`` of ``evaluate``.

    * ``"any_class"`` (the README's main table, ``cal_fid_ssim.py``): FID of ``n`` samples against ``n`` real
      images of any class, SSIM of the pairs they form. The real images come from ``pool`` (default:
      :data:`PAPER_POOL` held-out images of every class of ``dataset``, drawn with ``seed``).
    * ``"class"`` (the all-digits table): FID of ``n`` samples against the run's whole ``reference`` (held-out
      images of the class; the paper took 5000 training images of the digit), SSIM against ``n`` of them.

    ``n`` is :data:`PAPER_N` (fewer only when the run has fewer samples). Each is :func:`paper_fid` with ``seed``
    and ``draws``. Returns ``{"n", "draws", "features", "any_class": {"fid", "ssim", "n_reference",
    "pool"}, "class": {"fid", "ssim", "n_reference"}}``.
    """
    samples, reference = _check_images(samples, "samples").float(), _check_images(reference, "reference").float()
    if pool is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", data.DataNotice)
            every = data.load_images(dataset, data.held_out_split(dataset))
        g = torch.Generator().manual_seed(seed)
        pool = every[torch.randperm(len(every), generator=g)[:PAPER_POOL]]
    pool = _check_images(pool, "pool").float()
    n = min(PAPER_N, len(samples), len(reference), len(pool))
    any_class = paper_fid(samples, pool, feature, n=n, draws=draws, seed=seed, n_reference=n)
    own = paper_fid(samples, reference, feature, n=n, draws=draws, seed=seed)
    drop = ("n", "draws")
    return {"n": n, "draws": int(draws), "features": "the dataset's classifier (the paper: Inception-v3)",
            "any_class": {**{k: v for k, v in any_class.items() if k not in drop}, "pool": len(pool)},
            "class": {k: v for k, v in own.items() if k not in drop}}


def win_probability(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """P(a single draw of ``a`` is below a single independent draw of ``b``), ties counting half.

    ``a`` and ``b`` are the redraws of a lower-is-better metric for two arms: the probability that one run of the
    protocol ranks arm a ahead of arm b (the Mann-Whitney statistic over all pairs of redraws)."""
    x, y = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
    return float((x < y).mean() + 0.5 * (x == y).mean())


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between each row of ``x`` ``(rows, n)`` and ``y`` ``(n,)``: scipy's
    ``stats.kendalltau(row, y).statistic`` for every row at once (NaN where a row or ``y`` is constant).

    Over the ``n (n - 1) / 2`` pairs of positions: (concordant - discordant) / sqrt((pairs - ties in x) * (pairs -
    ties in y)). :func:`protocol_ranking` takes it for thousands of simulated rankings of a few arms, where one scipy
    call per row cost most of the metrics chapter's time; a test checks it against scipy, ties included."""
    x = np.atleast_2d(np.asarray(x, dtype=float))
    y = np.asarray(y, dtype=float)
    if x.shape[1] != y.shape[0]:
        raise ValueError(f"x has {x.shape[1]} columns, y has {y.shape[0]} values: expected the same")
    i, j = np.triu_indices(y.shape[0], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[i] - y[j])
    pairs = i.size
    free_x, free_y = (pairs - np.sum(sx == 0, axis=1)).astype(float), float(pairs - np.sum(sy == 0))
    with np.errstate(invalid="ignore", divide="ignore"):  # in scipy's order of operations, for the same bits
        tau = np.sum(sx * sy, axis=1) / np.sqrt(free_x) / np.sqrt(free_y)
    return np.where((free_x > 0) & (free_y > 0), np.clip(tau, -1.0, 1.0), np.nan)


def protocol_ranking(runs: Mapping[str, Mapping], variant: str = "any_class", metric: str = "fid",
                     decided: float = 0.95, z: float = 1.96, simulations: int = 2000, seed: int = 0) -> dict:
    """The ranking that the paper's protocol gives a group of arms, beside KID's, and whether it is decidable.

    ``runs``: ``{arm: metrics}``, each the ``metrics`` of one run (:func:`~qdiff_lib.metrics.evaluate`, with a
    ``"paper_protocol"`` entry) of the same dataset, class and seed. ``metric``: ``"fid"`` (lower is better) or
    ``"ssim"`` (higher is better) of the protocol's ``variant``.

    * ``arms``: one row per arm: the protocol's mean, std, 5% and 95% over redraws, KID's mean and standard error,
      and each arm's rank by the protocol's mean and by KID (1: best).
    * ``pairs``: for each pair of arms, ``p_protocol``: the probability that one run of the protocol ranks the
      first ahead (:func:`win_probability` over the redraws); ``protocol_decided``: whether that probability is at
      least ``decided`` or at most ``1 - decided`` (one run of the protocol gives the same order at least that
      often); KID's difference (first minus second), its z and ``kid_decided`` (``|z| >= z``); ``agree``: whether
      the protocol's likelier order is KID's order.
    * ``kendall_tau_means``: Kendall's tau between the two rankings by means; ``p_same_ranking`` and
      ``mean_kendall_tau``: over ``simulations`` single runs of the protocol (one redraw per arm, drawn with
      ``seed``), the share that reproduces KID's ranking exactly and their mean Kendall tau with it.
    """
    from scipy import stats

    if metric not in ("fid", "ssim"):
        raise ValueError(f"metric must be 'fid' or 'ssim', got {metric!r}")
    if len(runs) < 2:
        raise ValueError(f"protocol_ranking needs at least 2 arms, got {len(runs)}")
    sign = 1.0 if metric == "fid" else -1.0  # to lower-is-better
    arms = list(runs)
    vals = {a: sign * np.asarray(runs[a]["paper_protocol"][variant][metric]["values"], dtype=float) for a in arms}
    kid = {a: (float(runs[a]["kid"]["mean"]), float(runs[a]["kid"]["se"])) for a in arms}
    means = np.array([vals[a].mean() for a in arms])
    kids = np.array([kid[a][0] for a in arms])
    rank_p, rank_k = stats.rankdata(means), stats.rankdata(kids)
    rows = []
    for i, a in enumerate(arms):
        s = runs[a]["paper_protocol"][variant][metric]
        rows.append({"arm": a, "mean": s["mean"], "std": s["std"], "q05": s["q05"], "q95": s["q95"],
                     "kid": kid[a][0], "kid_se": kid[a][1], "rank_protocol": float(rank_p[i]),
                     "rank_kid": float(rank_k[i])})
    pairs = []
    for a, b in itertools.combinations(arms, 2):
        p = win_probability(vals[a], vals[b])
        diff = kid[a][0] - kid[b][0]
        zab = diff / max(float(np.hypot(kid[a][1], kid[b][1])), 1e-300)
        pairs.append({"first": a, "second": b, "p_protocol": p, "protocol_decided": bool(p >= decided or
                                                                                      p <= 1 - decided),
                      "kid_diff": diff, "kid_z": zab, "kid_decided": bool(abs(zab) >= z),
                      "agree": bool((p > 0.5) == (diff < 0)) if p != 0.5 and diff != 0 else None})
    g = np.random.default_rng(seed)
    draws = np.stack([g.choice(vals[a], size=simulations) for a in arms], axis=1)  # (simulations, arms)
    kid_order = np.argsort(kids, kind="stable")
    same = np.mean(np.all(np.argsort(draws, axis=1, kind="stable") == kid_order, axis=1))
    taus = kendall_tau_b(draws, kids)
    return {"variant": variant, "metric": metric, "arms": rows, "pairs": pairs,
            "kendall_tau_means": float(stats.kendalltau(means, kids).statistic),
            "p_same_ranking": float(same), "mean_kendall_tau": float(np.nanmean(taus)),
            "simulations": int(simulations), "decided": float(decided), "z": float(z)}


def protocol_groups(summaries: Iterable[Mapping], arm_of: Callable[[Mapping], str]
                    ) -> dict[tuple[str, int, int], dict[str, dict]]:
    """Run summaries (result files) gathered by ``(dataset, label, seed)``: ``{group: {arm: metrics}}``.

    ``arm_of`` names a run's arm from its options (:func:`qdiff_lib.grids.arm_of`; passed in, as the grids import
    the experiment, which imports the metrics). Only runs whose metrics have a ``"paper_protocol"`` entry (metrics
    version 3 or later) are kept; groups keep their runs' order, sorted by group. Two runs of one arm in one group
    raise ``ValueError``."""
    groups: dict[tuple[str, int, int], dict[str, dict]] = {}
    for s in summaries:
        if "paper_protocol" not in (s.get("metrics") or {}):
            continue
        o = s["options"]
        group, arm = (o["dataset"], int(o["label"]), int(o["seed"])), arm_of(o)
        if arm in groups.setdefault(group, {}):
            raise ValueError(f"two runs of arm {arm} for {group}")
        groups[group][arm] = s["metrics"]
    return dict(sorted(groups.items()))


def protocol_table(groups: Mapping[tuple[str, int, int], Mapping[str, Mapping]]):
    """One row per run of :func:`protocol_groups`' ``groups``: KID (mean, se) beside the paper's FID and SSIM in
    both variants (mean, std, 5% and 95% over redraws), as a DataFrame indexed by dataset, label, seed and arm."""
    import pandas as pd

    rows = []
    for (dataset, label, seed), runs in groups.items():
        for arm, m in runs.items():
            row = {"dataset": dataset, "label": label, "seed": seed, "arm": arm, "kid": m["kid"]["mean"],
                   "kid_se": m["kid"]["se"]}
            for variant in ("any_class", "class"):
                for metric in ("fid", "ssim"):
                    v = m["paper_protocol"][variant][metric]
                    row.update({f"{metric}_{variant}_{k}": v[k] for k in ("mean", "std", "q05", "q95")})
            rows.append(row)
    return pd.DataFrame(rows).set_index(["dataset", "label", "seed", "arm"]) if rows else pd.DataFrame()
