"""The reproducibility page's sources: execution stamps of chapters and the coverage of committed results."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pandas as pd
import pytest

from qdiff_lib import REPO_ROOT, provenance, study

TOOL = REPO_ROOT / "tools" / "execute_chapter.py"


def _notebook(path, body="y = x * 2\nprint(y)"):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "ci"  # budgets\nx = 3\nlabels = [1, 2]\nz = dict(a=1)')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_parameter_defaults_reads_literals_only(tmp_path):
    nb = json.loads(_notebook(tmp_path / "a.ipynb").read_text())
    assert provenance.parameter_defaults(nb) == {"profile": "ci", "x": 3, "labels": [1, 2]}
    assert provenance.parameter_defaults({"cells": []}) == {}


def test_execute_chapter_stamps_the_stored_notebook_and_keeps_it_on_failure(tmp_path):
    path = _notebook(tmp_path / "ok.ipynb")
    subprocess.run([sys.executable, str(TOOL), str(path), "-p", "x", "5", "--out-dir", str(tmp_path / "out")],
                   check=True, capture_output=True, text=True)
    record = provenance.execution_record(path)
    assert record["profile"] == "ci" and record["parameters passed"] == {"x": 5}
    assert record["stamped"] and record["commit"] and record["duration_s"] > 0
    assert record["numerics"].startswith(("pinned", "native"))
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[-1].outputs[0]["text"] == "10\n", "the parameter did not reach the kernel"

    bad = _notebook(tmp_path / "bad.ipynb", body="raise RuntimeError('boom')")
    before = bad.read_bytes()
    done = subprocess.run([sys.executable, str(TOOL), str(bad), "--out-dir", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "boom" in done.stderr + done.stdout
    assert bad.read_bytes() == before, "a failed execution changed the stored notebook"


def test_unstamped_notebook_says_so(tmp_path):
    record = provenance.execution_record(_notebook(tmp_path / "a.ipynb"))
    assert not record["stamped"] and record["commit"] is None and record["profile"] == "ci"


def test_results_coverage_counts_planned_committed_and_pinned(tmp_path):
    options = study.study_runs("noise_schedules", "ci")
    folder = study.results_dir("ci", "noise_schedules", tmp_path)
    folder.mkdir(parents=True)
    summary = {"options": {"steps": 10}, "timings": {"per_step_s": 0.5, "sample_s": 3.0, "metrics_s": 2.0},
               "device": "cpu", "numerics": {"mode": "pinned", "exact": True}}
    (folder / f"{study.run_key(options[0])}.json").write_text(json.dumps(summary))
    (folder / "not-in-the-grid.json").write_text(json.dumps(summary))
    table = provenance.results_coverage("ci", tmp_path).set_index("study")
    row = table.loc["noise_schedules"]
    assert row["planned"] == len(options) and row["committed"] == 1 and row["pinned"] == 1
    assert row["cpu_h_spent"] == pytest.approx(10 / 3600)
    assert row["cpu_h_rest"] == pytest.approx(10 * (len(options) - 1) / 3600)
    assert table.loc["mnist", "committed"] == 0 and pd.isna(table.loc["mnist", "cpu_h_rest"])


def test_toc_notebooks_are_the_book_chapters():
    chapters = provenance.toc_notebooks()
    assert chapters and all((REPO_ROOT / c).exists() for c in chapters)
    assert "chapters/results.ipynb" in chapters
