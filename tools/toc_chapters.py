"""Print the notebooks named in _toc.yml, in book order (used by the Makefile and the guard test)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from qdiff_lib.provenance import toc_files, toc_notebooks  # noqa: E402

__all__ = ["ROOT", "toc_files", "toc_notebooks"]

if __name__ == "__main__":
    sys.stdout.write(" ".join(toc_notebooks(ROOT / "_toc.yml")) + "\n")
