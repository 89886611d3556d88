"""Test accuracy of the per-dataset classifier under several training recipes (augmentations, longer training).

The classifiers (:mod:`qdiff_lib.classifier`) define the feature space of every metric; this tool measures how much
training-time augmentation and longer training improve them, so that the recipe of each dataset can be chosen on
evidence. Each (dataset, recipe, seed) is trained with the library's own ``train_classifier`` (deterministic,
``TRAIN_THREADS`` torch threads); the recipe the library uses today is read from its cache when present (the same
weights, trained by the same code). Results are merged into a JSON file (``--out``, rows keyed by dataset, recipe
and seed), so that datasets can be run one at a time, and the table of everything measured so far for the requested
datasets is printed, with each recipe's difference from ``default`` and an exact McNemar test on the same test
images. Usage::

    OMP_NUM_THREADS=2 PYTHONHASHSEED=0 .venv/bin/python tools/classifier_accuracy.py --datasets retinamnist
    .venv/bin/python tools/classifier_accuracy.py --table-only      # print the table of the JSON file
"""

from __future__ import annotations

import qdiff_lib  # noqa: F401  (first: pins the CPU numerics before torch computes anything)

# isort: split
import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from qdiff_lib import classifier, data
from qdiff_lib.classifier import ClassifierRecipe

DATASETS = ("pathmnist", "pneumoniamnist", "retinamnist", "breastmnist", "mnist")

#: Recipes compared, by name. "x3": three times the default minimum number of optimiser steps.
RECIPES: dict[str, ClassifierRecipe] = {
    "default": ClassifierRecipe(),
    "hflip": ClassifierRecipe(augment="hflip"),
    "flips": ClassifierRecipe(augment="flips"),
    "dihedral": ClassifierRecipe(augment="dihedral"),
    "shift": ClassifierRecipe(augment="shift"),
    "hflip+shift": ClassifierRecipe(augment="hflip+shift"),
    "flips+shift": ClassifierRecipe(augment="flips+shift"),
    "dihedral+shift": ClassifierRecipe(augment="dihedral+shift"),
    "default x3": ClassifierRecipe(min_steps=3 * ClassifierRecipe().min_steps),
    "dihedral+shift x3": ClassifierRecipe(augment="dihedral+shift", min_steps=3 * ClassifierRecipe().min_steps),
}
DEFAULT_RECIPES = ("default", "flips", "dihedral", "dihedral+shift")
DEFAULT_OUT = qdiff_lib.REPO_ROOT / "runs" / "classifier_accuracy.json"  # outside git


def _splits(dataset: str, recipe: ClassifierRecipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)
        return classifier._train_test(dataset, recipe)


def _n_steps(n_train: int, recipe: ClassifierRecipe) -> int:
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    return max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)) * steps_per_epoch


def mcnemar_p(a_correct: str, b_correct: str) -> float:
    """Two-sided exact McNemar p-value of two classifiers' per-image correctness strings ('0'/'1')."""
    b = sum(1 for u, v in zip(a_correct, b_correct, strict=True) if u == "1" and v == "0")
    c = sum(1 for u, v in zip(a_correct, b_correct, strict=True) if u == "0" and v == "1")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def measure(dataset: str, name: str, seed: int, use_cache: bool) -> dict:
    recipe = replace(RECIPES[name], seed=seed)
    x, y, x_test, y_test, desc = _splits(dataset, recipe)
    path = classifier._cache_path(dataset, recipe)
    t0 = time.perf_counter()
    if use_cache and recipe == classifier.recipe_for(dataset) and path.exists():
        clf, source, seconds = classifier._load(path), "cache", None
    else:
        clf = classifier.train_classifier(dataset, recipe, progress=False)
        source, seconds = "trained", time.perf_counter() - t0
    with torch.no_grad():
        correct = (clf.predict(x_test) == y_test).tolist()
    acc = sum(correct) / len(correct)
    if abs(acc - clf.test_accuracy) > 1e-12:
        raise RuntimeError(f"{dataset}/{name}: recomputed accuracy {acc} != stored {clf.test_accuracy}")
    return {
        "dataset": dataset, "recipe": name, "seed": seed, "hash": recipe.hash(), "fields": asdict(recipe),
        "test_accuracy": acc, "n_test": len(y_test), "n_train": len(y), "test_split": desc,
        "steps": _n_steps(len(y), recipe), "seconds": seconds, "source": source,
        "correct": "".join("1" if c else "0" for c in correct),
    }


def dataset_facts(dataset: str) -> dict:
    """Class counts of the classifier's training and test images, and the majority-class test accuracy."""
    _, y, _, y_test, desc = _splits(dataset, ClassifierRecipe())
    test_counts = torch.bincount(y_test).tolist()
    return {"train_class_counts": torch.bincount(y).tolist(), "test_class_counts": test_counts,
            "majority_test_accuracy": max(test_counts) / len(y_test), "test_split": desc}


def table(results: dict, datasets) -> str:
    lines = [f"{'dataset':15} {'recipe':18} {'seed':>4} {'acc':>7} {'+-se':>6} {'n_test':>6} {'steps':>6} "
             f"{'d_vs_def':>8} {'p_mcnemar':>9} {'time_s':>7}"]
    for ds in datasets:
        rows = [r for r in results["rows"] if r["dataset"] == ds]
        if not rows:
            continue
        facts = results["datasets"].get(ds, {})
        lines.append(f"{ds}: train classes {facts.get('train_class_counts')}, test classes "
                     f"{facts.get('test_class_counts')}, majority-class accuracy "
                     f"{facts.get('majority_test_accuracy', float('nan')):.4f}")
        order = list(RECIPES)
        for r in sorted(rows, key=lambda r: (order.index(r["recipe"]) if r["recipe"] in order else 99, r["seed"])):
            base = next((b for b in rows if b["recipe"] == "default" and b["seed"] == r["seed"]), None)
            acc, n = r["test_accuracy"], r["n_test"]
            se = math.sqrt(acc * (1 - acc) / n)
            d = p = ""
            if base is not None and r is not base:
                d = f"{acc - base['test_accuracy']:+.4f}"
                p = f"{mcnemar_p(base['correct'], r['correct']):.3g}"
            t = "cache" if r["seconds"] is None else f"{r['seconds']:.0f}"
            lines.append(f"{'':15} {r['recipe']:18} {r['seed']:>4} {acc:7.4f} {se:6.4f} {n:6d} {r['steps']:6d} "
                         f"{d:>8} {p:>9} {t:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to merge into ({DEFAULT_OUT})")
    parser.add_argument("--no-cache", action="store_true", help="train the library's current recipe too")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    tag = classifier._numerics_tag()
    if tag != "pinned":  # the weights (and the cache key) would not be those of the library's runs
        print(f"warning: numerics are {tag}, not pinned: accuracies may differ from the library's", file=sys.stderr)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"rows": [], "datasets": {}}
    if not args.table_only:
        for ds in args.datasets:
            results["datasets"][ds] = dataset_facts(ds)
            for name in args.recipes:
                for seed in args.seeds:
                    row = measure(ds, name, seed, use_cache=not args.no_cache)
                    results["rows"] = [r for r in results["rows"]
                                       if (r["dataset"], r["recipe"], r["seed"]) != (ds, name, seed)] + [row]
                    print(f"{ds} {name} seed {seed}: accuracy {row['test_accuracy']:.4f} on {row['n_test']} "
                          f"images ({row['source']}, {row['seconds'] or 0:.0f} s)", flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = args.out.with_suffix(".tmp")
                    tmp.write_text(json.dumps(results, indent=1) + "\n")
                    tmp.replace(args.out)
    print(table(results, args.datasets))


if __name__ == "__main__":
    sys.exit(main())
