"""The core's shape: no import cycle between avgen's modules, and a short runner."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVGEN = ROOT / "avgen"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The avgen modules a module imports, at module level and inside functions, outside ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("avgen.") and a.name.count(".") == 1)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "avgen":  # from avgen import media (a module) or __version__ (from __init__)
                found.update(a.name if a.name in modules else "__init__" for a in node.names)
            elif node.module.startswith("avgen."):
                found.add(node.module.split(".")[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """avgen module -> the avgen modules it imports (``__init__`` for the package itself)."""
    modules = {path.stem for path in AVGEN.glob("*.py")}
    graph = {}
    for name in sorted(modules):
        tree = ast.parse((AVGEN / f"{name}.py").read_text(encoding="utf-8"))
        graph[name] = {m for m in _imports(tree, modules) if m in modules and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path):] = 1, [node]
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nimport avgen.cache\nfrom avgen import media, __version__\n"
        "if TYPE_CHECKING:\n    from avgen.runner import Run\n"
        "def f():\n    from avgen.train import fit\n"
    )
    assert _imports(tree, {"cache", "media", "train", "runner", "__init__"}) == {"cache", "media", "__init__", "train"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_avgen():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in avgen/: " + " -> ".join(f"{m}.py" for m in cycle)


def test_runner_is_a_short_stage_table():
    lines = len((AVGEN / "runner.py").read_text(encoding="utf-8").splitlines())
    assert lines < 350, f"avgen/runner.py has {lines} lines; keep it under 350 (move the work into its own module)"


def public_api_violations(tree: ast.AST) -> list[str]:
    """Imports of avgen that go past its public namespace: ``from avgen.x import ...``, ``import avgen.x``, and
    ``from avgen import name`` where name is not in ``avgen.__all__`` (a private module, ``media`` included)."""
    import avgen

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("avgen."):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.module == "avgen":
                found += [f"line {node.lineno}: from avgen import {a.name}" for a in node.names
                          if a.name not in avgen.__all__]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("avgen.")]
    return found


def test_the_public_api_check_sees_private_imports():
    tree = ast.parse("from avgen import media, read_frames\nimport avgen.generate\nfrom avgen.model import load\n"
                     "import avgen\nfrom avgen_timing.footage import find_videos\n")
    assert public_api_violations(tree) == ["line 1: from avgen import media", "line 2: import avgen.generate",
                                           "line 3: from avgen.model import ..."]


def test_plugins_and_examples_import_only_the_public_api():
    """A plugin (shipped or an example) sees what a third-party package sees: ``avgen``'s public names."""
    files = sorted(p for folder in (ROOT / "plugins", ROOT / "examples") for p in folder.rglob("*.py")
                   if "build" not in p.parts)
    assert len(files) > 40
    bad = {str(p.relative_to(ROOT)): v for p in files if (v := public_api_violations(ast.parse(p.read_text())))}
    assert not bad, f"imports past avgen's public names (use the names avgen exports): {bad}"
