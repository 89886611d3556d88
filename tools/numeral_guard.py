"""List the numbers typed into the book's prose: every numeral (and spelled-out count) in the markdown of the
chapters and the introduction that is not produced by code.

Spelled-out counts of what a configuration or a result counts (``three seeds``) are numbers too. A number in prose
must come from a ``{glue:text}`` role (myst-nb glue: computed when the chapter is executed).
Not counted: math (``$...$``, ``$$...$$``, ``\\(...\\)``, math blocks), MyST roles (glue, cite, ref, numref, eq,
doc), inline code and code blocks, link targets and URLs, labels ``(name)=``, HTML comments, the numbers of
ordered-list items, digits inside a word (``AVX2``, ``float32``, ``Inception-v3``), and the short allowlist:
the paper's identifier, four-digit years written as citations write them (``(2023)``, ``et al. 2024``), and
numbers that name a part of a text (``Eq. 3``, ``section 2``, ``chapter 4``, ``defect 4``, ``stage 1``,
``issue 16``).

    python tools/numeral_guard.py            # list every typed number, by file; exit 1 if there is one
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from qdiff_lib.provenance import toc_files  # noqa: E402

#: Removed before numbers are looked for (order matters: fenced blocks before inline code).
_STRIP = [
    r"```.*?```", r"~~~.*?~~~", r":::.*?:::",  # code, directives (math blocks, figures...)
    r"\$\$.*?\$\$", r"(?<!\\)\$[^$\n]+\$", r"\\\(.*?\\\)", r"\\\[.*?\\\]",  # math
    r"\{[a-z][\w:-]*\}`[^`]*`",  # MyST roles: {glue:text}`key:.2f`, {cite}`x`, {ref}`y`, {eq}`z`...
    r"`[^`\n]*`",  # inline code
    r"\]\([^)]*\)", r"<https?://[^>]*>", r"https?://\S+",  # link targets, URLs
    r"^\s*\([\w.-]+\)=\s*$",  # labels
    r"<!--.*?-->",  # comments
    r"^\s*\d+[.)]\s",  # ordered-list markers
]
_ALLOWED = [
    r"2504\.00034",  # the paper's identifier
    r"\((?:19|20)\d\d[a-z]?\)", r"et al\.,? (?:19|20)\d\d", r"(?:19|20)\d\d-\d\d-\d\d",  # citation years, dates
    r"\b(?:[Ee]qs?\.|[Ee]quations?|[Ss]ections?|[Cc]hapters?|[Ff]igs?\.|[Ff]igures?|[Tt]ables?|[Dd]efects?|"
    r"[Ss]tages?|[Ii]ssues?|[Pp]arts?)\s+\(?\d+(?:\.\d+)*\)?(?:(?:,|\s+and|\s+to|-|–)\s*\d+)*",
]
#: A numeral not attached to a word: ``64``, ``0.05``, ``1e-5``, ``95%``, ``1,000``, ``-3``.
_NUMERAL = re.compile(r"(?<![\w.\-/^_])[-−]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?%?(?![\w])")
#: Spelled-out counts of the things a configuration or a result counts (``three seeds``, ``ten digits``, ``six
#: comparisons``); other spelled-out numbers (``two caveats``) are English, not data.
_WORDS = re.compile(
    r"\b(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundreds?|"
    r"thousands?|dozens?)(?:\s+of)?\s+(?:\w+\s+)?(?:seeds?|digits?|qubits?|steps?|images?|runs?|arms?|samples?|"
    r"layers?|cases?|comparisons?|claims?|models?|classes|datasets?|pairs?|draws?|redraws?|epochs?|chapters?)\b",
    re.IGNORECASE)


def markdown_of(path: Path) -> list[str]:
    """The markdown of a chapter: its markdown cells (a notebook) or the whole file (``.md``)."""
    if path.suffix == ".md":
        return [path.read_text()]
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def typed_numbers(text: str) -> list[str]:
    """The numbers typed in ``text``, each with a few words around it, in order."""
    for pattern in _STRIP + _ALLOWED:
        text = re.sub(pattern, " ", text, flags=re.S | re.M)
    found = []
    for line in text.splitlines():
        for match in [*_NUMERAL.finditer(line), *_WORDS.finditer(line)]:
            context = line[max(0, match.start() - 30): match.end() + 30].strip()
            found.append(f"{match.group(0)!r} in '...{context}...'")
    return found


def book_files(root: Path = ROOT) -> list[Path]:
    """The book's pages in TOC order (notebooks and markdown files)."""
    out = []
    for f in toc_files(root / "_toc.yml"):
        for suffix in (".ipynb", ".md"):
            if (root / f"{f}{suffix}").exists():
                out.append(root / f"{f}{suffix}")
    return out


def report(root: Path = ROOT) -> dict[str, list[str]]:
    """``{file: [typed numbers]}`` for every page that has any."""
    out = {}
    for path in book_files(root):
        found = [n for text in markdown_of(path) for n in typed_numbers(text)]
        if found:
            out[str(path.relative_to(root))] = found
    return out


if __name__ == "__main__":
    found = report()
    for name, numbers in found.items():
        print(f"{name}: {len(numbers)}")
        for n in numbers:
            print(f"  {n}")
    print(f"{sum(map(len, found.values()))} typed number(s) in {len(found)} page(s)")
    sys.exit(1 if found else 0)
