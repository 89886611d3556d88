"""Where the book's stored outputs and committed results come from: the reproducibility page's sources.

* Each chapter is executed by ``tools/execute_chapter.py`` (``make execute``), which runs papermill and then stamps
  the stored notebook's metadata with :data:`EXECUTION_KEY`: the commit and whether files other than the chapters
  differed from it, the machine and the numerics (:func:`qdiff_lib.numerics.state`), the parameters passed.
  Papermill itself records the start, end and duration. :func:`execution_record` reads both back, with the
  defaults of the chapter's ``parameters`` cell (:func:`parameter_defaults`), so that the page can say with which
  profile and parameters every stored output was produced.
* :func:`results_coverage` counts, for every study, the runs its grid plans, the committed summaries, how many of
  them ran under the pinned numerics, and the CPU time they took and the rest would take.

Nothing here computes a result of the study.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from qdiff_lib import REPO_ROOT

__all__ = ["EXECUTION_KEY", "toc_files", "toc_notebooks", "parameter_defaults", "execution_record",
           "execution_table", "results_coverage"]

#: The notebook-metadata key under which ``tools/execute_chapter.py`` records an execution.
EXECUTION_KEY = "qdiff_execution"


def toc_files(toc_path: str | os.PathLike = REPO_ROOT / "_toc.yml") -> list[str]:
    """Every ``file:`` entry of the jb-book TOC (root included), without extension, in book order."""
    toc = yaml.safe_load(Path(toc_path).read_text())
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


def toc_notebooks(toc_path: str | os.PathLike = REPO_ROOT / "_toc.yml") -> list[str]:
    """Paths (relative to the TOC's folder) of the TOC entries that are notebooks, in book order."""
    root = Path(toc_path).parent
    return [f + ".ipynb" for f in toc_files(toc_path) if (root / (f + ".ipynb")).exists()]


def parameter_defaults(notebook: dict[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of the literal assignments in ``notebook``'s cell tagged ``parameters`` (empty if none).

    Assignments whose value is not a Python literal are left out."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            out = {}
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
            return out
    return {}


def execution_record(path: str | os.PathLike) -> dict[str, Any]:
    """How the stored outputs of the notebook at ``path`` were produced (keys as in :func:`execution_table`)."""
    notebook = json.loads(Path(path).read_text())
    meta = notebook.get("metadata", {})
    papermill = meta.get("papermill") or {}
    stamp = meta.get(EXECUTION_KEY) or {}
    passed = papermill.get("parameters") or {}
    effective = {**parameter_defaults(notebook), **passed}
    numerics = stamp.get("numerics") or {}
    return {
        "chapter": Path(path).stem,
        "profile": effective.get("profile"),
        "parameters passed": passed,
        "executed": papermill.get("end_time"),
        "duration_s": papermill.get("duration"),
        "commit": stamp.get("git_commit"),
        "other files changed": stamp.get("git_dirty_outside_chapters"),
        "cpu": numerics.get("cpu"),
        "numerics": None if not numerics else f"{numerics.get('mode')}, {numerics.get('cpu_capability')}"
                                             f"{'' if numerics.get('exact') else ' (not exact)'}",
        "torch threads": numerics.get("torch_threads"),
        "stamped": bool(stamp),
    }


def execution_table(notebooks: list[str | os.PathLike]) -> pd.DataFrame:
    """One :func:`execution_record` per notebook, in the given order."""
    return pd.DataFrame([execution_record(p) for p in notebooks])


def results_coverage(profile_name: str = "full", root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per study of ``profile_name``: runs planned, committed, pinned; CPU-hours spent and projected for the rest.

    ``cpu_h_rest`` is the mean cost of the committed runs of that study (:func:`qdiff_lib.study.recompute_cost_s`)
    times the runs still missing (None when no committed run has a cost)."""
    from qdiff_lib import study

    rows = []
    for name in study.STUDIES:
        planned = {study.run_key(o) for o in study.study_runs(name, profile_name)}
        folder = study.results_dir(profile_name, name, root)
        summaries = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
        committed = planned & set(summaries)
        costs = [c for k in committed if (c := study.recompute_cost_s(summaries[k])) is not None]
        mean = sum(costs) / len(costs) if costs else None
        rows.append({
            "study": name, "planned": len(planned), "committed": len(committed),
            "pinned": sum(study.is_pinned(summaries[k]) for k in committed),
            "cpu_h_spent": sum(costs) / 3600, "cpu_h_rest": None if mean is None else mean * (len(planned) -
                                                                                             len(committed)) / 3600,
        })
    return pd.DataFrame(rows)
