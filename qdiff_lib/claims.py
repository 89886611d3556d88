"""The abstract's claims, each with its primary comparison fixed here before any result is read, and their verdicts.

:data:`CLAIMS` is the family the results chapter decides: one :class:`Claim` per claim, each naming the study and the
paired comparison(s) that decide it (:class:`Comparison`), the direction that supports it, and, for the two
noise-strategy claims, the margin against which a benefit is tested (:data:`NOISE_MARGIN_KID`). :func:`evaluate_claims`
reads the results tables, computes every primary comparison (:func:`qdiff_lib.verdicts.compare_arms`), corrects
over the family with Holm's method, and returns one row per claim; a claim whose data do not exist yet (or, for a
claim computed in stages, do not yet cover every group it needs) reads :data:`qdiff_lib.verdicts.PENDING`, and fills
itself in when the runs are committed. Each claim says where it comes from (:data:`ORIGINS`): the paper's abstract,
the paper's model, or the book's own reading. ``tests/test_verdicts.py`` pins the family.

Paper width (:attr:`Claim.paper_width`, the rule :data:`PAPER_WIDTH_RULE`, fixed on :data:`PAPER_WIDTH_RULE_FIXED`
after the first seed of ``mnist16`` had been read and before any run of ``medmnist16`` or ``scaling16`` existed): a
claim with a comparison in a second-edition study (the paper's width) is decided by that comparison once its study
holds every planned pair (:func:`planned_pairs`, from the full profile's grid); until then the first-edition comparison
decides, and the row carries the paper-width reading, uncorrected and labelled provisional. Whichever decides enters
Holm's family; the other does not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

from qdiff_lib.paper import CLAIMS as CLAIM_TEXTS
from qdiff_lib.stats import format_interval, holm_adjust
from qdiff_lib.verdicts import (
    PENDING,
    _sd_of,
    _tost,
    benefit_bound,
    claim_verdict,
    compare_arms,
    compare_group_means,
    minimum_detectable_effect,
)

__all__ = ["Comparison", "Claim", "CLAIMS", "ORIGINS", "NOISE_MARGIN_KID", "QUANTUM_INGREDIENT_CONTROLS",
           "PAPER_WIDTH_RULE", "PAPER_WIDTH_RULE_FIXED", "evaluate_claims", "component_table", "detectable_share",
           "planned_pairs"]

#: Where a claim comes from: ``"abstract"``, a sentence of the paper's abstract; ``"paper"``, implied by the paper's
#: model (a *variational* circuit is a trained component); ``"book"``, a question the book asks to read the abstract,
#: which the paper does not state.
ORIGINS = {"abstract": "the paper's abstract", "paper": "implied by the paper's model",
           "book": "the book's reading (not in the paper)"}

#: The margin of the two noise-strategy claims, in the book's KID units: a noise source or schedule whose benefit is
#: smaller than this is not the benefit the abstract claims. Our choice: half the effect of adding a plain classical
#: gate to the paper's baseline on MNIST (``se - none``, about -73.5 KID over 30 (digit, seed) pairs, whose half is
#: about 36.8), rounded down to a multiple of five, so a "useful noise strategy" must help at least half as much as
#: the simplest architectural change the book resolves. The rule refers only to the MNIST arms, not to the
#: noise-schedule study it decides; the noise intervals had been seen (issue 17 quotes them) when it was fixed, so
#: the results chapter also reports, for each comparison, the largest benefit its data do not exclude
#: (:func:`qdiff_lib.verdicts.benefit_bound`): any margin above that gives the same verdict.
NOISE_MARGIN_KID = 35.0

#: The controls of the "quantum ingredient" claim (16-qubit study ``mnist16``): the circuit's classical function with
#: no entangler and no weights (``se_cos``), its weights frozen (``quantum_rzry_frozen``), no entangler
#: (``quantum_rzry_separable``), and a classical surrogate of its function class (``fourier``).
QUANTUM_INGREDIENT_CONTROLS = ("se_cos", "quantum_rzry_frozen", "quantum_rzry_separable", "fourier")

#: When the paper-width rule was fixed: after the first seed of ``mnist16`` had been read, before any run of
#: ``medmnist16`` or ``scaling16`` existed.
PAPER_WIDTH_RULE_FIXED = "2026-11-29"
#: Which comparison decides a claim that has one at the paper's width (:attr:`Claim.paper_width`).
PAPER_WIDTH_RULE = (
    "the paper-width comparisons decide the claim once their study holds every planned pair (the pair keys of the "
    "full profile's runs of both sides within the comparison's limits on N); until then the first-edition comparisons "
    "decide, and the row carries the paper-width reading (estimate [CI], pairs present of planned, uncorrected, "
    "labelled provisional). The deciding comparison, whichever it is, enters Holm's family")


@dataclass(frozen=True)
class Comparison:
    """``a - b`` of column ``factor`` in study ``study``, paired on ``pair_on``; ``min_n_train``/``max_n_train``
    restrict the runs to a range of training-set sizes (inclusive)."""

    study: str
    a: str
    b: str
    factor: str = "arm"
    pair_on: tuple[str, ...] = ("label", "seed")
    min_n_train: int | None = None
    max_n_train: int | None = None

    def __str__(self) -> str:
        limits = []
        if self.min_n_train is not None:
            limits.append(f"N >= {self.min_n_train}")
        if self.max_n_train is not None:
            limits.append(f"N <= {self.max_n_train}")
        scope = f", {' and '.join(limits)}" if limits else ""
        return f"{self.a} - {self.b} ({self.study}, pairs: {' x '.join(self.pair_on)}{scope})"


@dataclass(frozen=True)
class Claim:
    """A claim and how it is decided.

    ``comparisons``: its primary comparison, or several that must *all* support it (an intersection-union test,
    Berger 1982: the claim holds at level alpha when every comparison does, with p-value the largest of theirs; it does
    not hold when any comparison lies wholly on the other side). ``lower_is_better``: the claim is supported by
    ``a - b`` below 0 (True) or above 0. ``basis``: ``"t"`` (mean difference) or ``"sign"`` (share of pairs, for
    pooled units on different scales). ``margin``: a benefit to be excluded when the interval contains 0
    (:func:`qdiff_lib.verdicts.claim_verdict`, ``margin_test="benefit"``). ``group``: a pairing key over whose means
    the comparison is repeated beside the primary one (``"label"``: ten digit means). ``exact``: the name of an exact
    check deciding the claim instead of a comparison (passed to :func:`evaluate_claims`). ``min_groups``: the claim
    stays pending until every comparison pairs runs in at least this many distinct values of ``group`` (a study
    computed in stages is not decided on its first digits). ``origin``: a key of :data:`ORIGINS`. ``note``: what the
    primary comparison tests, in words. ``paper_width``: the same claim's comparison(s) in a second-edition study, at
    the paper's width; they replace ``comparisons`` once their study holds every planned pair (:data:`PAPER_WIDTH_RULE`,
    fixed on :data:`PAPER_WIDTH_RULE_FIXED`); until then they are read, provisionally, beside the row.
    """

    key: str
    text: str
    comparisons: tuple[Comparison, ...] = ()
    lower_is_better: bool = True
    basis: str = "t"
    margin: float | None = None
    group: str | None = None
    exact: str | None = None
    min_groups: int | None = None
    paper_width: tuple[Comparison, ...] = ()
    note: str = field(default="", compare=False)
    origin: str = field(default="abstract", compare=False)

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"claim {self.key!r}: unknown origin {self.origin!r}; allowed: {list(ORIGINS)}")


#: The family of claims of the results chapter, fixed before the data are read (pinned by tests/test_verdicts.py).
CLAIMS: tuple[Claim, ...] = (
    Claim("quantum_better_mnist", CLAIM_TEXTS["quantum_better_mnist"],
          (Comparison("mnist", "quantum_rzry", "se"),), group="label",
          paper_width=(Comparison("mnist16", "quantum_rzry", "se"),),
          note="the authors' later, trainable circuit (quantum_rzry) against the parameter-matched tanh gate (se); "
               "not the paper's own pair (its untrainable circuit against no gate), and no perceptual metric"),
    Claim("quantum_better_medmnist", CLAIM_TEXTS["quantum_better_medmnist"],
          (Comparison("medmnist", "quantum_rzry", "se", pair_on=("dataset", "label", "seed")),), basis="sign",
          paper_width=(Comparison("medmnist16", "quantum_rzry", "se", pair_on=("dataset", "label", "seed")),),
          note="the trainable circuit (quantum_rzry) against the tanh gate (se), every MedMNIST case pooled; decided "
               "on the share of pairs in which the circuit scores lower (KID scales differ between datasets)"),
    Claim("quantum_noise_helps", CLAIM_TEXTS["quantum_noise_helps"],
          (Comparison("noise_schedules", "quantum", "gaussian", factor="noise", pair_on=("schedule", "seed")),),
          margin=NOISE_MARGIN_KID, note="both schedules x seeds, digit 3"),
    Claim("tailored_schedule_helps", CLAIM_TEXTS["tailored_schedule_helps"],
          (Comparison("noise_schedules", "tailored", "cosine", factor="schedule", pair_on=("noise", "seed")),),
          margin=NOISE_MARGIN_KID, note="both noise sources x seeds, digit 3"),
    Claim("circuit_trains", CLAIM_TEXTS["circuit_trains"], exact="paper_circuit_has_weight_gradient",
          note="exact check: the weight gradient of the paper's circuit", origin="paper"),
    Claim("quantum_ingredient",
          "The gain needs a quantum ingredient (entanglement or trainable quantum weights) beyond the circuit's "
          "classical function.",
          tuple(Comparison("mnist16", "quantum_rzry", c) for c in QUANTUM_INGREDIENT_CONTROLS), group="label",
          min_groups=10, origin="book",
          note="the full circuit must beat every control (intersection-union); decided once every comparison pairs "
               "runs in all ten digits"),
    Claim("advantage_below_100",
          "The advantage is specific to fewer than 100 training images (it is absent at 100 images or more).",
          (Comparison("scaling", "quantum_rzry", "se", pair_on=("n_train", "seed"), min_n_train=100),),
          lower_is_better=False, origin="book",
          paper_width=(Comparison("scaling16", "quantum_rzry", "se", pair_on=("n_train", "seed"), min_n_train=100),),
          note="supported by no advantage at N >= 100; contradicted by the circuit scoring lower there"),
)


def _select(frames: Mapping[str, pd.DataFrame], comp: Comparison, metric: str) -> pd.DataFrame:
    frame = frames.get(comp.study)
    needed = {comp.factor, metric, *comp.pair_on}
    if frame is None or len(frame) == 0 or not needed <= set(frame.columns):
        return pd.DataFrame(columns=sorted(needed))
    if comp.min_n_train is not None:
        frame = frame[frame["n_train"] >= comp.min_n_train]
    if comp.max_n_train is not None:
        frame = frame[frame["n_train"] <= comp.max_n_train]
    return frame


def _in_limits(n_train, comp: Comparison) -> bool:
    if comp.min_n_train is not None and not (n_train is not None and n_train >= comp.min_n_train):
        return False
    return comp.max_n_train is None or (n_train is not None and n_train <= comp.max_n_train)


@functools.cache
def _full_runs(study: str) -> tuple:
    from qdiff_lib.grids import study_runs  # here: the grids pull in the model code, the verdicts do not need it

    return tuple(study_runs(study, "full"))


def planned_pairs(comp: Comparison, runs: Sequence | None = None) -> set[tuple]:
    """The pairs ``comp`` will have once its study is complete: the keys (``comp.pair_on``, in order) shared by a
    planned run of ``comp.a`` and one of ``comp.b`` within the comparison's limits on ``n_train``. ``runs``: the
    study's planned runs (RunOptions or their dicts); default the full profile's grid,
    ``qdiff_lib.grids.study_runs(comp.study, "full")``."""
    from qdiff_lib.grids import arm_of

    sides: dict[str, set[tuple]] = {comp.a: set(), comp.b: set()}
    for o in _full_runs(comp.study) if runs is None else runs:
        values = o if isinstance(o, Mapping) else dataclasses.asdict(o)
        side = arm_of(values) if comp.factor == "arm" else values.get(comp.factor)
        if side in sides and _in_limits(values.get("n_train"), comp):
            sides[side].add(tuple(values[k] for k in comp.pair_on))
    return sides[comp.a] & sides[comp.b]


def _paired_groups(frame: pd.DataFrame, comp: Comparison, group: str, metric: str) -> int:
    """Distinct values of ``group`` among the pairs of ``comp`` in ``frame`` (both sides present, metric known)."""
    if not len(frame) or group not in frame.columns:
        return 0
    sides = [set(map(tuple, frame.loc[(frame[comp.factor] == arm) & frame[metric].notna(),
                                      list(comp.pair_on)].to_numpy().tolist())) for arm in (comp.a, comp.b)]
    index = list(comp.pair_on).index(group)
    return len({key[index] for key in sides[0] & sides[1]})


def _widths(frame: pd.DataFrame, comp: Comparison, metric: str) -> set[int]:
    """The circuit widths (column ``n_qubits``) of the runs of ``comp``'s two sides whose metric is known."""
    if not len(frame) or "n_qubits" not in frame.columns:
        return set()
    rows = frame[frame[comp.factor].isin([comp.a, comp.b]) & frame[metric].notna()]
    return {int(w) for w in rows["n_qubits"].dropna()}


def detectable_share(n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true share of pairs favouring one side that a sign-basis claim over ``n`` untied pairs detects
    with probability ``power``: the share ``s > 1/2`` at which the exact (Clopper-Pearson) ``1 - alpha`` interval of
    the observed share lies wholly above 1/2 (the rule of :func:`qdiff_lib.verdicts.claim_verdict`, basis sign) with
    probability ``power``. NaN when even ``n`` of ``n`` pairs would leave 1/2 inside the interval."""
    if n < 1:
        return math.nan

    def lower(k: int) -> float:  # Clopper-Pearson lower bound of k successes in n
        return float(sps.beta.ppf(alpha / 2, k, n - k + 1)) if k > 0 else 0.0

    k_min = next((k for k in range(n + 1) if lower(k) > 0.5), None)
    if k_min is None:
        return math.nan
    # P(Bin(n, s) >= k_min) rises with s from below alpha / 2 at s = 1/2 to 1 at s = 1
    return float(optimize.brentq(lambda s: sps.binom.sf(k_min - 1, n, s) - power, 0.5, 1.0, xtol=1e-10))


def _provisional(claim: Claim, comps: list[dict]) -> str:
    """The deciding comparison of a claim not yet decided for coverage, as it reads today, before any correction."""
    x, p, v = _combine(claim, comps)
    c = x["c"]
    reading = {"holds": "on the claim's side", "does not hold": "against the claim (interval on the other side)"}
    return (f"{x['comparison'].a} - {x['comparison'].b} = {format_interval(c['mean_diff'], c['ci_low'], c['ci_high'])}"
            f" over {c['n']} pairs, p = {_p(c, claim.basis):.2g} before any correction: "
            f"{reading.get(v, 'interval contains 0')}")


def _components(claim: Claim, frames, metric, alpha, n_boot, comparisons=None) -> list[dict]:
    out = []
    for comp in claim.comparisons if comparisons is None else comparisons:
        frame = _select(frames, comp, metric)
        kw = dict(factor=comp.factor, alpha=alpha, n_boot=n_boot)
        c = compare_arms(frame, comp.a, comp.b, metric, comp.pair_on, **kw) if len(frame) else {"n": 0}
        g = (compare_group_means(frame, comp.a, comp.b, metric, claim.group, comp.pair_on, **kw)
             if claim.group and claim.group in comp.pair_on and c["n"] >= 2 else None)
        covered = _paired_groups(frame, comp, claim.group, metric) if claim.group in comp.pair_on else None
        out.append({"comparison": comp, "c": c, "groups": g, "covered": covered,
                    "widths": _widths(frame, comp, metric)})
    return out


def _p(c: Mapping, basis: str) -> float:
    return float(c.get("t_pvalue" if basis == "t" else "sign_pvalue", np.nan))


def _combine(claim: Claim, comps: list[dict]) -> tuple[dict, float, str]:
    """The deciding component, the claim's p-value and its uncorrected verdict (intersection-union)."""
    kw = dict(lower_is_better=claim.lower_is_better, basis=claim.basis)
    verdicts = [claim_verdict(x["c"], **kw) for x in comps]
    if "does not hold" in verdicts:  # any comparison on the other side contradicts the claim
        worse = [x for x, v in zip(comps, verdicts, strict=True) if v == "does not hold"]
        x = min(worse, key=lambda y: _p(y["c"], claim.basis))
        return x, _p(x["c"], claim.basis), "does not hold"
    x = max(comps, key=lambda y: _p(y["c"], claim.basis))  # the weakest link decides "holds"
    return x, _p(x["c"], claim.basis), "holds" if all(v == "holds" for v in verdicts) else "inconclusive"


def _paper_width(claim: Claim, frames, metric, alpha, n_boot, planned_runs) -> dict:
    """The claim's paper-width comparisons as they read today: their components, whether every planned pair is
    present (then they decide), and the provisional reading of the row."""
    comps = _components(claim, frames, metric, alpha, n_boot, claim.paper_width)
    for x in comps:
        comp = x["comparison"]
        runs = planned_runs.get(comp.study) if planned_runs is not None and comp.study in planned_runs else None
        x["planned"] = planned_pairs(comp, runs)
        x["present"] = set(x["c"].get("pair_keys", ()))
    complete = all(x["planned"] and x["planned"] <= x["present"] for x in comps)
    tested = all(x["c"]["n"] >= 2 for x in comps)
    x = _combine(claim, comps)[0] if tested else min(comps, key=lambda y: y["c"]["n"])
    c, comp = x["c"], x["comparison"]
    out = {"comps": comps, "complete": complete, "n": int(c["n"]), "planned": len(x["planned"]),
           "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    width = f", {', '.join(map(str, sorted(x['widths'])))} qubits" if x["widths"] else ""
    pairs = f"{c['n']} of {len(x['planned'])} planned ({', '.join(comp.pair_on)}) pairs ({comp.study}{width})"
    if not tested:
        out["text"] = f"provisional: {pairs} so far, no interval"
        return out  # (complete needs every planned pair, so at least 2 of them: never complete here)
    sign = claim.basis == "sign"
    est, lo, hi = ((c["share_a_lower"], c["share_ci_low"], c["share_ci_high"]) if sign
                   else (c["mean_diff"], c["ci_low"], c["ci_high"]))
    out.update(estimate=est, ci_low=lo, ci_high=hi, p=_p(c, claim.basis))
    v = claim_verdict(c, lower_is_better=claim.lower_is_better, basis=claim.basis)
    reading = {"holds": "on the claim's side", "does not hold": "against the claim (interval on the other side)"}
    what = (f"share of pairs in which {comp.a} scores lower: {format_interval(est, lo, hi, 2)}" if sign
            else f"{comp.a} - {comp.b} = {format_interval(est, lo, hi)}")
    out["text"] = (f"deciding (every planned pair present): {pairs}" if complete else
                   f"provisional: {what} over {pairs}, {'sign test ' if sign else ''}p = {out['p']:.2g} before any "
                   f"correction: {reading.get(v, 'interval contains 0')}")
    return out


def evaluate_claims(
    frames: Mapping[str, pd.DataFrame],
    exact: Mapping[str, bool] | None = None,
    *,
    claims: tuple[Claim, ...] = CLAIMS,
    metric: str = "kid",
    alpha: float = 0.05,
    power: float = 0.8,
    n_boot: int = 2000,
    planned_runs: Mapping[str, Sequence] | None = None,
) -> pd.DataFrame:
    """One row per claim of ``claims``, decided on ``frames`` (study name -> :func:`qdiff_lib.study.load_results`).

    A claim with :attr:`Claim.paper_width` comparisons is decided by them once their study holds every planned pair
    (:func:`planned_pairs`; ``planned_runs`` maps a study to its planned runs, default the full profile's grid), and by
    its first-edition ``comparisons`` until then (:data:`PAPER_WIDTH_RULE`); ``primary comparison``, ``qubits``,
    ``deciding`` and Holm's family follow the deciding comparison. The columns ``paper width`` (the paper-width reading
    in words: provisional and uncorrected while the first edition decides), ``paper width n`` (pairs present),
    ``paper width planned``, ``paper width estimate``, ``paper width ci_low``, ``paper width ci_high``,
    ``paper width p`` (uncorrected, t or sign test by the claim's basis) and ``paper width decides`` give it; empty
    (NaN, False) for a claim without paper-width comparisons.

    A claim whose comparisons lack 2 pairs each (a study not run, an arm missing), or cover fewer than its
    ``min_groups`` groups, reads :data:`PENDING`; for the latter, ``estimate [95% CI]`` says how many groups are
    covered and ``provisional`` how its deciding comparison reads today, uncorrected and outside the family; ``exact``
    maps an exact check's name to its outcome (True: the mechanism the claim needs is present), a missing one pending.
    Holm's correction runs over every test made on data: each tested claim's direction p-value (t or sign test; the
    largest over an intersection-union family), plus, for a claim with a margin, the one-sided p-value against a benefit
    of that margin. Columns: ``claim`` (text), ``primary comparison``, ``n`` (pairs), ``estimate``, ``ci_low``,
    ``ci_high``, ``estimate [95% CI]`` (the mean difference, or for basis sign the share of pairs in which ``a`` is
    lower), ``p``, ``p_holm``, ``mde`` (:func:`qdiff_lib.verdicts.minimum_detectable_effect` in the metric's units,
    basis t; for basis sign the share of pairs :func:`detectable_share`), ``margin``,
    ``benefit not excluded`` (:func:`qdiff_lib.verdicts.benefit_bound`), ``tost_p`` (two-sided equivalence),
    ``margin_p``, ``margin_p_holm``, ``group means`` (the comparison over per-group means) and its ``group verdict``,
    ``verdict``, ``origin`` (:data:`ORIGINS`), ``qubits`` (the circuit widths of the compared runs, e.g. ``"8"``;
    empty without runs or an ``n_qubits`` column), ``provisional`` and ``deciding`` (the :class:`Comparison` whose
    numbers the row gives: for an intersection-union claim, the one that decides it; None for an exact check);
    indexed by the claim's key.
    """
    exact = dict(exact or {})
    rows, family = [], []  # family: (row index, kind, p)
    decided = {}
    for claim in claims:
        pw = _paper_width(claim, frames, metric, alpha, n_boot, planned_runs) if claim.paper_width else None
        comparisons = claim.paper_width if pw is not None and pw["complete"] else claim.comparisons
        row = {"key": claim.key, "claim": claim.text, "primary comparison": "; ".join(map(str, comparisons))
               or claim.note, "n": 0, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "estimate [95% CI]": "", "p": np.nan, "p_holm": np.nan, "mde": np.nan, "margin": claim.margin,
               "benefit not excluded": np.nan, "tost_p": np.nan, "margin_p": np.nan, "margin_p_holm": np.nan,
               "group means": "", "group verdict": "", "verdict": PENDING, "origin": claim.origin, "qubits": "",
               "provisional": "", "deciding": comparisons[0] if comparisons else None,
               "paper width": "", "paper width n": 0, "paper width planned": 0, "paper width estimate": np.nan,
               "paper width ci_low": np.nan, "paper width ci_high": np.nan, "paper width p": np.nan,
               "paper width decides": False}
        if pw is not None:
            row.update({"paper width": pw["text"], "paper width decides": pw["complete"],
                        **{f"paper width {k}": pw[k] for k in ("n", "planned", "estimate", "ci_low", "ci_high", "p")}})
        rows.append(row)
        if claim.exact is not None:
            if claim.exact in exact:
                row["verdict"] = "holds" if exact[claim.exact] else "does not hold"
                row["estimate [95% CI]"] = "exact check"
            continue
        comps = pw["comps"] if pw is not None and pw["complete"] else _components(claim, frames, metric, alpha,
                                                                                   n_boot)
        row["qubits"] = ", ".join(map(str, sorted(set().union(*(x["widths"] for x in comps)))))
        if not comps or any(x["c"]["n"] < 2 for x in comps):
            continue
        if claim.min_groups and any((x["covered"] or 0) < claim.min_groups for x in comps):
            fewest = min(x["covered"] or 0 for x in comps)
            row["estimate [95% CI]"] = (f"not decided until every comparison pairs runs in all {claim.min_groups} "
                                        f"{claim.group} values ({fewest} so far)")
            row["provisional"] = _provisional(claim, comps)
            continue
        x, p, _ = _combine(claim, comps)
        c = x["c"]
        row["deciding"] = x["comparison"]  # of an intersection-union claim: the comparison its numbers are from
        if len(comps) > 1:
            row["primary comparison"] = f"deciding: {x['comparison']} (of {len(comps)}, all must hold)"
        sign = claim.basis == "sign"
        est, lo, hi = ((c["share_a_lower"], c["share_ci_low"], c["share_ci_high"]) if sign
                       else (c["mean_diff"], c["ci_low"], c["ci_high"]))
        row.update({"n": c["n"], "estimate": est, "ci_low": lo, "ci_high": hi, "p": p,
                    "estimate [95% CI]": (f"share of pairs in which {x['comparison'].a} scores lower: " if sign
                                          else "") + format_interval(est, lo, hi, 3 if not sign else 2)
                    + (" (no difference: 0.5)" if sign else "")})
        row["mde"] = (detectable_share(c["n"], alpha=alpha, power=power) if sign
                      else minimum_detectable_effect(sd=_sd_of(c), n=c["n"], alpha=alpha, power=power))
        if claim.margin is not None:
            m = claim.margin
            tost = _tost(c["mean_diff"], _sd_of(c), c["n"], -m, m, alpha)
            row["tost_p"] = tost["pvalue"]
            row["margin_p"] = tost["p_low"] if claim.lower_is_better else tost["p_high"]
            row["benefit not excluded"] = benefit_bound(c, claim.lower_is_better)
            family.append((len(rows) - 1, "margin_p", row["margin_p"]))
        if x["groups"] is not None:
            g = x["groups"]
            row["group means"] = f"{format_interval(g['mean_diff'], g['ci_low'], g['ci_high'], 3)}, {g['n']} means"
            row["group verdict"] = claim_verdict(g, lower_is_better=claim.lower_is_better)
        family.append((len(rows) - 1, "p", p))
        decided[len(rows) - 1] = (claim, comps)
    adjusted = holm_adjust([p for _, _, p in family]) if family else []
    for (i, kind, _), ph in zip(family, adjusted, strict=True):
        rows[i][f"{kind}_holm" if kind == "margin_p" else "p_holm"] = float(ph)
    for i, (claim, comps) in decided.items():
        row = rows[i]
        holm_p = row["p_holm"] if np.isfinite(row["p_holm"]) else None
        margin_holm = row["margin_p_holm"] if np.isfinite(row["margin_p_holm"]) else None
        if len(comps) == 1:
            row["verdict"] = claim_verdict(comps[0]["c"], lower_is_better=claim.lower_is_better, basis=claim.basis,
                                           margin=claim.margin, holm_pvalue=holm_p, margin_test="benefit",
                                           margin_pvalue=margin_holm)
        else:
            _, _, v = _combine(claim, comps)
            row["verdict"] = (f"{v} before correction only" if v != "inconclusive" and holm_p is not None
                              and not holm_p < alpha else v)
    return pd.DataFrame(rows).set_index("key")


def component_table(frames: Mapping[str, pd.DataFrame], claim: Claim, *, metric: str = "kid", alpha: float = 0.05,
                    n_boot: int = 2000) -> pd.DataFrame:
    """Every comparison of ``claim``, one row each: ``comparison``, ``n``, ``estimate [95% CI]``, ``p`` (t), the
    uncorrected ``verdict`` and, with a ``group``, the comparison over group means (``group means``)."""
    rows = []
    for x in _components(claim, frames, metric, alpha, n_boot):
        c, g = x["c"], x["groups"]
        tested = c["n"] >= 2
        rows.append({
            "comparison": str(x["comparison"]), "n": c["n"],
            "estimate [95% CI]": format_interval(c["mean_diff"], c["ci_low"], c["ci_high"]) if tested else "",
            "p": c.get("t_pvalue", math.nan) if tested else math.nan,
            "verdict": claim_verdict(c, lower_is_better=claim.lower_is_better) if tested else PENDING,
            "group means": (f"{format_interval(g['mean_diff'], g['ci_low'], g['ci_high'])}, {g['n']} means"
                            if g is not None else ""),
        })
    return pd.DataFrame(rows, columns=["comparison", "n", "estimate [95% CI]", "p", "verdict", "group means"])
