"""Argument checks shared by the library: one message format for a value outside its allowed set; and counted nouns
for its messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_choice", "counted"]


def check_choice(kind: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError("unknown <kind> <value!r>; allowed: [...]")`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {allowed}")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 run"``, ``"2 runs"``: ``n`` and the noun in the number ``n`` asks for (``plural`` default: noun + s)."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"
