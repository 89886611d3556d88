"""What the circuit's gain is made of: the arms' sizes, the steps from the tanh gate to the trained circuit, and how
each comparison moves from 8 to 16 qubits.

* :data:`ARM_MIDDLES` says in one line what each arm puts in the middle of its gate, and :func:`parameter_table`
  counts each arm's parameters (total, trainable, the gate's and its middle's own) by building its model.
* :data:`DECOMPOSITION` is the list of paired steps of the ``mnist16`` study, each changing one ingredient of the
  gate's middle (tanh to cos, adding a fixed entangled circuit, trainable rotations without entanglement, the
  entangler, training the circuit's weights, the classical surrogate against the circuit), fixed here before the
  data are read; :func:`decompose` computes them on whatever runs exist and says, step by step, how many of the
  planned pairs it rests on (``pending`` with too few).
* :func:`width_check` sets a comparison at two circuit widths side by side, over the digits that exist at both;
  :func:`borrow_arms` lends a width-free arm (``none``, which has no gate) from one study to another.

The pairing and the intervals are those of :func:`qdiff_lib.paired_tables.comparison_table` and
:func:`qdiff_lib.verdicts.compare_arms`; nothing here computes a statistic of its own. Tested in
``tests/test_decomposition.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qdiff_lib.grids import ARMS, STUDIES, arm_of, arm_options, study_runs
from qdiff_lib.paired_tables import comparison_table, direction
from qdiff_lib.stats import format_interval, holm_adjust
from qdiff_lib.verdicts import compare_arms, compare_group_means

__all__ = ["ARM_MIDDLES", "WIDTH_FREE_ARMS", "MNIST_V1_COMPARISONS", "WIDTH_CHECK_COMPARISONS", "Step",
           "DECOMPOSITION", "TOTAL_STEP", "study_arms", "parameter_table", "planned_runs", "decompose",
           "width_check", "borrow_arms"]

#: What each arm puts in the middle of its gate (between the squeeze to ``n_qubits`` features and the map back to the
#: bottleneck's channel gains), one line each; every arm of :data:`qdiff_lib.grids.ARMS` has one.
ARM_MIDDLES: dict[str, str] = {
    "none": "no gate at all: the bottleneck passes unchanged (the official classical baseline, unmatched)",
    "se": "tanh of each squeezed feature, no parameters (the matched classical control)",
    "se_frozen": "tanh, with the squeeze frozen at initialisation (what the released quantum arm trained)",
    "quantum_paper": "the paper's circuit: RY encoding, then per layer RZ weights and a CNOT chain, <Z> read out; its "
                     "weights get no gradient, so it is a fixed product of cosines",
    "quantum_rzry": "the authors' later circuit: RY encoding, then per layer trainable RZ and RY and a CNOT chain, <Z>",
    "se_cos": "cos of each squeezed feature, no parameters (the circuit with neither entangler nor weights)",
    "quantum_rzry_frozen": "the rzry circuit with its weights frozen at their initial values (entangled, untrained)",
    "quantum_rzry_separable": "the rzry circuit without its CNOT chains: one trainable single-qubit circuit per "
                              "feature (no entanglement)",
    "quantum_paper_released": "the paper's circuit with the squeeze frozen, as its released code trained it",
    "fourier": "a classical trainable trigonometric polynomial over the circuit's frequencies, with as many weights "
               "as the circuit (qdiff_lib.surrogate)",
}

#: Arms without a gate, whose runs do not depend on the circuit width: a 16-qubit study pairs with their 8-qubit runs.
WIDTH_FREE_ARMS = ("none",)

#: The comparisons ``(a, b)`` (``a - b``) of the first MNIST study: the matched test of the circuit, the paper's
#: circuit against the same control, training the circuit (gates and training changed at once), the paper's own
#: comparison, the classical gate alone, and what freezing the squeeze does.
MNIST_V1_COMPARISONS = (("quantum_rzry", "se"), ("quantum_paper", "se"), ("quantum_rzry", "quantum_paper"),
                        ("quantum_paper", "none"), ("se", "none"), ("se_frozen", "se"))

#: The comparisons the 8- and 16-qubit MNIST studies both hold (``none`` lent by :func:`borrow_arms`).
WIDTH_CHECK_COMPARISONS = MNIST_V1_COMPARISONS[:5]


@dataclass(frozen=True)
class Step:
    """A step from arm ``start`` to arm ``end``, changing what ``change`` says; its effect is ``end - start``."""

    start: str
    end: str
    change: str

    def __str__(self) -> str:
        return f"{self.end} - {self.start}"


#: The decomposition of the ``mnist16`` study (issue 17), fixed before its data were read: starting from the tanh
#: gate, each step changes one ingredient of the middle (the two from ``se_cos`` branch: a fixed entangled circuit,
#: or trainable rotations without entanglement). The steps do not add up to the total, since they branch.
DECOMPOSITION: tuple[Step, ...] = (
    Step("se", "se_cos", "tanh becomes cos (the circuit's one-qubit function, no entangler, no weights)"),
    Step("se_cos", "quantum_paper", "cos becomes the paper's fixed entangled circuit (a product of cosines)"),
    Step("se_cos", "quantum_rzry_separable", "cos becomes trainable single-qubit rotations (no entanglement)"),
    Step("quantum_rzry_separable", "quantum_rzry", "entanglement added to the trainable rotations (the CNOT chains)"),
    Step("quantum_rzry_frozen", "quantum_rzry", "the circuit's weights trained instead of frozen at initialisation"),
    Step("fourier", "quantum_rzry", "the classical surrogate replaced by the circuit it imitates"),
)
#: The whole way, for reference: the tanh gate replaced by the trained circuit.
TOTAL_STEP = Step("se", "quantum_rzry", "the whole way: tanh replaced by the trained circuit")


def study_arms(dataset: str = "mnist", profile_name: str = "ci") -> dict[str, tuple[str, ...]]:
    """``{arm: studies}``: every arm that a study of :data:`qdiff_lib.grids.STUDIES` runs on ``dataset``, in the order
    of :data:`qdiff_lib.grids.ARMS`, with the studies that run it. The arms of a grid do not depend on the profile,
    and the ``ci`` profile builds its grids without loading data."""
    found: dict[str, list[str]] = {}
    for study in STUDIES:
        for arm in dict.fromkeys(arm_of(o) for o in study_runs(study, profile_name) if o.dataset == dataset):
            found.setdefault(arm, []).append(study)
    return {arm: tuple(found[arm]) for arm in ARMS if arm in found}


def parameter_table(arms: Iterable[str], widths: Iterable[int], *, in_channels: int = 1, **overrides) -> pd.DataFrame:
    """Each arm's parameter counts at each circuit width, from its model built as a run builds it.

    One row per (arm, width): ``arm``, ``n_qubits``, ``total`` and ``trainable`` (the whole U-Net), ``gate`` and
    ``gate trainable`` (the squeeze-excitation gate around the bottleneck: squeeze, middle and up; 0 for ``none``),
    ``middle`` and ``middle trainable`` (the middle alone: the circuit's or the surrogate's weights), ``gate share
    (%)`` (the gate's share of the total). ``overrides``: further options of :func:`qdiff_lib.grids.arm_options`
    (e.g. ``n_layers``).
    """
    from qdiff_lib.unet import UNet, count_parameters

    rows = []
    for arm in arms:
        for width in widths:
            model = UNet(**arm_options(arm, n_qubits=int(width), **overrides).model_kwargs(in_channels))
            gate = model.bottleneck_gate
            middle = gate.middle if gate is not None else None
            row = {"arm": arm, "n_qubits": int(width), "total": count_parameters(model),
                   "trainable": count_parameters(model, trainable_only=True)}
            for name, part in (("gate", gate), ("middle", middle)):
                row[name] = count_parameters(part) if part is not None else 0
                row[f"{name} trainable"] = count_parameters(part, trainable_only=True) if part is not None else 0
            row["gate share (%)"] = 100.0 * row["gate"] / row["total"]
            rows.append(row)
    columns = ["arm", "n_qubits", "total", "trainable", "gate", "gate trainable", "middle", "middle trainable",
               "gate share (%)"]
    return pd.DataFrame(rows, columns=columns)


def planned_runs(study: str, profile_name: str = "full") -> pd.DataFrame:
    """The runs of a study's grid as a table (``arm``, ``label``, ``seed``, ``n_train``, ``n_qubits``), to count the
    pairs a comparison will have once the grid is complete."""
    return pd.DataFrame([{"arm": arm_of(o), "label": o.label, "seed": o.seed, "n_train": o.n_train,
                          "n_qubits": o.n_qubits} for o in study_runs(study, profile_name)])


def _pair_keys(frame: pd.DataFrame | None, a: str, b: str, keys: list[str], factor: str,
               metric: str | None = None) -> set[tuple]:
    """The keys (tuples of ``keys``) present under both arms of ``frame``, with ``metric`` known when it is given (a
    plan has no metric)."""
    if frame is None or not len(frame) or not {factor, *keys} <= set(frame.columns):
        return set()
    if metric is not None:
        if metric not in frame.columns:
            return set()
        frame = frame[frame[metric].notna()]
    sides = [set(map(tuple, frame.loc[frame[factor] == arm, keys].to_numpy().tolist())) for arm in (a, b)]
    return sides[0] & sides[1]


def decompose(
    frame: pd.DataFrame,
    steps: Sequence[Step] = (*DECOMPOSITION, TOTAL_STEP),
    metric: str = "kid",
    pair_on: str | Sequence[str] = ("label", "seed"),
    *,
    planned: pd.DataFrame | None = None,
    group: str = "label",
    factor: str = "arm",
    min_pairs: int = 2,
    alpha: float = 0.05,
    n_boot: int = 2000,
) -> pd.DataFrame:
    """Every step of ``steps`` as a paired comparison ``end - start`` of ``metric`` over the runs of ``frame``.

    The statistics are :func:`qdiff_lib.paired_tables.comparison_table`'s (pairs on ``pair_on``; Holm's correction
    over the steps that have an interval), plus the same comparison over the means of each ``group`` (e.g. the ten
    digit means; :func:`qdiff_lib.verdicts.compare_group_means`). ``planned``: the study's grid
    (:func:`planned_runs`), to say how many pairs each step will have. A step with fewer than ``min_pairs`` pairs
    (at least 2: a t interval needs them) has no statistics and reads ``pending``; one with fewer than its planned
    pairs is ``provisional``.

    One row per step, indexed by ``"end - start"``; columns ``from``, ``to``, ``change``, ``pairs``, ``planned``
    (NaN without ``planned``), ``groups`` (distinct values of ``group`` among the pairs), ``mean diff``, ``ci_low``,
    ``ci_high``, ``95% CI`` (text), ``t p``, ``Holm p``, ``lower after`` ("k of n" pairs in which ``end`` scores
    lower), ``group means`` (text), ``direction`` (:func:`qdiff_lib.paired_tables.direction`, lower is better) and
    ``status`` (``complete``, ``provisional: n of N planned pairs``, ``pending: not enough pairs (...)``, or without
    ``planned`` ``tested (no plan given)``).
    """
    keys = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    if group not in keys:
        raise ValueError(f"decompose: group {group!r} must be a pairing key; allowed: {keys}")
    if min_pairs < 2:
        raise ValueError(f"decompose: min_pairs must be at least 2 (a t interval needs 2 pairs), got {min_pairs}")
    names = [str(s) for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"decompose: a step is listed twice: {names}")
    table = comparison_table(frame, [(s.end, s.start) for s in steps], metric, keys, factor=factor, count=group,
                             alpha=alpha, n_boot=n_boot) if len(frame) else pd.DataFrame()
    rows = []
    for step, name in zip(steps, names, strict=True):
        r = table.loc[name] if name in table.index else None
        n = int(r["pairs"]) if r is not None else 0
        plan = len(_pair_keys(planned, step.end, step.start, keys, factor)) if planned is not None else np.nan
        row = {"step": name, "from": step.start, "to": step.end, "change": step.change, "pairs": n, "planned": plan,
               "groups": int(r[f"{group}s"]) if r is not None else 0}
        tested = n >= min_pairs
        for col in ("mean diff", "ci_low", "ci_high", "t p", "Holm p"):
            row[col] = float(r[col]) if tested else np.nan
        row["95% CI"] = r["95% CI"] if tested else ""
        row["lower after"] = r["proposed lower"] if tested else ""
        row["group means"] = ""
        if tested:
            g = compare_group_means(frame, step.end, step.start, metric, group, keys, factor=factor, alpha=alpha,
                                    n_boot=n_boot)
            if g["n"] >= 2:
                row["group means"] = f"{format_interval(g['mean_diff'], g['ci_low'], g['ci_high'])}, {g['n']} means"
            row["direction"] = direction(r)
        else:
            row["direction"] = ""
        if not tested:
            of = f" of {plan} planned" if planned is not None else ""
            row["status"] = f"pending: not enough pairs ({n}{of}; an interval needs {min_pairs})"
        elif planned is None:
            row["status"] = "tested (no plan given)"
        elif n < plan:
            row["status"] = f"provisional: {n} of {plan} planned pairs"
        else:
            row["status"] = "complete"
        rows.append(row)
    columns = ["step", "from", "to", "change", "pairs", "planned", "groups", "mean diff", "ci_low", "ci_high",
               "95% CI", "t p", "Holm p", "lower after", "group means", "direction", "status"]
    out = pd.DataFrame(rows, columns=columns).set_index("step")
    if len(out):  # Holm over the steps shown with an interval only (a pending step is no test)
        out["Holm p"] = holm_adjust(out["t p"].to_numpy(dtype=float))
    return out


#: Columns on which a lent run must agree with the runs of the study it is lent to (:func:`borrow_arms`).
BORROW_SAME = ("dataset", "n_train", "steps", "n_samples", "n_ref", "schedule", "noise")


def borrow_arms(target: pd.DataFrame, source: pd.DataFrame, arms: Sequence[str] = WIDTH_FREE_ARMS, *,
                factor: str = "arm", same: Sequence[str] = BORROW_SAME) -> pd.DataFrame:
    """``target`` with the runs of ``arms`` taken from ``source``, for arms whose runs do not depend on what differs
    between the two studies (``none`` has no gate, so no circuit width). Only runs of ``source`` whose columns
    ``same`` (those present in both) take values that ``target``'s runs have are lent, and an arm ``target`` already
    has is never replaced. The lent rows keep their own columns (e.g. ``n_qubits``) and gain ``borrowed`` True."""
    lend = [a for a in arms if a not in set(target.get(factor, ()))]
    if not len(source) or not lend:
        return target.assign(borrowed=False) if len(target) else target
    rows = source[source[factor].isin(lend)]
    shared = [c for c in same if c in target.columns and c in source.columns]
    if shared and len(target):
        allowed = set(map(tuple, target[shared].to_numpy().tolist()))
        rows = rows[[tuple(v) in allowed for v in rows[shared].to_numpy().tolist()]]
    elif not len(target):
        rows = rows.iloc[:0]
    return pd.concat([target.assign(borrowed=False), rows.assign(borrowed=True)], ignore_index=True)


def width_check(
    frames: Mapping[int, pd.DataFrame],
    comparisons: Sequence[tuple[str, str]] = WIDTH_CHECK_COMPARISONS,
    metric: str = "kid",
    pair_on: str | Sequence[str] = ("label", "seed"),
    *,
    common: str = "label",
    factor: str = "arm",
    alpha: float = 0.05,
    n_boot: int = 2000,
) -> pd.DataFrame:
    """Each comparison ``a - b`` at every width of ``frames`` (``{n_qubits: results}``), side by side, over the values
    of ``common`` (the digits) at which it has pairs at every width.

    One row per comparison, indexed by ``"a - b"``: ``digits`` (how many values of ``common`` are shared), and per
    width ``w``: ``pairs w``, ``mean w``, ``ci_low w``, ``ci_high w`` and ``w qubits`` (the interval as text, or
    "not enough pairs"); ``shift`` (the mean at the last width minus the mean at the first, NaN unless both have an
    interval).
    """
    keys = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    if common not in keys:
        raise ValueError(f"width_check: common {common!r} must be a pairing key; allowed: {keys}")
    widths = sorted(frames)
    if len(widths) < 2:
        raise ValueError(f"width_check: needs at least two widths, got {widths}")
    rows = []
    for a, b in comparisons:
        shared = None
        for w in widths:
            f = frames[w]
            if not len(f) or not {a, b} <= set(f[factor]):
                shared = set()
                break
            present = {k[keys.index(common)] for k in _pair_keys(f, a, b, keys, factor, metric)}
            shared = present if shared is None else shared & present
        row = {"comparison": f"{a} - {b}", common + "s": len(shared)}
        means = {}
        for w in widths:
            f = frames[w]
            sub = f[f[common].isin(shared)] if shared else f.iloc[:0]
            c = compare_arms(sub, a, b, metric, keys, factor=factor, alpha=alpha, n_boot=n_boot) if len(sub) else \
                {"n": 0, "mean_diff": np.nan, "ci_low": np.nan, "ci_high": np.nan}
            tested = c["n"] >= 2
            row.update({f"pairs {w}": c["n"], f"mean {w}": c["mean_diff"] if tested else np.nan,
                        f"ci_low {w}": c["ci_low"] if tested else np.nan,
                        f"ci_high {w}": c["ci_high"] if tested else np.nan,
                        f"{w} qubits": format_interval(c["mean_diff"], c["ci_low"], c["ci_high"]) if tested
                        else "not enough pairs"})
            means[w] = row[f"mean {w}"]
        row["shift"] = means[widths[-1]] - means[widths[0]]
        rows.append(row)
    columns = ["comparison", common + "s"] + [f"{k} {w}" for w in widths for k in ("pairs", "mean", "ci_low",
                                                                                    "ci_high")]
    columns += [f"{w} qubits" for w in widths] + ["shift"]
    return pd.DataFrame(rows, columns=columns).set_index("comparison")
