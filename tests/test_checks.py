"""qdiff_lib._checks: the shared message helpers."""

from __future__ import annotations

import pytest

from qdiff_lib._checks import check_choice, counted


def test_check_choice_names_the_value_and_the_allowed_ones():
    check_choice("arm", "se", ["se", "none"])
    with pytest.raises(ValueError, match=r"unknown arm 'tanh'; allowed: \['se', 'none'\]"):
        check_choice("arm", "tanh", ("se", "none"))


def test_counted_puts_the_noun_in_the_number_the_count_asks_for():
    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    assert counted(1, "torch thread") == "1 torch thread" and counted(2, "analysis", "analyses") == "2 analyses"
