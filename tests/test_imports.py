"""The package's import structure: no cycle between its modules (counting imports inside functions
too: a lazy import is still a dependency), leaves that stay leaves, matplotlib only where pictures
are drawn, and light commands that do not load TensorFlow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mnistlab"
LEAVES = {"errors": set(), "fileio": {"errors"}, "config": {"errors"}, "runtime": set(),
          "modelcheck": {"errors"}, "inference": {"errors", "fileio", "modelcheck"}}
DRAWING = {"plots", "report"}  # the only modules that may import matplotlib


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(mnistlab modules, top-level external packages) that ``path`` imports anywhere in its code."""
    ours, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mnistlab":
                ours |= {alias.name for alias in node.names if (PACKAGE / f"{alias.name}.py").exists()}
            elif node.module.startswith("mnistlab."):
                ours.add(node.module.split(".")[1])
            elif node.level == 0:
                external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mnistlab."):
                    ours.add(alias.name.split(".")[1])
                else:
                    external.add(alias.name.split(".")[0])
    return ours - {path.stem}, external


def graph() -> dict[str, set[str]]:
    return {p.stem: imports_of(p)[0] for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    edges = graph()
    assert len(edges) > 15
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_what_they_may(leaf):
    assert imports_of(PACKAGE / f"{leaf}.py")[0] <= LEAVES[leaf]


def test_matplotlib_only_where_pictures_are_drawn():
    users = {p.stem for p in PACKAGE.glob("*.py") if "matplotlib" in imports_of(p)[1]}
    assert users <= DRAWING, users - DRAWING


def loaded_after(code: str) -> set[str]:
    """Which of tensorflow, keras, matplotlib a fresh interpreter has loaded after ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    return set(out.stdout.split())


def test_training_does_not_load_matplotlib_and_parsing_loads_nothing_heavy():
    assert "matplotlib" not in loaded_after("import mnistlab.train")
    assert loaded_after("from mnistlab import cli\ncli.build_parser()") == set()
    for command in ("", "predict", "serve", "data"):  # what `mnistlab COMMAND ...` parses with
        assert loaded_after(f"from mnistlab import cli\ncli.build_parser(only={command!r})") == set(), command
