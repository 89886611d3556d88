"""qdiff_lib.book.glue: floats are glued at a precision that last-bit float noise cannot change."""

from __future__ import annotations

import math

import numpy as np

from qdiff_lib.book import GLUE_DIGITS, round_significant


def test_last_bit_noise_disappears_and_shown_digits_stay():
    a, b = 0.05238149744539696, 0.05238149744539698  # the same value computed with two rounding orders
    assert a != b and round_significant(a) == round_significant(b) == 0.0523815
    for value, fmt in ((2704.7843601518452, ".1f"), (-1.126812265089548, ".3f"), (8.3e-16, ".1e"), (0.98765, ".4g")):
        assert format(round_significant(value), fmt) == format(value, fmt)
    assert round_significant(np.float32(0.1)) == 0.1 and type(round_significant(np.float64(1.5))) is float
    assert GLUE_DIGITS == 6


def test_everything_else_is_unchanged():
    for value in (3, np.int64(7), True, "0.123456789", None, [0.123456789]):
        assert round_significant(value) is value
    assert math.isnan(round_significant(float("nan"))) and round_significant(-math.inf) == -math.inf
