"""Guards on the book: every chapter in _toc.yml is executed, stored executed and validated by `make test`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from check_env import has_gpu, nvidia_packages  # noqa: E402
from toc_chapters import toc_files, toc_notebooks  # noqa: E402

NOTEBOOKS = toc_notebooks()


def test_toc_names_existing_files_and_every_chapter_is_listed():
    for f in toc_files():
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"_toc.yml names missing file {f}"
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").glob("*.ipynb"))
    assert sorted(NOTEBOOKS) == on_disk, "a notebook in chapters/ is missing from _toc.yml (or vice versa)"
    assert "chapters/datasets.ipynb" in NOTEBOOKS


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_test_validates_every_toc_notebook():
    """Dry-run `make test`: the nbval command must name every notebook in the TOC, and a strict build follows."""
    out = subprocess.run(
        ["make", "-n", "test", "VENV=" + str(Path(sys.executable).parent.parent)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.replace("\\\n", " ")
    nbval_lines = [line for line in out.splitlines() if "--nbval" in line]
    assert len(nbval_lines) == 1
    for nb in NOTEBOOKS:
        assert Path(nb).name in nbval_lines[0].split(), f"{nb} is not validated by make test"
    assert "jupyter-book build . -W -n --keep-going" in out
    unit = r"pytest -q -n \d+ --dist loadfile (?:--durations=\d+ )?-m \"not full_recheck\" tests"
    assert re.search(unit, out), "make test runs the unit tests"


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_ci_runs_make_test_and_the_full_recheck():
    """CI's entry point runs make test and then the end-to-end re-check that make test leaves out."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make recheck" in ci
    out = subprocess.run(["make", "-n", "recheck", "VENV=" + str(Path(sys.executable).parent.parent)],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert re.search(r"pytest -q -m full_recheck tests/test_study.py", out)


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_chapter_is_stored_executed_with_parameters(path):
    nb = json.loads((ROOT / path).read_text())
    cells = [dict(c, source="".join(c["source"])) for c in nb["cells"]]
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"].startswith("# "), "first cell: only '# Title'"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
    assert 'profile = "ci"' in "".join(tagged[0]["source"]), "the parameters cell sets profile = \"ci\""
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell executed (stored by papermill)"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "stored error outputs"
    # warnings and library chatter on stderr would show in the rendered book; a cell whose stderr is known noise
    # (the torch profiler's C++ log lines) says so with the myst-nb tag remove-stderr
    stray = [c["source"].splitlines()[0] for c in code
             if "remove-stderr" not in c.get("metadata", {}).get("tags", [])
             and any(o.get("name") == "stderr" for o in c.get("outputs", []))]
    assert not stray, f"stderr output in cells starting {stray}"


def test_no_cuda_packages_without_gpu():
    found = nvidia_packages()
    assert has_gpu() or not found, f"CUDA packages installed on a machine without a GPU: {found}"


#: The heaviest image a stored chapter may hold (issue 21: light pages).
MAX_IMAGE_KB = 300


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_stored_images_are_light(path):
    import base64

    nb = json.loads((ROOT / path).read_text())
    heavy = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            for mime, value in output.get("data", {}).items():
                if mime.endswith(("image/png", "image/jpeg")):
                    size = len(base64.b64decode("".join(value) if isinstance(value, list) else value)) / 1024
                    if size > MAX_IMAGE_KB:
                        heavy.append(f"cell {i}: {mime} of {size:.0f} KB")
    assert not heavy, f"images over {MAX_IMAGE_KB} KB (lower the figure's dpi or size): {heavy}"
