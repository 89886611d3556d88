"""Tests of qdiff_lib.classifier_choice (which classifier recipe the later studies adopt, and on what evidence) and of
the evidence command, tools/classifier_accuracy.py --evidence. Nothing here trains a classifier but MNIST's default,
which the rest of the suite trains anyway (cached), to re-check a committed row of the evidence."""

import json
import math
import random
import sys
from dataclasses import asdict

import pytest
from scipy.stats import binomtest

from qdiff_lib import REPO_ROOT, classifier, classifier_choice
from qdiff_lib.classifier import AUGMENTATIONS, ClassifierRecipe
from qdiff_lib.classifier_choice import mcnemar_p

sys.path.insert(0, str(REPO_ROOT / "tools"))
from classifier_accuracy import RESULT  # noqa: E402


def test_adopted_augmentations_are_known_and_only_for_medmnist():
    assert set(classifier_choice.ADOPTED_AUGMENT) <= {"pathmnist", "pneumoniamnist", "retinamnist", "breastmnist"}
    assert set(classifier_choice.ADOPTED_AUGMENT.values()) <= set(AUGMENTATIONS) - {"none"}
    assert classifier_choice.adopted_augment("retinamnist") == "flips"
    assert classifier_choice.adopted_augment("pathmnist") == "dihedral+shift"
    assert classifier_choice.adopted_augment("mnist") == "none"


def _row(dataset: str, recipe: str, seed: int, correct: str, **fields) -> dict:
    """A measured row shaped as tools/classifier_accuracy.py writes it."""
    return {"dataset": dataset, "recipe": recipe, "seed": seed, "fields": asdict(ClassifierRecipe(seed=seed, **fields)),
            "test_accuracy": correct.count("1") / len(correct), "n_test": len(correct), "correct": correct}


def test_adoption_chooses_on_seed_0_and_confirms_on_another_seed():
    base = "1" * 50 + "0" * 50
    better = "1" * 80 + "0" * 20  # 30 images more right, none fewer: one-sided p = 2**-30
    slightly = "1" * 52 + "0" * 48  # 2 more right: p = 1/4
    rows = [
        _row("a", "default", 0, base), _row("a", "flips", 0, better, augment="flips"),
        _row("a", "dihedral", 0, slightly, augment="dihedral"),
        _row("a", "default x3", 0, "1" * 100, min_steps=1800),  # not an augmentation: never chosen
        _row("a", "default", 1, base), _row("a", "flips", 1, better, augment="flips"),
        _row("b", "default", 0, base), _row("b", "flips", 0, better, augment="flips"),  # no confirmation seed
        _row("c", "default", 0, base), _row("c", "flips", 0, better, augment="flips"),
        _row("c", "default", 1, base), _row("c", "flips", 1, slightly, augment="flips"),  # better, not significant
        _row("d", "default", 0, better), _row("d", "flips", 0, base, augment="flips"),  # worse
    ]
    verdict = classifier_choice.adoption(rows)
    assert {ds: v["augment"] for ds, v in verdict.items()} == {"a": "flips", "b": "none", "c": "none", "d": "none"}
    assert verdict["b"]["chosen"] == "flips" and "not confirmed with another seed" in verdict["b"]["reason"]
    assert verdict["c"]["confirmations"][0]["p_greater"] == pytest.approx(0.25)
    assert "no augmentation beats the default" in verdict["d"]["reason"]
    comparisons = {(c["dataset"], c["recipe"], c["seed"]): c for c in classifier_choice.recipe_comparisons(rows)}
    assert comparisons[("a", "default x3", 0)]["augment"] is None
    assert comparisons[("a", "flips", 0)]["difference"] == pytest.approx(0.3)
    assert comparisons[("a", "flips", 0)]["p_greater"] == pytest.approx(2.0**-30)


def test_adopted_augment_follows_the_rule_on_the_committed_evidence():
    """ADOPTED_AUGMENT is what the rule gives on results/classifier_accuracy.json (tools/classifier_accuracy.py
    --evidence), for every MedMNIST dataset the file measures."""
    assert RESULT.exists(), f"{RESULT} is committed (tools/classifier_accuracy.py --evidence)"
    evidence = json.loads(RESULT.read_text())
    verdict = classifier_choice.adoption(evidence["rows"])
    assert evidence["adoption"] == json.loads(json.dumps(verdict)), "the file's verdict is not the rule's"
    for ds, v in verdict.items():
        assert v["augment"] == classifier_choice.adopted_augment(ds), (ds, v["reason"])
    assert all(r["provenance"]["git_dirty"] is False and r["provenance"]["numerics_tag"] == "pinned"
               for r in evidence["rows"])


def test_a_committed_row_of_the_evidence_is_reproduced():
    """The evidence's MNIST default row, measured again with this machine's classifier (the suite's cached one,
    trained under the pinned numerics): the same recipe, the same test accuracy and the same image-by-image
    correctness, the vector every McNemar test of the file is computed from."""
    import classifier_accuracy as tool

    classifier.get_classifier("mnist", progress=False)  # cached (trained if missing)
    committed = {(r["dataset"], r["recipe"], r["seed"]): r for r in json.loads(RESULT.read_text())["rows"]}
    stored = committed[("mnist", "default", 0)]
    fresh = tool.measure("mnist", "default", 0, use_cache=True)
    assert fresh["source"] == "cache"
    for key in ("hash", "fields", "n_test", "n_train", "steps", "test_accuracy", "correct"):
        assert fresh[key] == stored[key], key


def test_the_evidence_takes_only_rows_with_provenance_and_measures_the_rest(tmp_path, monkeypatch, capsys):
    """``tools/classifier_accuracy.py --evidence`` (no training here: ``measure`` is replaced): rows merged from an
    earlier file are kept only with committable provenance; every row of EVIDENCE ends in the file, with the rule's
    verdict."""
    import classifier_accuracy as tool

    clean = {"numerics_tag": "pinned", "git_dirty": False, "train_threads": classifier.TRAIN_THREADS,
             "git_commit": "abc"}
    assert tool.committable({"provenance": clean}) is None
    assert "no provenance" in tool.committable({})
    assert "dirty" in tool.committable({"provenance": {**clean, "git_dirty": True}})
    assert "not pinned" in tool.committable({"provenance": {**clean, "numerics_tag": "native-avx512"}})

    def fake_measure(dataset, name, seed, use_cache, stamp=None):
        fields = {k: v for k, v in asdict(tool.RECIPES[name]).items() if k != "seed"}
        return {**_row(dataset, name, seed, "1" * 10, **fields), "provenance": stamp, "seconds": 1.0, "steps": 1,
                "source": "trained"}

    monkeypatch.setattr(tool, "measure", fake_measure)
    monkeypatch.setattr(tool, "dataset_facts", lambda ds: {"majority_test_accuracy": 0.5})
    monkeypatch.setattr(tool, "stamp_now", lambda out, command: {**clean, "command": " ".join(command)})
    earlier = tmp_path / "earlier.json"
    kept = {**fake_measure("retinamnist", "flips", 1, True, clean), "test_accuracy": 0.123}
    unproven = {**fake_measure("retinamnist", "flips", 0, True), "test_accuracy": 0.456}
    earlier.write_text(json.dumps({"rows": [kept, unproven], "datasets": {}}))
    out = tmp_path / "evidence.json"
    tool.main(["--evidence", "--out", str(out), "--merge-from", str(earlier)])
    printed = capsys.readouterr().out
    assert "to measure: retinamnist flips 0 (earlier.json: no provenance" in printed
    assert "to measure: retinamnist flips 1" not in printed
    written = json.loads(out.read_text())
    rows = {(r["dataset"], r["recipe"], r["seed"]): r for r in written["rows"]}
    assert set(rows) == set(tool.EVIDENCE)
    assert rows[("retinamnist", "flips", 1)]["test_accuracy"] == 0.123  # merged, not measured again
    assert rows[("retinamnist", "flips", 0)]["test_accuracy"] == 1.0  # measured again
    assert all(tool.committable(r) is None for r in written["rows"])
    assert written["adoption"] == json.loads(json.dumps(classifier_choice.adoption(written["rows"])))
    assert "ADOPTED_AUGMENT" in written["description"]


def test_mcnemar_p():
    assert mcnemar_p("1111", "1111") == 1.0
    assert mcnemar_p("00000", "11111") == pytest.approx(2 / 32)  # 5 discordant, all one way
    assert mcnemar_p("10" * 5, "01" * 5) == 1.0
    # one-sided: only improvements of b over a count as evidence
    assert mcnemar_p("00000", "11111", "greater") == pytest.approx(1 / 32)
    assert mcnemar_p("11111", "00000", "greater") == 1.0
    assert mcnemar_p("1100", "0111", "greater") == pytest.approx(sum(math.comb(3, k) for k in (2, 3)) / 8)


def test_mcnemar_p_equals_scipys_exact_binomial_test_on_the_discordant_pairs():
    """Independent check: the exact McNemar test is the binomial test of the discordant pairs at 1/2 (scipy)."""
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 60)
        a = "".join(rng.choice("01") for _ in range(n))
        b = "".join(rng.choice("01") for _ in range(n))
        gained = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
        discordant = sum(x != y for x, y in zip(a, b, strict=True))
        if discordant == 0:
            assert mcnemar_p(a, b) == 1.0
            continue
        assert mcnemar_p(a, b) == pytest.approx(binomtest(gained, discordant, 0.5).pvalue, rel=1e-9)
        assert mcnemar_p(a, b, "greater") == pytest.approx(
            binomtest(gained, discordant, 0.5, alternative="greater").pvalue, rel=1e-9)


def test_the_committed_evidence_steps_are_the_classifiers_training_schedule():
    """Each committed row's optimiser steps are those :func:`qdiff_lib.classifier.training_schedule` gives its recipe
    and training-set size (the schedule the library trains with)."""
    evidence = json.loads(RESULT.read_text())
    for r in evidence["rows"]:
        epochs, per_epoch = classifier.training_schedule(r["n_train"], ClassifierRecipe(**r["fields"]))
        assert epochs * per_epoch == r["steps"], (r["dataset"], r["recipe"], r["seed"])
