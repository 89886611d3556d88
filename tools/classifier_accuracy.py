"""Test accuracy of the per-dataset classifier under several training recipes (augmentations, longer training).

The classifiers (:mod:`qdiff_lib.classifier`) define the feature space of every metric; this tool measures how much
training-time augmentation and longer training improve them, so that the recipe of each dataset can be chosen on
evidence. Each (dataset, recipe, seed) is trained with the library's own ``train_classifier`` (deterministic,
``TRAIN_THREADS`` torch threads); a recipe of the library (``recipe_for(dataset, augment)``: seed 0) is read from its
cache when present (the same weights, trained by the same code). Results are merged into a JSON file (``--out``,
rows keyed by dataset, recipe and seed), so that datasets can be run one at a time, and the table of everything
measured so far for the requested datasets is printed, with each recipe's difference from ``default`` and an exact
McNemar test on the same test images (:func:`qdiff_lib.classifier_choice.mcnemar_p`), and the adoption rule's
verdict per dataset (:func:`qdiff_lib.classifier_choice.adoption`, the rule behind
:data:`qdiff_lib.classifier_choice.ADOPTED_AUGMENT`).

Every row records what produced it (``provenance``: the commit and whether the tree was dirty, the package versions,
the numerics, the classifier's training threads, the command), taken once when the command starts. The committed
evidence, ``results/classifier_accuracy.json`` (:data:`RESULT`), is written with ``--evidence``, which measures
every row of :data:`EVIDENCE` (the recipes tried when the augmentations were chosen, and the confirmation seeds) in
one command from a clean tree; rows merged from another file (``--merge-from``) are taken only when they carry
that provenance (pinned numerics, a clean tree), the others are listed for recomputation. Usage::

    OMP_NUM_THREADS=2 PYTHONHASHSEED=0 .venv/bin/python tools/classifier_accuracy.py --datasets retinamnist
    .venv/bin/python tools/classifier_accuracy.py --table-only      # print the table of the JSON file
    OMP_NUM_THREADS=2 PYTHONHASHSEED=0 .venv/bin/python tools/classifier_accuracy.py --evidence   # the committed file
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
from qdiff_lib._io import atomic_write
from qdiff_lib.classifier import ClassifierRecipe
from qdiff_lib.classifier_choice import adoption, mcnemar_p
from qdiff_lib.experiment import _git, provenance

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
#: The committed evidence behind :data:`qdiff_lib.classifier_choice.ADOPTED_AUGMENT` (``--evidence``).
RESULT = qdiff_lib.REPO_ROOT / "results" / "classifier_accuracy.json"

#: The rows of the committed evidence, ``(dataset, recipe, seed)``: on seed 0 (the choice) the default and the
#: augmentations tried on every MedMNIST dataset, and the further ones tried on RetinaMNIST; on seed 1 the
#: confirmation of the choices that beat their default on seed 0 by a margin worth confirming (RetinaMNIST flips,
#: PathMNIST dihedral+shift); MNIST's default. The library's recipes of seed 0 (the defaults, and the adopted
#: augmentations once a run or the calibration has trained them) are read from the classifier cache; each of the
#: other rows (at most 19) trains a classifier, 3-8 min each on two cores.
EVIDENCE: tuple[tuple[str, str, int], ...] = (
    *((ds, r, 0) for ds in ("pathmnist", "pneumoniamnist", "retinamnist", "breastmnist")
      for r in ("default", "flips", "dihedral", "dihedral+shift")),
    *(("retinamnist", r, 0) for r in ("hflip", "shift", "flips+shift")),
    ("retinamnist", "default", 1), ("retinamnist", "flips", 1),
    ("pathmnist", "default", 1), ("pathmnist", "dihedral+shift", 1),
    ("mnist", "default", 0),
)


def _splits(dataset: str, recipe: ClassifierRecipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)
        return classifier._train_test(dataset, recipe)


def measure(dataset: str, name: str, seed: int, use_cache: bool, stamp: dict | None = None) -> dict:
    """One row: the classifier of ``dataset`` trained with recipe ``name`` and ``seed`` (or read from the cache
    when it is the library's default recipe), its test accuracy and per-image correctness; ``stamp``: the
    provenance to record (:func:`stamp_now`)."""
    recipe = replace(RECIPES[name], seed=seed)
    x, y, x_test, y_test, desc = _splits(dataset, recipe)
    path = classifier._cache_path(dataset, recipe)
    t0 = time.perf_counter()
    if use_cache and recipe == classifier.recipe_for(dataset, recipe.augment) and path.exists():
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
        "steps": math.prod(classifier.training_schedule(len(y), recipe)), "seconds": seconds, "source": source,
        "correct": "".join("1" if c else "0" for c in correct),
        "provenance": stamp,
    }


def stamp_now(out: Path, command: list[str]) -> dict:
    """:func:`qdiff_lib.experiment.provenance` now, plus the classifier's training threads, the numerics tag and the
    command; the tree counts as dirty only for changes other than the output file itself (which an interrupted
    command resumes into)."""
    stamp = {**provenance(), "train_threads": classifier.TRAIN_THREADS, "numerics_tag": classifier._numerics_tag(),
             "command": " ".join(command)}
    if stamp["git_dirty"]:
        try:
            rel = out.resolve().relative_to(qdiff_lib.REPO_ROOT.resolve()).as_posix()
        except ValueError:
            rel = None
        status = _git("status", "--porcelain")
        lines = [] if status is None else [ln for ln in status.splitlines() if ln.strip()]
        stamp["git_dirty"] = any(ln[3:].strip() != rel for ln in lines)
    return stamp


def committable(row: dict) -> str | None:
    """Why ``row`` cannot go into the committed evidence (None: it can): it must record its provenance, with the
    pinned numerics, a clean tree and the classifier's training threads of today."""
    stamp = row.get("provenance")
    if not stamp:
        return "no provenance (measured before rows recorded it)"
    if stamp.get("numerics_tag") != "pinned":
        return f"numerics {stamp.get('numerics_tag')}, not pinned"
    if stamp.get("git_dirty") is not False:
        return "measured from a dirty (or unknown) working tree"
    if stamp.get("train_threads") != classifier.TRAIN_THREADS:
        return f"trained with {stamp.get('train_threads')} threads, the library trains with {classifier.TRAIN_THREADS}"
    return None


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
        verdict = adoption(rows).get(ds)
        lines.append(f"{'':15} adoption rule: {verdict['augment']} ({verdict['reason']})")
    return "\n".join(lines)


def _write(results: dict, out: Path) -> None:
    results["adoption"] = adoption(results["rows"])
    atomic_write(out, lambda f: f.write((json.dumps(results, indent=1) + "\n").encode()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to merge into ({DEFAULT_OUT})")
    parser.add_argument("--no-cache", action="store_true", help="train the library's current recipe too")
    parser.add_argument("--table-only", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--evidence", action="store_true",
                        help=f"measure the rows of EVIDENCE that --out (with --evidence: default {RESULT}) lacks, "
                             "instead of --datasets x --recipes x --seeds; rows without committable provenance are "
                             "dropped and measured again")
    parser.add_argument("--merge-from", type=Path, nargs="+", default=[], metavar="JSON",
                        help="first take the rows of these files of this tool (with --evidence: only the "
                             "committable rows of EVIDENCE; the others are listed and measured)")
    parser.add_argument("--list-missing", action="store_true",
                        help="with --evidence: list the rows still to measure (and why) and stop")
    args = parser.parse_args(argv)
    out = RESULT if args.evidence and args.out == DEFAULT_OUT else args.out
    tag = classifier._numerics_tag()
    if tag != "pinned":  # the weights (and the cache key) would not be those of the library's runs
        print(f"warning: numerics are {tag}, not pinned: accuracies may differ from the library's", file=sys.stderr)
    results = json.loads(out.read_text()) if out.exists() else {"rows": [], "datasets": {}}
    key = lambda r: (r["dataset"], r["recipe"], r["seed"])  # noqa: E731
    if args.evidence:
        wanted = list(EVIDENCE)
        results["description"] = ("Test accuracy of each dataset's classifier under training recipes (rows keyed by "
                                  "dataset, recipe and seed; correct: one 0/1 per test image), written by "
                                  "tools/classifier_accuracy.py --evidence: the evidence behind "
                                  "qdiff_lib.classifier_choice.ADOPTED_AUGMENT (adoption: the rule's verdict).")
    else:
        wanted = [(ds, name, seed) for ds in args.datasets for name in args.recipes for seed in args.seeds]
    refused: dict[tuple, str] = {}
    for source in args.merge_from:
        for r in json.loads(source.read_text())["rows"]:
            if key(r) not in wanted:
                continue
            why = committable(r) if args.evidence else None
            if why is None:
                results["rows"] = [x for x in results["rows"] if key(x) != key(r)] + [r]
            else:
                refused[key(r)] = f"{source.name}: {why}"
    if args.evidence:  # every row of the committed file must be committable
        refused.update({key(r): committable(r) for r in results["rows"] if committable(r)})
        results["rows"] = [r for r in results["rows"] if key(r) in wanted and not committable(r)]
    have = {key(r) for r in results["rows"]}
    todo = [w for w in wanted if w not in have] if args.evidence else wanted
    if args.evidence:
        for w in todo:
            print(f"to measure: {' '.join(map(str, w))}" + (f" ({refused[w]})" if w in refused else ""))
        if args.list_missing:
            return None
    if not args.table_only:
        stamp = stamp_now(out, [Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
        if args.evidence and committable({"provenance": stamp}):
            parser.error(f"the evidence must be measured with pinned numerics from a clean tree: "
                         f"{committable({'provenance': stamp})}")
        for ds in dict.fromkeys(w[0] for w in wanted):
            if ds not in results["datasets"] or not args.evidence:
                results["datasets"][ds] = dataset_facts(ds)
        for ds, name, seed in todo:
            row = measure(ds, name, seed, use_cache=not args.no_cache, stamp=stamp)
            results["rows"] = [r for r in results["rows"] if key(r) != (ds, name, seed)] + [row]
            print(f"{ds} {name} seed {seed}: accuracy {row['test_accuracy']:.4f} on {row['n_test']} "
                  f"images ({row['source']}, {row['seconds'] or 0:.0f} s)", flush=True)
            _write(results, out)
        if args.merge_from and not todo:
            _write(results, out)
    print(table(results, list(dict.fromkeys(w[0] for w in wanted))))


if __name__ == "__main__":
    sys.exit(main())
