"""Argument checks shared by the library: one message format for a value outside its allowed set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice"]


def check_choice(kind: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError("unknown <kind> <value!r>; allowed: [...]")`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {allowed}")
