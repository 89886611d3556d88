"""The package's import structure: no import cycle between qdiff_lib's modules, and no heavy import where it is not
needed (plain DDPM without PennyLane, MNIST without medmnist)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from qdiff_lib import REPO_ROOT

PACKAGE = REPO_ROOT / "qdiff_lib"


def _module_names(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, read statically with ``ast``: every ``import`` and
    ``from ... import`` statement anywhere in a file (module level, inside functions, under ``TYPE_CHECKING``),
    relative ones resolved. ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else
    ``pkg`` itself. The implicit import of a module's parent packages is not an edge (Python imports the parents
    first, so it cannot close a cycle)."""
    modules = _module_names(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]  # where relative imports start
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if target not in modules:
                    continue
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"qdiff_lib.cli", "qdiff_lib.study", "qdiff_lib.experiment", "qdiff_lib.metrics.evaluation"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    # the layering of the command line: cli uses study and experiment; study uses experiment, never cli
    assert {"qdiff_lib.study", "qdiff_lib.experiment"} <= graph["qdiff_lib.cli"]
    assert "qdiff_lib.experiment" in graph["qdiff_lib.study"] and "qdiff_lib.cli" not in graph["qdiff_lib.study"]
    assert "qdiff_lib.cli" not in graph["qdiff_lib.experiment"]


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function, through a relative import, is found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("import os\n\ndef g():\n    from .. import a\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"}, "pkg.sub": set(), "pkg.sub.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    (package / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(package)) is None


def test_plain_ddpm_and_mnist_import_neither_pennylane_nor_medmnist():
    code = textwrap.dedent("""
        import sys
        import qdiff_lib.data, qdiff_lib.diffusion, qdiff_lib.experiment, qdiff_lib.noise, qdiff_lib.train
        from qdiff_lib.data import dataset_info
        from qdiff_lib.noise import make_noise_source
        dataset_info("mnist")
        make_noise_source("gaussian", timesteps=10)
        print(sorted(m for m in ("pennylane", "medmnist") if m in sys.modules))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
