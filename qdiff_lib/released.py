"""Stage 5 of the study (issue 20): the paper's model as released, read by rules fixed before the data exist.

The grid ``released16`` (:mod:`qdiff_lib.grids`, :data:`~qdiff_lib.grids.RELEASED16_ARMS`) trains two arms at the
paper's width on every digit with one seed: ``quantum_paper_released``, the paper's circuit with the gate's squeeze
frozen at its initialisation, as the released code effectively trained it (its layer detached its input, and the
RZ + CNOT circuit measured in Z has no weight gradient), and ``se_frozen``, the tanh gate with the same squeeze
frozen. Their twins with a trained squeeze, ``quantum_paper`` and ``se``, are ``mnist16``'s runs of the same digit
and seed (:data:`TWIN_OF`); :func:`twin_options` builds each twin from a ``released16`` run by changing only the
options that define an arm (:data:`ARM_FIELDS`), and :func:`check_twins` checks that ``mnist16``'s grid holds them.

The reading (pre-registered: written before any ``released16`` run existed) is :func:`comparison_table` on the
runs of :func:`load_runs`: the three paired differences :data:`COMPARISONS`, KID of ``a`` minus KID of ``b``,
paired over the digits at the one seed, through :func:`qdiff_lib.verdicts.compare_arms`, with the Student-t
interval, Holm's correction over the three, and the count of digits on which ``a`` is lower. A comparison *shows a
direction* when its interval lies wholly on one side of 0; the reading says when that holds before Holm's
correction only.

What no comparison here can show: with one seed per digit, every pair is one training run per arm, so the interval
is over digits only; the seed-to-seed spread of a digit and the digit's own effect are not separated, and the
result speaks for these (digit, seed 0) runs, not for a digit's seed average. Nothing here bears on the paper's
unmatched classical baseline (the arm ``none``), which the first edition compares.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from qdiff_lib._checks import check_choice, counted
from qdiff_lib.experiment import RunOptions
from qdiff_lib.grids import ARMS, PROFILES, arm_of, run_key, study_runs
from qdiff_lib.metrics import add_normalised_kid
from qdiff_lib.stats import holm_adjust
from qdiff_lib.study import flatten_summary, results_dir
from qdiff_lib.verdicts import compare_arms

__all__ = ["STUDY", "TWIN_STUDY", "TWIN_OF", "ARM_FIELDS", "COMPARISONS", "QUESTIONS", "PAIR_ON", "TABLE_COLUMNS",
           "design", "twin_options", "check_twins", "load_runs", "differences", "comparison_table",
           "plot_differences"]

STUDY = "released16"
#: The study whose runs of the same digit and seed are the trained-squeeze twins of ``released16``'s.
TWIN_STUDY = "mnist16"
#: Each released arm -> its twin in :data:`TWIN_STUDY`: the same gate with its squeeze trained.
TWIN_OF = {"se_frozen": "se", "quantum_paper_released": "quantum_paper"}
#: The run options that define an arm (every key of :data:`qdiff_lib.grids.ARMS`'s specs); a run and its twin may
#: differ in these and in nothing else.
ARM_FIELDS = tuple(sorted({k for spec in ARMS.values() for k in spec}))
#: The pre-registered paired differences ``a - b`` (lower KID is better).
COMPARISONS = (("quantum_paper_released", "se_frozen"), ("quantum_paper", "quantum_paper_released"),
               ("se", "se_frozen"))
#: What each comparison asks, and what it cannot show.
QUESTIONS = {
    "quantum_paper_released - se_frozen": "the released model against its classical twin: both squeezes frozen at "
    "the same initialisation, so the two differ only in the fixed middle (the paper's circuit, whose weights get no "
    "gradient, or tanh); it says nothing of a trained circuit",
    "quantum_paper - quantum_paper_released": "does training the squeeze matter for the paper's circuit? The circuit's "
    "weights train in neither arm, so only the squeeze differs",
    "se - se_frozen": "does training the squeeze matter for the tanh gate? The same question for the classical twin",
}
#: Runs pair when they share these columns (one seed: the pairs are the digits).
PAIR_ON = ("label", "seed")
#: The columns of :func:`comparison_table`.
TABLE_COLUMNS = ["comparison", "question", "n", "planned", "mean_diff", "ci_low", "ci_high", "t_p", "holm_p",
                 "n_a_lower", "n_ties", "a_lower", "reading"]


def design(profile_name: str = "full") -> dict[str, Any]:
    """The stage's design as the grids build it for ``profile_name``: ``arms`` (``released16``'s), ``twin_arms``
    (their twins in ``mnist16``), ``digits``, ``seeds``, ``n_qubits``, ``steps``, ``n_train``, ``n_samples``,
    ``n_ref``, ``sample_steps`` (each one value: the grid's runs share it), ``n_runs`` (planned ``released16`` runs)
    and ``n_pairs`` (planned pairs per comparison: one per digit and seed)."""
    check_choice("profile", profile_name, PROFILES)
    runs = study_runs(STUDY, profile_name)

    def one(name: str):
        values = {getattr(o, name) for o in runs}
        if len(values) != 1:  # a guard on the grid itself: the design below assumes one budget
            raise ValueError(f"released16 grid: option {name} takes several values {sorted(values)}")
        return values.pop()

    arms = tuple(dict.fromkeys(arm_of(o) for o in runs))
    return {"arms": arms, "twin_arms": tuple(TWIN_OF[a] for a in arms),
            "digits": tuple(sorted({o.label for o in runs})), "seeds": tuple(sorted({o.seed for o in runs})),
            **{k: one(k) for k in ("n_qubits", "steps", "n_train", "n_samples", "n_ref", "sample_steps")},
            "n_runs": len(runs), "n_pairs": len({(o.label, o.seed) for o in runs})}


def twin_options(options: RunOptions) -> RunOptions:
    """The options of the ``mnist16`` twin of a ``released16`` run: every option the same except those that define
    the arm (:data:`ARM_FIELDS`), which become those of :data:`TWIN_OF`'s arm. ValueError for a run of another arm."""
    arm = arm_of(options)
    check_choice("released arm", arm, TWIN_OF)
    defaults = RunOptions()
    arm_values = {k: getattr(defaults, k) for k in ARM_FIELDS}
    return dataclasses.replace(options, **{**arm_values, **ARMS[TWIN_OF[arm]]})


def check_twins(profile_name: str = "full") -> dict[str, str]:
    """``{released16 run key: its twin's run key}`` for every planned run, after checking that ``mnist16``'s grid
    under ``profile_name`` plans every twin. A run key hashes every option (:func:`qdiff_lib.grids.run_key`), so a
    twin key found in the grid means a run with the same data, seed, width, budgets and sampler, differing only in
    :data:`ARM_FIELDS`. ValueError naming the twins the grid lacks."""
    check_choice("profile", profile_name, PROFILES)
    planned = {run_key(o) for o in study_runs(TWIN_STUDY, profile_name)}
    out = {run_key(o): run_key(twin_options(o)) for o in study_runs(STUDY, profile_name)}
    missing = sorted(k for k in out.values() if k not in planned)
    if missing:
        raise ValueError(f"check_twins: {TWIN_STUDY} ({profile_name}) plans no run {missing}")
    return out


def _read(folder, keys: set[str], study: str, *, strict: bool) -> list[dict[str, Any]]:
    """Rows (:func:`qdiff_lib.study.flatten_summary`) of the summaries in ``folder`` named by ``keys``, each checked
    to hold the options its name says; ``strict``: a summary named otherwise is an error (else it is skipped)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        if path.stem not in keys:
            if strict:
                raise ValueError(f"load_runs: {path.name} is not a planned {study} run; allowed: {sorted(keys)}")
            continue
        summary = json.loads(path.read_text())
        try:
            options = RunOptions(**summary["options"])  # options added later take their defaults
        except TypeError as error:
            raise ValueError(f"load_runs: {path.name}: options that RunOptions does not know ({error})") from None
        if run_key(options) != path.stem:
            raise ValueError(f"load_runs: {path.name} holds the options of run {run_key(options)}; allowed: "
                             f"{path.stem}")
        design = {k: v for k, v in dataclasses.asdict(options).items() if k not in ARM_FIELDS}
        rows.append({"key": path.stem, "study": study, **flatten_summary(summary),
                     "metrics_version": summary.get("metrics_version"),
                     "design": json.dumps(design, sort_keys=True, default=str)})
    return rows


def load_runs(profile_name: str = "full", root: str | os.PathLike | None = None, *, normalise: bool = True,
              calibration_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every committed ``released16`` run and the ``mnist16`` runs it pairs with: one row per run.

    Columns: ``key``, ``study``, the run's options and metrics as :func:`qdiff_lib.study.load_results` flattens them
    (``arm``, ``label``, ``seed``, ``kid``, ``kid_se``...), ``metrics_version``, ``design`` (the options besides
    :data:`ARM_FIELDS`, as JSON) and, with ``normalise``, ``kid_norm`` (:func:`qdiff_lib.metrics.add_normalised_kid`,
    calibration under ``calibration_root``).

    How the match is checked: the twins are the keys :func:`check_twins` builds (only the arm's options changed);
    every summary read must hold the options its file name (a hash of every option) says; and the runs of a digit
    and seed must share ``design`` and ``metrics_version`` across both studies (the twins were trained earlier, under
    ``mnist16``: a rescoring of one study only would pair scores of different code). A file in ``released16`` that
    the grid does not plan, or a mismatch, is a ValueError. No runs: an empty frame with the columns above.
    """
    twins = check_twins(profile_name)
    rows = (_read(results_dir(profile_name, STUDY, root), set(twins), STUDY, strict=True)
            + _read(results_dir(profile_name, TWIN_STUDY, root), set(twins.values()), TWIN_STUDY, strict=False))
    columns = ["key", "study", "arm", "label", "seed", "n_qubits", "steps", "n_samples", "kid", "kid_se",
               "metrics_version", "design"]
    if not rows:
        return pd.DataFrame(columns=columns + (["kid_norm"] if normalise else []))
    frame = pd.DataFrame(rows)
    for (label, seed), group in frame.groupby(["label", "seed"]):
        if group["design"].nunique() > 1:
            raise ValueError(f"load_runs: the runs of digit {label}, seed {seed} differ in more than the arm: "
                             f"{dict(zip(group['key'], group['design'], strict=True))}")
        if group["metrics_version"].astype(str).nunique() > 1:
            raise ValueError(f"load_runs: the runs of digit {label}, seed {seed} were scored by different metrics "
                             f"versions {dict(zip(group['key'], group['metrics_version'], strict=True))}; allowed: one")
    if normalise:
        frame = add_normalised_kid(frame, root=calibration_root)
    return frame.sort_values(["label", "seed", "study", "arm"], kind="stable").reset_index(drop=True)


def _check(frame: pd.DataFrame, metric: str, comparisons: Sequence[tuple[str, str]]) -> None:
    missing = [c for c in ("arm", *PAIR_ON, metric) if c not in frame.columns]
    if missing:
        raise ValueError(f"no column(s) {missing}; allowed: {list(frame.columns)}")
    for a, b in comparisons:
        check_choice("arm", a, ARMS)
        check_choice("arm", b, ARMS)
    seeds = sorted(set(frame["seed"]))
    if len(seeds) > 1:
        raise ValueError(f"the reading pairs over digits at one seed; got seeds {seeds}, allowed: one seed")


def differences(frame: pd.DataFrame, metric: str = "kid",
                comparisons: Sequence[tuple[str, str]] = COMPARISONS) -> pd.DataFrame:
    """The per-digit differences ``a - b`` of ``metric`` (one row per comparison and digit that has both arms):
    ``comparison``, ``label``, ``seed``, ``a``, ``b`` (the two values) and ``difference``. ``frame``: one row per run
    of one seed (:func:`load_runs`); ValueError for several seeds, an unknown arm or a missing column."""
    _check(frame, metric, comparisons)
    out = []
    for a, b in comparisons:
        wide = frame[frame["arm"].isin([a, b])].pivot_table(index=list(PAIR_ON), columns="arm", values=metric)
        if not {a, b} <= set(wide.columns):
            continue
        both = wide[[a, b]].dropna()
        out += [{"comparison": f"{a} - {b}", "label": int(label), "seed": int(seed), "a": float(r[a]),
                 "b": float(r[b]), "difference": float(r[a] - r[b])} for (label, seed), r in both.iterrows()]
    return pd.DataFrame(out, columns=["comparison", "label", "seed", "a", "b", "difference"])


def _reading(row: dict[str, Any], alpha: float) -> str:
    """The pre-registered words of one row of :func:`comparison_table`."""
    if row["n"] < 2:
        return f"pending ({row['n']} of {counted(row['planned'], 'pair')})" if row["planned"] else \
            f"pending ({counted(row['n'], 'pair')})"
    a, b = row["comparison"].split(" - ")
    if row["ci_high"] < 0 or row["ci_low"] > 0:
        side = "lower" if row["ci_high"] < 0 else "higher"
        only = "" if row["holm_p"] < alpha else ", before Holm's correction only"
        return f"{a} {side} than {b} (interval {'below' if side == 'lower' else 'above'} 0{only})"
    return "no direction shown (interval contains 0)"


def comparison_table(frame: pd.DataFrame, metric: str = "kid", comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                     *, planned: int | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """The pre-registered reading: one row per comparison ``(a, b)`` of ``frame`` (:func:`load_runs`; one seed).

    Columns (:data:`TABLE_COLUMNS`): ``comparison`` (``"a - b"``), ``question`` (:data:`QUESTIONS`), ``n`` (pairs:
    digits with both arms), ``planned`` (pairs the complete grid gives, :func:`design`'s ``n_pairs``; None: not
    given), ``mean_diff``, ``ci_low``/``ci_high`` (the (1 - alpha) Student-t interval over the digits, by
    :func:`qdiff_lib.verdicts.compare_arms`; NaN below two pairs), ``t_p``, ``holm_p`` (Holm's correction over the
    rows that have a p-value), ``n_a_lower`` and ``n_ties`` (digits on which ``a`` is lower, equal), ``a_lower``
    (``"k of n digits"``) and ``reading`` (a direction when the interval excludes 0, saying when only before the
    correction; ``no direction shown`` otherwise; ``pending`` below two pairs). An interval containing 0 is not
    evidence of no difference: it rules out only the differences outside it.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"comparison_table: alpha must lie in (0, 1), got {alpha!r}")
    if planned is not None and (isinstance(planned, bool) or int(planned) != planned or planned < 0):
        raise ValueError(f"comparison_table: planned must be a count >= 0 or None, got {planned!r}")
    _check(frame, metric, comparisons)
    diffs = differences(frame, metric, comparisons)
    rows = []
    for a, b in comparisons:
        name = f"{a} - {b}"
        c = compare_arms(frame, a, b, metric, PAIR_ON, alpha=alpha, n_boot=999)
        d = diffs.loc[diffs["comparison"] == name, "difference"].to_numpy()
        n_lower, n_ties = int((d < 0).sum()), int((d == 0).sum())
        rows.append({"comparison": name, "question": QUESTIONS.get(name, ""), "n": c["n"], "planned": planned,
                     "mean_diff": float(d.mean()) if d.size else math.nan, "ci_low": c["ci_low"],
                     "ci_high": c["ci_high"], "t_p": c["t_pvalue"], "n_a_lower": n_lower, "n_ties": n_ties,
                     "a_lower": f"{n_lower} of {counted(c['n'], 'digit')}"})
    # Holm over the whole pre-registered family: a comparison not yet tested counts with p = 1 (conservative), so
    # the family is never smaller than planned while the grid fills in
    holm = holm_adjust([r["t_p"] if np.isfinite(r["t_p"]) else 1.0 for r in rows]) if rows else np.array([])
    for row, p in zip(rows, holm, strict=True):
        row["holm_p"] = float(p) if np.isfinite(row["t_p"]) else math.nan
        row["reading"] = _reading(row, alpha)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


_AXIS_LABELS = {"kid": "KID", "kid_norm": "normalised KID"}


def plot_differences(frame: pd.DataFrame, metric: str = "kid", comparisons: Sequence[tuple[str, str]] = COMPARISONS,
                     dpi: int = 80):
    """Each comparison's per-digit difference against the digit (one marker colour per comparison, slightly offset
    so that they do not hide each other), with 0 dashed. Returns the figure; ValueError when no digit has a pair
    (nothing to draw)."""
    import matplotlib.pyplot as plt

    diffs = differences(frame, metric, comparisons)
    if not len(diffs):
        raise ValueError("plot_differences: no pair to plot")
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=dpi)
    names = [f"{a} - {b}" for a, b in comparisons]
    offsets = np.linspace(-0.2, 0.2, len(names)) if len(names) > 1 else [0.0]
    for i, (name, dx) in enumerate(zip(names, offsets, strict=True)):
        part = diffs[diffs["comparison"] == name]
        if len(part):
            ax.plot(part["label"] + dx, part["difference"], ls="none", marker="osD^v"[i % 5], ms=5, color=f"C{i}",
                    label=f"{name} (mean {part['difference'].mean():.3g})")
    ax.axhline(0, color="k", ls="--", lw=0.8)
    labels = sorted(set(diffs["label"]))
    ax.set_xticks(labels, [str(v) for v in labels], fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("digit", fontsize=8)
    ax.set_ylabel(f"{_AXIS_LABELS.get(metric, metric)} difference (a - b)", fontsize=8)
    fig.legend(fontsize=8, loc="upper center", ncol=1, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.97 - 0.06 * len(names)))  # room for the legend above
    return fig
