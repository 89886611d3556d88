"""Benchmark of the metrics: wall time of ``metrics.evaluate`` for several sample counts against 700 held-out
MNIST images, split into its parts (features, KID, FID, precision/recall, memorization), so the cost of an
evaluation is known next to a training run. Uses the cached MNIST classifier (trains it first if absent).

Run: ``python -m bench.bench_metrics`` (or through ``python -m bench``).
"""

from __future__ import annotations

import time

import torch

from qdiff_lib import data, metrics
from qdiff_lib.classifier import get_classifier


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(sizes: tuple[int, ...] = (16, 64, 256), n_reference: int = 700, repeats: int = 3) -> list[dict]:
    """Print and return the best-of-``repeats`` seconds of ``evaluate`` and its parts for each sample count."""
    clf = get_classifier("mnist")
    train, reference = data.few_shot_split("mnist", 3, n_train=64, n_ref=n_reference + max(sizes), seed=0)
    reference, pool = reference[:n_reference], reference[n_reference:]
    feature = clf.feature
    rows = []
    for n in sizes:
        samples = pool[:n]
        f_gen, f_ref, f_train = (metrics.extract_features(x, feature) for x in (samples, reference, train))
        parts = {
            "evaluate": lambda: metrics.evaluate(samples, "mnist", 3, train, reference=reference, classifier=clf),
            "features": lambda: metrics.extract_features(torch.cat([samples, reference, train]), feature),
            "kid (100 subsets)": lambda: metrics.kid(samples, reference, feature),
            "fid": lambda: metrics.fid(samples, reference, feature),
            "precision/recall": lambda: metrics.precision_recall(f_gen, f_ref[:n]),
            "memorization (pixels)": lambda: metrics.memorization(samples, reference, train),
            "memorization (features)": lambda: metrics.memorization(f_gen, f_ref, f_train),
        }
        for name, fn in parts.items():
            rows.append({"n_samples": n, "part": name, "seconds": _time(fn, repeats)})
    print(f"metrics.evaluate on MNIST digit 3, reference {n_reference}, torch threads={torch.get_num_threads()}")
    print(f"{'n':>5s} {'part':26s} {'seconds':>9s}")
    for row in rows:
        print(f"{row['n_samples']:5d} {row['part']:26s} {row['seconds']:9.4f}")
    return rows


if __name__ == "__main__":
    run()
