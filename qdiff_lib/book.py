"""Helpers of the book's chapters (nothing here computes a result).

:func:`glue` is myst-nb's ``glue`` with one change: a float is stored rounded to :data:`GLUE_DIGITS` significant
digits. myst-nb stores a glued value's full ``repr`` in the executed notebook, and nbval compares stored outputs
with a re-execution character by character, so a value whose 16th digit depends on rounding (a float64 reduction in
another order) would fail the re-validation although the text shows 4 digits at most. Six digits are more than any
format in the chapters shows (``.4g``, or ``.1f`` of a value below 10^4), and fewer than float noise reaches.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["GLUE_DIGITS", "glue", "round_significant"]

#: Significant digits a glued float keeps.
GLUE_DIGITS = 6


def round_significant(value: Any, digits: int = GLUE_DIGITS) -> Any:
    """``value`` rounded to ``digits`` significant digits if it is a real, non-integral number (numpy's too), as a
    Python float; anything else (int, bool, str, NaN, infinity, a figure, a DataFrame) unchanged."""
    if isinstance(value, numbers.Real) and not isinstance(value, (numbers.Integral, bool)):
        x = float(value)
        return float(f"{x:.{digits}g}") if x == x and abs(x) != float("inf") else x
    return value


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue(name, value, display)``, floats rounded by :func:`round_significant`."""
    from myst_nb import glue as myst_glue

    myst_glue(name, round_significant(value), display=display)
