"""Print the notebooks named in _toc.yml, in book order (used by the Makefile and the guard test)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def toc_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` entry of the jb-book TOC (root included), without extension."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def toc_notebooks(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Paths (relative to the repo root) of the TOC entries that are notebooks."""
    return [f + ".ipynb" for f in toc_files(toc_path) if (ROOT / (f + ".ipynb")).exists()]


if __name__ == "__main__":
    sys.stdout.write(" ".join(toc_notebooks()) + "\n")
