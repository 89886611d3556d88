"""Execute one chapter with papermill and store it, stamped with how it was executed (``make execute``).

    python tools/execute_chapter.py chapters/mnist.ipynb [-p profile full] [-p label 5]

The notebook is executed into ``_build/executed/`` (with ``chapters/`` as working directory) and copied over the
stored one only when every cell succeeded, so a failing chapter never leaves a half-written notebook behind. The
stored notebook's metadata gets :data:`qdiff_lib.provenance.EXECUTION_KEY`: the commit, whether files other than the
chapters' notebooks differed from it, the numerics of this process (the kernel inherits its environment, so it
runs the same pinned kernels and ``OMP_NUM_THREADS``), and the parameters passed. The reproducibility chapter reads
it back.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import qdiff_lib  # noqa: E402,F401  (first: pins the numerics in this process and, by inheritance, in the kernel)
from qdiff_lib import numerics  # noqa: E402
from qdiff_lib._io import atomic_write  # noqa: E402
from qdiff_lib.provenance import EXECUTION_KEY  # noqa: E402


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def stamp() -> dict:
    """The commit, the state of the tree outside ``chapters/*.ipynb``, and this process's numerics."""
    import torch

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    status = _git("status", "--porcelain")
    changed = None if status is None else [
        line[3:] for line in status.splitlines() if not (line[3:].startswith("chapters/") and line.endswith(".ipynb"))
    ]
    commit = _git("rev-parse", "HEAD")
    return {"git_commit": commit.strip() if commit else None,
            "git_dirty_outside_chapters": None if changed is None else bool(changed),
            "numerics": numerics.state(), "tool": "tools/execute_chapter.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a papermill parameter (VALUE read as YAML, as papermill -p does)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "_build" / "executed")
    args = parser.parse_args(argv)
    if not args.notebook.exists():
        parser.error(f"{args.notebook} does not exist")
    import nbformat
    import papermill
    import yaml

    parameters = {name: yaml.safe_load(value) for name, value in args.parameter}
    record = stamp()
    executed = args.out_dir / args.notebook.name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    print(f"== papermill {args.notebook} {parameters or ''}", flush=True)
    papermill.execute_notebook(str(args.notebook), str(executed), parameters=parameters, kernel_name="python3",
                               cwd=str(args.notebook.resolve().parent), progress_bar=False)
    notebook = nbformat.read(executed, as_version=4)
    notebook.metadata[EXECUTION_KEY] = {**record, "parameters": parameters}
    text = nbformat.writes(notebook)
    atomic_write(args.notebook, lambda f: f.write(text.encode()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
