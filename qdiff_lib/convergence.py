"""Stage 2 of the study (issue 20): longer training and per-arm tuning, read by rules fixed before the data exist.

Two grids of :mod:`qdiff_lib.grids` (:func:`design` collects their constants):

* ``convergence16``: the arms :data:`~qdiff_lib.grids.CONVERGENCE_ARMS` on digit 3 with the seeds
  :data:`~qdiff_lib.grids.CONVERGENCE_SEEDS`, trained to :data:`~qdiff_lib.grids.CONVERGENCE_STEPS` steps and scored
  also at :data:`~qdiff_lib.grids.CONVERGENCE_SCORE_AT` from the same run (the run option ``score_at``; its summary
  keeps ``metrics_at`` and ``samples_at``). The first steps of each run are the ``mnist16`` run of the same arm and
  seed, so its score at that run's last step (the *reference step*, 2000 in the full profile) must be that run's.
* ``tuning16``: the same arms on digit :data:`~qdiff_lib.grids.TUNING_LABEL` at the learning rates
  :data:`~qdiff_lib.grids.TUNING_LRS`; the default rate (``RunOptions().lr``) is not rerun: its runs are ``mnist16``'s.

The reading (pre-registered: written before any full-profile run of either study existed):

1. :func:`prefix_check`, a check rather than a finding: each convergence run at the reference step equals its
   ``mnist16`` twin, exactly (the same samples, bit for bit, and the same scores).
2. :func:`ranking_by_step`: per seed and for the seed means, the order of the arms at each scored step; the ranking
   at the reference step *survives* when the order is the same at every later scored step. No test is made of it.
3. :func:`step_differences`: the paired differences :data:`COMPARISONS` at each step, by
   :func:`qdiff_lib.verdicts.compare_arms` over the seeds. With two seeds on one digit the t interval has one degree
   of freedom: the table reports the differences and says what ``n`` is; it decides nothing.
4. :func:`memorisation_onset`: the first scored step at which the memorization score exceeds
   :data:`qdiff_lib.metrics.MEMORIZATION_THRESHOLD` (the library's copying flag), per arm and seed.
5. :func:`tuning_table`, :func:`tuned_lr`, :func:`tuned_ranking`: the mean KID over seeds of each arm at each rate,
   each arm's best rate, and the order of the arms at their best rates against that at the default rate.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qdiff_lib._checks import check_choice, counted
from qdiff_lib.experiment import RunOptions
from qdiff_lib.grids import (
    ARMS,
    CONVERGENCE_ARMS,
    CONVERGENCE_SEEDS,
    PROFILES,
    STUDIES,
    TUNING_LABEL,
    TUNING_LRS,
    arm_of,
    study_runs,
)
from qdiff_lib.metrics import MEMORIZATION_THRESHOLD, add_normalised_kid
from qdiff_lib.study import flatten_summary, results_dir
from qdiff_lib.verdicts import compare_arms

__all__ = ["COMPARISONS", "DEFAULT_LR", "LOWER_IS_BETTER", "RUN_COLUMNS", "SCORE_COLUMNS", "Ranking", "TunedRanking",
           "design", "load_scores", "prefix_check", "ranking_by_step", "step_differences", "memorisation_onset",
           "tuning_table", "tuned_lr", "tuned_ranking", "plot_by_step"]

#: The paired differences read at every step, ``a - b``: the circuit and the cos gate, each against the tanh gate.
COMPARISONS = (("quantum_rzry", "se"), ("se_cos", "se"))
#: The learning rate every other study uses; ``tuning16`` borrows its runs from ``mnist16``.
DEFAULT_LR = RunOptions().lr
#: The metrics that rank arms, and their direction (memorization ranks nothing: it warns of copying).
LOWER_IS_BETTER = {"kid": True, "kid_norm": True, "fid": True, "class_consistency": False, "precision": False,
                   "recall": False}
#: The columns of :func:`load_scores` that describe a run or a scored step (every other column is a metric).
RUN_COLUMNS = ["key", "dataset", "label", "n_train", "seed", "arm", "lr", "n_qubits", "n_samples", "classifier_augment",
               "schedule", "noise", "steps", "step", "final", "metrics_version", "samples_sha256", "pinned", "device"]
#: The metric columns :func:`load_scores` always has (others appear when the summaries hold them).
SCORE_COLUMNS = ["kid", "kid_se", "kid_norm", "kid_norm_se", "class_consistency", "precision", "precision_se",
                 "recall", "recall_se", "memorization"]
#: What makes a convergence run the twin of an ``mnist16`` run (besides their steps and ``score_at``).
TWIN_KEYS = ["dataset", "label", "n_train", "arm", "seed", "lr", "n_qubits", "n_samples", "classifier_augment"]


def design(profile_name: str = "full") -> dict[str, Any]:
    """The stage's design as the grids build it for ``profile_name``: ``arms``, ``label``, ``seeds``, ``steps`` (the
    convergence runs' budget), ``score_at``, ``scored_steps`` (both), ``reference_step`` (the budget of ``mnist16``,
    whose runs are the convergence runs' prefixes), ``tuning_label``, ``tuning_seeds``, ``tried_lrs`` (rerun),
    ``default_lr``, ``lrs`` (all, sorted), ``n_convergence`` and ``n_tuning`` (planned runs)."""
    check_choice("profile", profile_name, PROFILES)
    conv, tune = study_runs("convergence16", profile_name), study_runs("tuning16", profile_name)
    steps = sorted({o.steps for o in conv})
    score_at = sorted({k for o in conv for k in o.score_steps()})
    tried = sorted({o.lr for o in tune})
    return {"arms": tuple(dict.fromkeys(arm_of(o) for o in conv)), "label": conv[0].label,
            "seeds": tuple(sorted({o.seed for o in conv})), "steps": steps[-1], "score_at": tuple(score_at),
            "scored_steps": tuple(sorted({*score_at, *steps})),
            "reference_step": study_runs("mnist16", profile_name)[0].steps, "tuning_label": tune[0].label,
            "tuning_seeds": tuple(sorted({o.seed for o in tune})), "tried_lrs": tuple(tried),
            "default_lr": DEFAULT_LR, "lrs": tuple(sorted({*tried, DEFAULT_LR})), "n_convergence": len(conv),
            "n_tuning": len(tune)}


def _score_rows(key: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one summary: its final scores and those of each step of its ``metrics_at``."""
    o = summary["options"]
    final = int(o["steps"]) if o.get("steps") is not None else int(summary["loss_curve"][-1][0])
    scored = {final: (summary["metrics"], (summary.get("samples") or {}).get("sha256"))}
    for k, metrics in (summary.get("metrics_at") or {}).items():
        scored[int(k)] = (metrics, ((summary.get("samples_at") or {}).get(k) or {}).get("sha256"))
    rows = []
    for step, (metrics, sha) in sorted(scored.items()):
        row = flatten_summary({**summary, "metrics": metrics})  # the same columns as qdiff_lib.study.load_results
        for run_level in ("final_loss", "train_s"):  # of the whole run, not of this step
            row.pop(run_level)
        rows.append({**row, "key": key, "lr": float(o["lr"]), "steps": final, "step": step, "final": step == final,
                     "metrics_version": summary.get("metrics_version"), "samples_sha256": sha})
    return rows


def load_scores(profile_name: str, study: str, root: str | os.PathLike | None = None, *, normalise: bool = True,
                calibration_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every scored step of every finished run of ``study``: one row per (run, step), long format.

    The final step's scores come from the summary's ``metrics``, the others from its ``metrics_at``; each row has
    the run's options (:data:`RUN_COLUMNS`: ``arm``, ``seed``, ``label``, ``lr``, ``steps`` the run's budget, ``step``
    the scored step, ``final``, the samples' sha256 at that step...) and every scalar metric at that step, flattened
    as :func:`qdiff_lib.study.load_results` does (``kid``, ``kid_se``, ``memorization``...). With ``normalise``, KID on
    its class's scale too (``kid_norm``, :func:`qdiff_lib.metrics.add_normalised_kid`, calibration files under
    ``calibration_root``). No runs: an empty frame with the columns :data:`RUN_COLUMNS` and :data:`SCORE_COLUMNS`.
    Rows are sorted by arm, seed, label, lr and step.
    """
    check_choice("profile", profile_name, PROFILES)
    check_choice("study", study, STUDIES)
    folder = results_dir(profile_name, study, root)
    rows = [r for p in sorted(folder.glob("*.json")) for r in _score_rows(p.stem, json.loads(p.read_text()))]
    if not rows:
        return pd.DataFrame(columns=RUN_COLUMNS + SCORE_COLUMNS)
    frame = pd.DataFrame(rows)
    if normalise:
        frame = add_normalised_kid(frame, root=calibration_root)
    for column in SCORE_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    frame = frame[RUN_COLUMNS + [c for c in frame.columns if c not in RUN_COLUMNS]]
    return frame.sort_values(["arm", "seed", "label", "lr", "step"], kind="stable").reset_index(drop=True)


def _check_columns(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: no column(s) {missing}; expected a load_scores frame with {list(columns)}")


def _check_unique(frame: pd.DataFrame, who: str, keys: Sequence[str] = ("arm", "seed", "label", "lr", "step")) -> None:
    """ValueError when two rows share ``keys`` (two runs of one arm and seed: an older run left in the folder), as
    :func:`qdiff_lib.stats.paired_by` refuses them, rather than taking one by file order."""
    keys = [k for k in keys if k in frame.columns]
    repeated = frame[frame.duplicated(subset=keys, keep=False)]
    if len(repeated):
        raise ValueError(f"{who}: {len(repeated)} rows share {keys} (e.g. {repeated.iloc[0][keys].to_dict()}, keys "
                         f"{sorted(set(repeated['key']))[:4] if 'key' in repeated else '?'}); expected one run each")


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in RUN_COLUMNS and pd.api.types.is_numeric_dtype(frame[c])]


def prefix_check(convergence: pd.DataFrame, mnist16: pd.DataFrame, *, rtol: float = 0.0) -> pd.DataFrame:
    """Each convergence run at the step where its ``mnist16`` twin ended, against that twin's final scores.

    Both frames come from :func:`load_scores`. The twin shares :data:`TWIN_KEYS` (arm, seed, digit, lr, width...).
    The prefix is the same computation (the same data draw, model, training stream and sampling seed; the snapshot
    is scored by the same code), so under the pinned numerics the two agree bit for bit (``tests/test_rescore.py``
    checks it on a tiny run): the default ``rtol`` 0 asks for exact equality. A positive ``rtol`` (relative, per
    metric) is for runs computed on machines whose numerics differ, never for the committed ones.

    One row per convergence run: its ``arm``, ``seed``, ``label``, ``step`` (the twin's budget), ``key`` and
    ``twin_key``, ``kid`` and ``twin_kid``, ``same_samples`` (the sha256 of both samples; None when one is not
    recorded), ``differing`` (the metrics that differ beyond ``rtol``), ``versions`` (metrics versions, run/twin),
    ``equal`` and ``status`` (``equal``, ``different samples``, ``different scores``, ``metrics versions differ``,
    ``no mnist16 run`` or ``no score at the twin's step``).
    """
    if not (isinstance(rtol, (int, float)) and math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"prefix_check: rtol must be a finite number >= 0, got {rtol!r}")
    columns = ["arm", "seed", "label", "step", "key", "twin_key", "kid", "twin_kid", "same_samples", "differing",
               "versions", "equal", "status"]
    if not len(convergence):
        return pd.DataFrame(columns=columns)
    for name, frame in (("convergence", convergence), ("mnist16", mnist16)):
        _check_columns(frame, f"prefix_check ({name})", [*TWIN_KEYS, "key", "step", "final", "samples_sha256"])
    twins = mnist16[mnist16["final"].astype(bool)] if len(mnist16) else mnist16
    dup = twins.duplicated(subset=TWIN_KEYS, keep=False) if len(twins) else pd.Series(dtype=bool)
    if dup.any():
        raise ValueError(f"prefix_check: mnist16 holds several runs for {twins.loc[dup, TWIN_KEYS].iloc[0].to_dict()}")
    shared = [c for c in _metric_columns(convergence) if c in twins.columns]
    rows = []
    for key, run in convergence.groupby("key", sort=True):
        first = run.iloc[0]
        row = {"arm": first["arm"], "seed": first["seed"], "label": first["label"], "step": np.nan, "key": key,
               "twin_key": None, "kid": np.nan, "twin_kid": np.nan, "same_samples": None, "differing": "",
               "versions": "", "equal": False}
        match = twins
        for c in TWIN_KEYS:
            match = match[match[c] == first[c]] if len(match) else match
        if not len(match):
            rows.append({**row, "status": "no mnist16 run"})
            continue
        twin = match.iloc[0]
        here = run[run["step"] == twin["step"]]
        row.update(step=int(twin["step"]), twin_key=twin["key"], twin_kid=twin["kid"],
                   versions=f"{first['metrics_version']}/{twin['metrics_version']}")
        if not len(here):
            rows.append({**row, "status": "no score at the twin's step"})
            continue
        at = here.iloc[0]
        a, b = (pd.to_numeric(r[shared], errors="coerce").to_numpy(dtype=float) for r in (at, twin))
        close = np.isclose(a, b, rtol=rtol, atol=0.0, equal_nan=True)  # rtol 0: exact equality
        shas = (at["samples_sha256"], twin["samples_sha256"])
        same = None if any(s is None or s != s for s in shas) else bool(shas[0] == shas[1])
        differing = [c for c, ok in zip(shared, close, strict=True) if not ok]
        status = ("different samples" if same is False else
                  "metrics versions differ" if at["metrics_version"] != twin["metrics_version"] else
                  "different scores" if differing else "equal")
        rows.append({**row, "kid": at["kid"], "same_samples": same, "differing": ", ".join(differing),
                     "equal": status == "equal", "status": status})
    return pd.DataFrame(rows, columns=columns)


def _objects(values, index=None) -> pd.Series:
    """``values`` as Python objects, so that None stays None beside numbers and booleans (not NaN, not numpy's)."""
    return pd.Series([v.item() if isinstance(v, np.generic) else v for v in values], index=index, dtype=object)


def _check_metric(frame: pd.DataFrame, metric: str) -> None:
    check_choice("metric", metric, _metric_columns(frame) or SCORE_COLUMNS)


def _check_arms(arms: Sequence[str]) -> list[str]:
    for arm in arms:
        check_choice("arm", arm, ARMS)
    if len(set(arms)) < 2:
        raise ValueError(f"need at least two distinct arms to rank, got {list(arms)}")
    return list(arms)


@dataclass(frozen=True)
class Ranking:
    """:func:`ranking_by_step`'s result.

    ``ranks``: one row per (``seed``, ``step``), ``seed`` ``"mean"`` for the seed means (with two seeds or more); a
    column per arm (its rank,
    1 the best, ties share the lower rank), ``order`` (the arms best first, ``=`` between ties) and ``n_seeds``.
    ``survival``: one row per seed (and ``"mean"``): ``reference_order``, ``later_steps`` (how many scored steps
    after the reference step it has), ``changed_at`` (the later steps whose order differs) and ``survives`` (True:
    the same order at every later step; False: it changed; None: the reference step, an arm or an expected later
    step is missing).
    """

    metric: str
    lower_is_better: bool
    reference_step: int
    ranks: pd.DataFrame
    survival: pd.DataFrame


def _order(ranks: pd.Series) -> str:
    return ", ".join(" = ".join(g.index) for _, g in ranks.groupby(ranks, sort=True))


def ranking_by_step(scores: pd.DataFrame, metric: str = "kid", lower_is_better: bool | None = None, *,
                    reference_step: int, arms: Sequence[str] = CONVERGENCE_ARMS,
                    steps: Sequence[int] | None = None) -> Ranking:
    """The order of ``arms`` by ``metric`` at each scored step, per seed and for the means over seeds.

    ``scores``: :func:`load_scores` of ``convergence16`` (one digit). ``lower_is_better``: None takes
    :data:`LOWER_IS_BETTER`'s. ``reference_step``: the step whose ranking is asked to survive (the budget of
    ``mnist16``, :func:`design`'s ``reference_step``). ``steps``: the scored steps expected (None: those present), so
    that a missing later step reads "not yet known" rather than "survives". The seed means average, at each step,
    the seeds that hold every arm at every step.
    """
    _check_columns(scores, "ranking_by_step", ["arm", "seed", "step", metric])
    if lower_is_better is None:
        check_choice("ranking metric", metric, LOWER_IS_BETTER)
        lower_is_better = LOWER_IS_BETTER[metric]
    if len(scores):
        _check_metric(scores, metric)
    arms = _check_arms(arms)
    scores = scores[scores["arm"].isin(arms)]
    _check_unique(scores, "ranking_by_step")
    steps = sorted(set(scores["step"]) if steps is None else {int(s) for s in steps})
    wide = scores.pivot_table(index=["seed", "step"], columns="arm", values=metric, aggfunc="first") \
        if len(scores) else pd.DataFrame(columns=arms)
    wide = wide.reindex(columns=arms)
    complete = [s for s in sorted({k[0] for k in wide.index})
                if all(not wide.loc[s].reindex(steps)[a].isna().any() for a in arms)]
    means = {("mean", st): wide.loc[complete].xs(st, level="step").mean() for st in steps} \
        if len(complete) > 1 else {}
    blocks = [(key, row, 1) for key, row in wide.iterrows()] + [(k, v, len(complete)) for k, v in means.items()]
    rank_rows, orders = [], {}
    for (seed, step), values, n in blocks:
        if values.isna().any():
            continue
        r = values.rank(ascending=lower_is_better, method="min").astype(int)
        orders[(seed, int(step))] = tuple(r[a] for a in arms)
        rank_rows.append({"seed": seed, "step": int(step), **r.to_dict(), "order": _order(r), "n_seeds": n})
    ranks = pd.DataFrame(rank_rows, columns=["seed", "step", *arms, "order", "n_seeds"])
    later = [s for s in steps if s > reference_step]
    survival = []
    for seed in [*sorted({k[0] for k in wide.index}), *(["mean"] if means else [])]:
        ref = orders.get((seed, reference_step))
        known = [s for s in later if (seed, s) in orders]
        changed = [s for s in known if orders[(seed, s)] != ref] if ref else []
        survives = False if changed else (True if ref and len(known) == len(later) and later else None)
        ref_text = ranks.loc[(ranks["seed"] == seed) & (ranks["step"] == reference_step), "order"]
        survival.append({"seed": seed, "reference_order": ref_text.iloc[0] if len(ref_text) else None,
                         "later_steps": len(known), "changed_at": changed, "survives": survives})
    survival = pd.DataFrame(survival, columns=["seed", "reference_order", "later_steps", "changed_at", "survives"])
    survival["survives"] = _objects(survival["survives"])
    return Ranking(metric, bool(lower_is_better), int(reference_step), ranks, survival)


def step_differences(scores: pd.DataFrame, metric: str = "kid", comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                     *, alpha: float = 0.05) -> pd.DataFrame:
    """The paired differences ``a - b`` of ``metric`` at each scored step, pairs sharing digit and seed.

    :func:`qdiff_lib.verdicts.compare_arms` on the rows of each step. One row per (``step``, ``comparison``): ``n``
    (pairs), ``differences`` (each pair's, in seed order), ``mean_diff``, ``ci_low``/``ci_high`` (the (1 - alpha)
    Student-t interval, NaN below two pairs), ``n_a_lower`` and ``note``, which says what ``n`` is: with two seeds on
    one digit the interval has one degree of freedom. No verdict is drawn here: the design of this stage has too few
    pairs for one.
    """
    _check_columns(scores, "step_differences", ["arm", "seed", "label", "step", metric])
    for a, b in comparisons:
        check_choice("arm", a, ARMS)
        check_choice("arm", b, ARMS)
    columns = ["step", "comparison", "n", "differences", "mean_diff", "ci_low", "ci_high", "n_a_lower", "note"]
    rows = []
    for step in sorted(set(scores["step"])):
        at = scores[scores["step"] == step]
        for a, b in comparisons:
            c = compare_arms(at, a, b, metric, pair_on=("label", "seed"), alpha=alpha, n_boot=999)
            wide = at[at["arm"].isin([a, b])].pivot_table(index=["label", "seed"], columns="arm", values=metric)
            d = (wide[a] - wide[b]).dropna().tolist() if {a, b} <= set(wide.columns) else []
            labels = sorted({k[0] for k in c["pair_keys"]})
            seeds_of = [str(k[1]) for k in c["pair_keys"]]
            note = (f"n = {counted(c['n'], 'pair')}: {'seed' if len(seeds_of) == 1 else 'seeds'} "
                    f"{', '.join(seeds_of) or '-'} on {'digit' if len(labels) == 1 else 'digits'} "
                    f"{', '.join(map(str, labels)) or '-'}; "
                    + (f"t interval with {counted(c['n'] - 1, 'degree')} of freedom" if c["n"] >= 2 else "no interval"))
            rows.append({"step": int(step), "comparison": f"{a} - {b}", "n": c["n"], "differences": d,
                         "mean_diff": float(np.mean(d)) if d else np.nan, "ci_low": c["ci_low"],
                         "ci_high": c["ci_high"], "n_a_lower": sum(x < 0 for x in d), "note": note})
    return pd.DataFrame(rows, columns=columns)


def memorisation_onset(scores: pd.DataFrame, threshold: float = MEMORIZATION_THRESHOLD,
                       metric: str = "memorization") -> pd.DataFrame:
    """The first scored step at which each arm's memorization score exceeds ``threshold`` (the copying flag of
    :func:`qdiff_lib.metrics.memorization`, ``score > threshold``), per seed and for the mean over seeds.

    One row per (``arm``, ``seed``), ``seed`` ``"mean"`` for the means over the seeds that have every step of the
    arm: ``onset`` (a step, or None when no scored step crosses), ``steps`` (how many were scored), ``max`` and
    ``last`` (the score at the last step).
    """
    _check_columns(scores, "memorisation_onset", ["arm", "seed", "step", metric])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"memorisation_onset: threshold must be a finite number, got {threshold!r}")
    _check_unique(scores, "memorisation_onset")
    rows = []
    for arm, frame in scores.groupby("arm", sort=True):
        wide = frame.pivot_table(index="step", columns="seed", values=metric, aggfunc="first").sort_index()
        curves = {seed: wide[seed].dropna() for seed in wide.columns}
        full = wide.dropna(axis=1)
        if full.shape[1] > 1:
            curves["mean"] = full.mean(axis=1)
        for seed, curve in curves.items():
            over = curve[curve > threshold]
            rows.append({"arm": arm, "seed": seed, "onset": int(over.index[0]) if len(over) else None,
                         "steps": len(curve), "max": float(curve.max()), "last": float(curve.iloc[-1])})
    out = pd.DataFrame(rows, columns=["arm", "seed", "onset", "steps", "max", "last"])
    out["onset"] = _objects([r["onset"] for r in rows])
    return out


def tuning_table(tuning: pd.DataFrame, mnist16: pd.DataFrame, metric: str = "kid", *,
                 seeds: Sequence[int] | None = None, arms: Sequence[str] = CONVERGENCE_ARMS,
                 label: int = TUNING_LABEL) -> pd.DataFrame:
    """The mean ``metric`` over seeds of each arm at each learning rate (``tuning16``'s, and the default borrowed
    from ``mnist16``'s runs of digit ``label`` with the same seeds).

    ``tuning`` and ``mnist16``: :func:`load_scores` frames (their final steps are used). ``seeds``: the seeds each
    cell averages (None: the full grid's, :data:`~qdiff_lib.grids.CONVERGENCE_SEEDS`); a cell is complete when every
    one of them has a finite score, and two runs of one cell with the same seed raise ValueError. One row per
    (``arm``, ``lr``): ``source``, ``values`` (per seed, in seed order), ``n_seeds``, ``mean`` and ``complete``.

    **Caveat.** The rate is chosen and evaluated on the same digit-5 runs, so every arm's tuned score is optimistic by
    the same kind of selection (the best of three tries each); that is why every arm gets the same budget of tries.
    """
    for name, frame in (("tuning", tuning), ("mnist16", mnist16)):
        _check_columns(frame, f"tuning_table ({name})", ["arm", "seed", "label", "lr", "final", metric])
    arms = _check_arms(arms)
    lrs = sorted({*TUNING_LRS, DEFAULT_LR})
    bad = sorted({float(v) for v in tuning["lr"]} - set(TUNING_LRS))
    if bad:
        raise ValueError(f"tuning_table: tuning runs at learning rate(s) {bad}; allowed: {list(TUNING_LRS)} (the "
                         f"default {DEFAULT_LR} comes from mnist16)")
    bad_labels = sorted(set(tuning["label"]) - {label})
    if bad_labels:
        raise ValueError(f"tuning_table: tuning runs of digit(s) {bad_labels}; allowed: [{label}]")
    seeds = sorted(CONVERGENCE_SEEDS if seeds is None else {int(s) for s in seeds})
    borrowed = mnist16[(mnist16["label"] == label) & np.isclose(mnist16["lr"].astype(float), DEFAULT_LR)]
    parts = [f[f["final"].astype(bool)] for f in (tuning, borrowed) if len(f)]
    both = pd.concat(parts) if parts else pd.DataFrame(columns=["arm", "seed", "lr", metric])
    versions = sorted({int(v) for v in both.get("metrics_version", pd.Series(dtype=float)).dropna()})
    if len(versions) > 1:  # one study rescored and not the other: its scores come from other code
        raise ValueError(f"tuning_table: the tuning16 runs and the borrowed mnist16 runs were scored by metrics "
                         f"versions {versions}; rescore both to one version")
    rows = []
    for arm in arms:
        for lr in lrs:
            cell = both[(both["arm"] == arm) & np.isclose(both["lr"].astype(float), lr) & both["seed"].isin(seeds)]
            if cell["seed"].duplicated().any():
                raise ValueError(f"tuning_table: several runs of {arm} at learning rate {lr:g} with seed(s) "
                                 f"{sorted(set(cell.loc[cell['seed'].duplicated(), 'seed']))}; expected one each")
            cell = cell[np.isfinite(cell[metric].astype(float))]
            values = cell.sort_values("seed")[metric].astype(float).tolist()
            rows.append({"arm": arm, "lr": lr, "source": "mnist16" if lr == DEFAULT_LR else "tuning16",
                         "values": values, "n_seeds": len(values), "mean": float(np.mean(values)) if values else np.nan,
                         "complete": bool(seeds) and len(values) == len(seeds)})
    return pd.DataFrame(rows, columns=["arm", "lr", "source", "values", "n_seeds", "mean", "complete"])


def tuned_lr(table: pd.DataFrame, lower_is_better: bool = True) -> dict[str, float | None]:
    """Each arm's learning rate with the best mean in a :func:`tuning_table` (lowest when ``lower_is_better``), or
    None while any of its rates is incomplete. Ties go to the default rate, else to the smallest tied rate."""
    _check_columns(table, "tuned_lr", ["arm", "lr", "mean", "complete"])
    out: dict[str, float | None] = {}
    for arm, rows in table.groupby("arm", sort=False):
        if not rows["complete"].all():
            out[arm] = None
            continue
        best = rows["mean"].min() if lower_is_better else rows["mean"].max()
        tied = sorted(float(v) for v in rows.loc[rows["mean"] == best, "lr"])
        out[arm] = DEFAULT_LR if any(np.isclose(v, DEFAULT_LR) for v in tied) else tied[0]
    return out


@dataclass(frozen=True)
class TunedRanking:
    """:func:`tuned_ranking`'s result: ``table`` (one row per arm: ``default`` mean, ``default_rank``, ``tuned_lr``,
    ``tuned`` mean, ``tuned_rank``) and ``same_order`` (None while an arm has no tuned rate)."""

    table: pd.DataFrame
    same_order: bool | None


def tuned_ranking(table: pd.DataFrame, lower_is_better: bool = True) -> TunedRanking:
    """The order of the arms at their tuned rates (:func:`tuned_lr`) against their order at the default rate, from a
    :func:`tuning_table` (ranks: 1 the best, ties share the lower rank)."""
    best = tuned_lr(table, lower_is_better)
    rows = []
    for arm, lr in best.items():
        cells = table[table["arm"] == arm].set_index("lr")["mean"]
        default = cells[[v for v in cells.index if np.isclose(v, DEFAULT_LR)]].iloc[0]
        rows.append({"arm": arm, "default": default, "tuned_lr": lr,
                     "tuned": cells[[v for v in cells.index if np.isclose(v, lr)]].iloc[0] if lr is not None
                     else np.nan})
    out = pd.DataFrame(rows, columns=["arm", "default", "tuned_lr", "tuned"]).set_index("arm")
    out["tuned_lr"] = _objects([r["tuned_lr"] for r in rows], index=out.index)
    for col in ("default", "tuned"):
        out[f"{col}_rank"] = out[col].rank(ascending=lower_is_better, method="min")
    done = bool(len(out)) and all(v is not None for v in best.values()) and out["default"].notna().all()
    same = bool((out["default_rank"] == out["tuned_rank"]).all()) if done else None
    return TunedRanking(out[["default", "default_rank", "tuned_lr", "tuned", "tuned_rank"]], same)


_AXIS_LABELS = {"kid": "KID", "kid_norm": "normalised KID", "memorization": "memorization score"}


def plot_by_step(scores: pd.DataFrame, metrics: Sequence[str] = ("kid", "memorization"),
                 arms: Sequence[str] = CONVERGENCE_ARMS, threshold: float = MEMORIZATION_THRESHOLD,
                 reference_step: int | None = None, dpi: int = 80):
    """One panel per metric against the scored step: a line per arm through the seed means, each seed a marker;
    the memorization panel draws ``threshold``, and every panel the ``reference_step``. Returns the figure
    (ValueError for an empty frame: there is nothing to draw)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    if not len(scores):
        raise ValueError("plot_by_step: no scores to plot")
    for metric in metrics:
        _check_metric(scores, metric)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), dpi=dpi, squeeze=False)
    markers = dict(zip(sorted(set(scores["seed"])), "osD^v<>", strict=False))
    steps = sorted({int(s) for s in scores["step"]})
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, arm in enumerate(arms):
            frame = scores[scores["arm"] == arm]
            color = f"C{i}"
            mean = frame.groupby("step")[metric].mean()
            ax.plot(mean.index, mean.to_numpy(), color=color, lw=1.5, label=arm)
            for seed, runs in frame.groupby("seed"):
                ax.plot(runs["step"], runs[metric], ls="none", marker=markers.get(seed, "o"), ms=5, color=color,
                        alpha=0.7)
        if metric == "memorization":
            ax.axhline(threshold, color="k", ls="--", lw=0.8)
        if reference_step is not None:
            ax.axvline(reference_step, color="0.5", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("optimiser step (log scale)", fontsize=8)
        ax.set_ylabel(_AXIS_LABELS.get(metric, metric), fontsize=8)
    handles, _ = axes[0][0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="0.3", ls="none", marker=m, label=f"seed {s}") for s, m in markers.items()]
    if reference_step is not None:
        handles.append(plt.Line2D([], [], color="0.5", ls=":", lw=0.8, label=f"reference step ({reference_step})"))
    if "memorization" in metrics:
        handles.append(plt.Line2D([], [], color="k", ls="--", lw=0.8, label=f"copying threshold ({threshold:g})"))
    fig.legend(handles=handles, fontsize=8, loc="upper center", ncol=min(len(handles), 4), bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    return fig
