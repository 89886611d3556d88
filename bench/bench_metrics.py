"""Benchmark of the metrics: wall time of ``metrics.evaluate`` for several sample counts against 700 held-out
MNIST images, split into its parts (features, KID, FID, precision/recall, memorization), so the cost of an
evaluation is known next to a training run. Uses the cached MNIST classifier (trains it first if absent).

Usage: ``python -m bench metrics --sizes 16,64,256 --n-reference 700 --threads 1``.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import benchmark_parser, parse_options, save_json
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


def _parts(samples, reference, train, clf) -> dict:
    """``{part: call}``: one evaluation of ``samples`` and each of its parts, on the same images."""
    feature, n = clf.feature, len(samples)
    f_gen, f_ref, f_train = (metrics.extract_features(x, feature) for x in (samples, reference, train))
    return {
        "evaluate": lambda: metrics.evaluate(samples, "mnist", 3, train, reference=reference, classifier=clf),
        "features": lambda: metrics.extract_features(torch.cat([samples, reference, train]), feature),
        "kid (100 subsets)": lambda: metrics.kid(samples, reference, feature),
        "fid": lambda: metrics.fid(samples, reference, feature),
        "precision/recall": lambda: metrics.precision_recall(f_gen, f_ref[:n]),
        "memorization (pixels)": lambda: metrics.memorization(samples, reference, train),
        "memorization (features)": lambda: metrics.memorization(f_gen, f_ref, f_train),
    }


def run(sizes: tuple[int, ...] = (16, 64, 256), n_reference: int = 700, repeats: int = 3) -> list[dict]:
    """Print and return the best-of-``repeats`` seconds of ``evaluate`` and its parts for each sample count."""
    clf = get_classifier("mnist")
    train, reference = data.few_shot_split("mnist", 3, n_train=64, n_ref=n_reference + max(sizes), seed=0)
    reference, pool = reference[:n_reference], reference[n_reference:]
    rows = []
    for n in sizes:
        for name, fn in _parts(pool[:n], reference, train, clf).items():
            rows.append({"n_samples": n, "part": name, "seconds": _time(fn, repeats)})
    print(f"metrics.evaluate on MNIST digit 3, reference {n_reference}, torch threads={torch.get_num_threads()}")
    print(f"{'n':>5s} {'part':26s} {'seconds':>9s}")
    for row in rows:
        print(f"{row['n_samples']:5d} {row['part']:26s} {row['seconds']:9.4f}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser("metrics", __doc__)
    parser.add_argument("--sizes", default="16,64,256", help="comma-separated sample counts (default 16,64,256)")
    parser.add_argument("--n-reference", type=int, default=700, help="held-out real images (default 700)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls of each part (best kept)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    sizes = tuple(int(n) for n in args.sizes.split(","))
    rows = run(sizes, args.n_reference, args.repeats)
    if args.json:
        save_json(args.json, "metrics", rows, {"sizes": list(sizes), "n_reference": args.n_reference,
                                               "repeats": args.repeats, "threads": torch.get_num_threads()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
