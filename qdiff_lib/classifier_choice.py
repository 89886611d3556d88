"""Which training recipe each dataset's classifier adopts, and the rule and evidence that decide it.

The classifiers of :mod:`qdiff_lib.classifier` define the feature space of every metric, so a better classifier
gives better metrics; a training-time augmentation (:data:`qdiff_lib.classifier.AUGMENTATIONS`) may make it better.
This module decides, per dataset, which augmentation the studies planned after the measurement use
(:data:`ADOPTED_AUGMENT`, read through :func:`adopted_augment` by :func:`qdiff_lib.grids._medmnist16` as the run option
``classifier_augment``). The decision is our choice, made by a fixed rule (:func:`adoption`) on measured test
accuracies: the evidence is ``results/classifier_accuracy.json``, written by ``tools/classifier_accuracy.py
--evidence``, which trains each (dataset, recipe, seed) and records which test images each classifier gets right.
Recipes are compared with the default recipe of the same dataset and seed on the same test images
(:func:`recipe_comparisons`), by an exact McNemar test (:func:`mcnemar_p`). The rule chooses on one training seed
(:data:`SELECTION_SEED`) and adopts only what a fresh training with another seed confirms (one-sided p below
:data:`ADOPTION_ALPHA`). Nothing here trains or loads a classifier.
"""

from __future__ import annotations

import math

from qdiff_lib._checks import check_choice
from qdiff_lib.classifier import AUGMENTATIONS, ClassifierRecipe

__all__ = ["ADOPTED_AUGMENT", "adopted_augment", "ADOPTION_ALPHA", "SELECTION_SEED", "mcnemar_p", "recipe_comparisons",
           "adoption"]


#: The training-time augmentation adopted per dataset (datasets not listed: ``"none"``), chosen by the rule of
#: :func:`adoption` (our choice: the most accurate augmentation with training seed 0, confirmed by a fresh training
#: with seed 1 that beats its default with a one-sided exact McNemar p < 0.05) on the test accuracies measured by
#: ``tools/classifier_accuracy.py --evidence`` (``results/classifier_accuracy.json``; McNemar on the same test images
#: as the default). Measured (test accuracy, default -> adopted, two-sided McNemar p; pinned numerics, 2 threads):
#:
#: * RetinaMNIST ``flips`` (best of 6 augmentations): seed 0 0.465 -> 0.585 (p 3e-7; the majority class alone scores
#:   0.435); seed 1 0.4675 -> 0.5525 (p 6e-5).
#: * PathMNIST ``dihedral+shift`` (best of 3): seed 0 0.680 -> 0.740 (p 0.065); seed 1 0.590 -> 0.715 (p 8e-4; one-sided
#:   4e-4). 200 held-out images per seed (the offline subset has no test split; each seed holds out its own).
#:
#: Not adopted: BreastMNIST (best ``dihedral+shift`` 0.808 -> 0.833, p 0.57; no confirming seed measured),
#: PneumoniaMNIST (no augmentation beats the default: ``flips`` 0.867 -> 0.824, p 7e-6; a chest X-ray is not
#: mirror-symmetric), MNIST (not measured; digits are not symmetric). Only studies planned after the measurement
#: use it (``medmnist16``): the committed 8-qubit runs and calibration files were scored with the default recipe and
#: keep it.
ADOPTED_AUGMENT: dict[str, str] = {"retinamnist": "flips", "pathmnist": "dihedral+shift"}


def adopted_augment(dataset: str) -> str:
    """The augmentation :data:`ADOPTED_AUGMENT` adopts for ``dataset`` (its name as :data:`qdiff_lib.data.DATASETS`
    spells it; ``"none"`` when it adopts none). Loads nothing."""
    return ADOPTED_AUGMENT.get(dataset, "none")


#: Significance level of the confirmation step of :func:`adoption` (one-sided exact McNemar test).
ADOPTION_ALPHA = 0.05
#: The training seed on which :func:`adoption` chooses among the recipes; every other seed measured confirms.
SELECTION_SEED = 0


def mcnemar_p(a_correct: str, b_correct: str, alternative: str = "two-sided") -> float:
    """Exact McNemar p-value of two classifiers' per-image correctness on the same test images, given as strings of
    ``'0'``/``'1'`` in the same image order. ``alternative``: ``"two-sided"``, or ``"greater"`` (one-sided: ``b``
    is right more often than ``a``). Only the discordant images count: ``b`` right where ``a`` is wrong, and the
    reverse; under the null hypothesis each discordant image goes either way with probability 1/2."""
    check_choice("alternative", alternative, ("two-sided", "greater"))
    pairs = list(zip(a_correct, b_correct, strict=True))
    worse = sum(1 for u, v in pairs if u == "1" and v == "0")
    better = sum(1 for u, v in pairs if u == "0" and v == "1")
    n = worse + better
    if n == 0:
        return 1.0
    if alternative == "greater":  # P(at least `better` of n discordant images favour b)
        return sum(math.comb(n, k) for k in range(better, n + 1)) / 2**n
    tail = sum(math.comb(n, k) for k in range(min(worse, better) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _is_augment_only(fields: dict, seed: int) -> bool:
    """True when a recipe differs from the default of ``seed`` in its augmentation at most."""
    recipe = ClassifierRecipe(**fields)
    return recipe == ClassifierRecipe(seed=seed, augment=recipe.augment)


def recipe_comparisons(rows: list[dict]) -> list[dict]:
    """Each measured recipe against the default recipe of the same dataset and seed, on the same test images.

    ``rows``: measurements as ``tools/classifier_accuracy.py`` writes them (``dataset``, ``recipe`` (its name),
    ``seed``, ``fields`` (the :class:`ClassifierRecipe`), ``test_accuracy``, ``n_test``, ``correct``: one
    ``'0'``/``'1'`` per test image). Returns one dict per non-default row that has its default: ``dataset``,
    ``recipe``, ``augment`` (None when the recipe differs from the default in more than its augmentation),
    ``seed``, ``n_test``, ``accuracy``, ``default_accuracy``, ``difference``, ``p_two_sided`` and ``p_greater``
    (exact McNemar, :func:`mcnemar_p`)."""
    defaults = {(r["dataset"], r["seed"]): r for r in rows if ClassifierRecipe(**r["fields"]) ==
                ClassifierRecipe(seed=r["seed"])}
    out = []
    for r in rows:
        base = defaults.get((r["dataset"], r["seed"]))
        if base is None or base is r:
            continue
        if base["n_test"] != r["n_test"] or len(base["correct"]) != len(r["correct"]):
            raise ValueError(f"{r['dataset']} seed {r['seed']}: {r['recipe']} and the default were tested on "
                             "different images")
        out.append({"dataset": r["dataset"], "recipe": r["recipe"],
                    "augment": r["fields"].get("augment", "none") if _is_augment_only(r["fields"], r["seed"])
                    else None,
                    "seed": r["seed"], "n_test": r["n_test"], "accuracy": r["test_accuracy"],
                    "default_accuracy": base["test_accuracy"], "difference": r["test_accuracy"] - base["test_accuracy"],
                    "p_two_sided": mcnemar_p(base["correct"], r["correct"]),
                    "p_greater": mcnemar_p(base["correct"], r["correct"], "greater")})
    return out


def adoption(rows: list[dict], alpha: float = ADOPTION_ALPHA, selection_seed: int = SELECTION_SEED) -> dict[str, dict]:
    """The rule that chose :data:`ADOPTED_AUGMENT` (our choice), applied to measured ``rows`` (as for
    :func:`recipe_comparisons`), per dataset:

    1. **choice**: among the recipes that differ from the default only in their augmentation, the most accurate on
       ``selection_seed`` (ties: the earlier in :data:`AUGMENTATIONS`); it must beat the default on that seed;
    2. **confirmation**: the chosen augmentation trained again with every other seed measured (a fresh
       initialisation and order of minibatches, and for a dataset without a test split a fresh held-out set) must
       beat that seed's default, with a one-sided exact McNemar p below ``alpha`` on each; at least one such seed.

    The confirmation does not take part in the choice, so its p-value is free of the selection among recipes.
    Returns ``{dataset: {"augment" (adopted, or "none"), "chosen" (the choice of step 1, or None),
    "confirmations": [comparison dicts of step 2], "reason": in words}}`` for every dataset of ``rows``.
    """
    comparisons = recipe_comparisons(rows)
    order = {a: i for i, a in enumerate(AUGMENTATIONS)}
    out = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [c for c in comparisons if c["dataset"] == ds and c["augment"] not in (None, "none")]
        first = [c for c in mine if c["seed"] == selection_seed]
        result = {"augment": "none", "chosen": None, "confirmations": []}
        if not first:
            out[ds] = {**result, "reason": f"no augmentation measured with seed {selection_seed}"}
            continue
        best = min(first, key=lambda c: (-c["accuracy"], order[c["augment"]]))
        if best["difference"] <= 0:
            out[ds] = {**result, "reason": f"no augmentation beats the default with seed {selection_seed}"}
            continue
        confirm = sorted((c for c in mine if c["augment"] == best["augment"] and c["seed"] != selection_seed),
                         key=lambda c: c["seed"])
        result.update(chosen=best["augment"], confirmations=confirm)
        if not confirm:
            reason = f"{best['augment']} chosen with seed {selection_seed}, not confirmed with another seed"
        elif all(c["difference"] > 0 and c["p_greater"] < alpha for c in confirm):
            result["augment"] = best["augment"]
            reason = (f"{best['augment']} chosen with seed {selection_seed} and confirmed with seed(s) "
                      f"{', '.join(str(c['seed']) for c in confirm)}")
        else:
            ps = ", ".join(f"{c['p_greater']:.2g}" for c in confirm)
            reason = (f"{best['augment']} chosen with seed {selection_seed}, not confirmed (one-sided McNemar p "
                      f"{ps}, alpha {alpha})")
        out[ds] = {**result, "reason": reason}
    return out
