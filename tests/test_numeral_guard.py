"""No number typed into the book's prose (issue 21 part 3): every numeral in a page's markdown comes from a glue role,
math, a citation or the short allowlist of tools/numeral_guard.py. The first tests show that the guard can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from numeral_guard import book_files, markdown_of, typed_numbers  # noqa: E402

PAGES = book_files(ROOT)


@pytest.mark.parametrize("text, numbers", [
    ("trained for 2000 steps", ["2000"]),
    ("KID fell by 116 [-145, -86.2]", ["116", "-145", "-86.2"]),
    ("a 95% interval", ["95%"]),
    ("with three seeds and ten digits", ["three seeds", "ten digits"]),
    ("1,000 images and 1e-5", ["1,000", "1e-5"]),
])
def test_guard_finds_typed_numbers(text, numbers):
    found = typed_numbers(text)
    assert [f.split(" in ")[0].strip("'") for f in found] == numbers


@pytest.mark.parametrize("text", [
    "trained for {glue:text}`steps:d` steps",  # glue role
    "KID $d_i = K_q - K_c < 0$ and \\(N\\) images",  # math
    "as {cite}`schreiber2023` showed",  # citation
    "the paper (arXiv:2504.00034), Eq. 3, section 2, stage 1, issue 16",  # allowlist
    "Bowles et al. 2024 and Schreiber (2023)",  # citation years
    "run `python -m qdiff_lib study --limit 5`",  # inline code
    "AVX2 kernels, float32, Inception-v3",  # digits inside a word
    "1. first item\n2. second item",  # list markers
    "two caveats",  # English, not data
])
def test_guard_allows_what_is_not_a_typed_number(text):
    assert typed_numbers(text) == []


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_has_no_typed_number(path):
    found = [n for text in markdown_of(path) for n in typed_numbers(text)]
    assert not found, (f"{len(found)} number(s) typed into the prose of {path.relative_to(ROOT)}: glue them from code "
                       f"({{glue:text}}`key:fmt`), write constants as math, cite years; run "
                       f"tools/numeral_guard.py for the list:\n" + "\n".join(found))
