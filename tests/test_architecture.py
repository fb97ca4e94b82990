"""The core's shape: no import cycle between avgen's modules, a short runner, private modules under avgen/_core/."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVGEN = ROOT / "avgen" / "_core"  # the private modules; avgen/__init__.py is the public namespace


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """The core modules a module imports (``avgen._core.x``; ``__init__`` for ``avgen`` itself), at module level and
    inside functions, outside ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("avgen._core."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "avgen":  # the public namespace (its names load from the core on first use)
                found.add("__init__")
            elif node.module == "avgen._core":  # from avgen._core import media (a module)
                found.update(a.name for a in node.names if a.name in modules)
            elif node.module.startswith("avgen._core."):
                found.add(node.module.split(".")[2])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """core module -> the core modules it imports (``__init__``: the package ``avgen``; ``cli``: the CLI package)."""
    files = {path.stem: path for path in AVGEN.glob("*.py") if path.stem != "__init__"}
    files["cli"] = AVGEN / "cli" / "__init__.py"
    files["__init__"] = AVGEN.parent / "__init__.py"
    graph = {}
    for name, path in sorted(files.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _imports(tree, set(files)) if m in files and m != name}
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
        "from typing import TYPE_CHECKING\nimport avgen._core.cache\nfrom avgen._core import media\nfrom avgen import __version__\n"
        "if TYPE_CHECKING:\n    from avgen._core.runner import Run\n"
        "def f():\n    from avgen._core.train import fit\n"
    )
    assert _imports(tree, {"cache", "media", "train", "runner", "__init__"}) == {"cache", "media", "__init__", "train"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_avgen():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle in avgen/: " + " -> ".join(f"{m}.py" for m in cycle)


def test_runner_is_a_short_stage_table():
    lines = len((AVGEN / "runner.py").read_text(encoding="utf-8").splitlines())
    assert lines < 350, f"avgen/_core/runner.py has {lines} lines; keep it under 350 (move the work into its own module)"


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
    tree = ast.parse("from avgen import media, read_frames\nimport avgen._core.generate\nfrom avgen._core.model import load\n"
                     "import avgen\nfrom avgen_timing.footage import find_videos\nfrom avgen._core import media\n")
    assert public_api_violations(tree) == ["line 1: from avgen import media", "line 2: import avgen._core.generate",
                                           "line 3: from avgen._core.model import ...", "line 6: from avgen._core import ..."]


def test_the_package_shows_only_its_public_namespace():
    """``avgen`` holds its namespace and ``python -m avgen``; every module behind the names is under ``avgen/_core``,
    so ``from avgen import media`` fails and a private import names itself private."""
    import avgen

    assert sorted(p.name for p in AVGEN.parent.iterdir() if p.name != "__pycache__") == ["__init__.py", "__main__.py", "_core"]
    assert all(avgen._LAZY[name].startswith("avgen._core.") for name in avgen._LAZY)
    try:
        from avgen import media  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("from avgen import media still works")


def test_plugins_and_examples_import_only_the_public_api():
    """A plugin (shipped or an example) sees what a third-party package sees: ``avgen``'s public names."""
    files = sorted(p for folder in (ROOT / "plugins", ROOT / "examples") for p in folder.rglob("*.py")
                   if "build" not in p.parts)
    assert len(files) > 40
    bad = {str(p.relative_to(ROOT)): v for p in files if (v := public_api_violations(ast.parse(p.read_text())))}
    assert not bad, f"imports past avgen's public names (use the names avgen exports): {bad}"


def test_no_core_module_is_over_400_lines():
    sizes = {str(p.relative_to(AVGEN.parent)): len(p.read_text(encoding="utf-8").splitlines())
             for p in AVGEN.rglob("*.py")}
    assert len(sizes) > 30
    assert not {name: n for name, n in sizes.items() if n > 400}, sizes


def test_no_plugin_imports_another_plugins_package():
    """A plugin reaches another plugin's components through the registry (``avgen.create``), never by importing it:
    each one can be left out or replaced."""
    packages = {p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").is_file()}
    assert {"avgen_eval", "avgen_timing", "avgen_datasets"} <= packages
    bad = {}
    for package in sorted(packages):
        for path in sorted((ROOT / "plugins" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                others = {n.split(".")[0] for n in names} & (packages - {package})
                if others:
                    bad.setdefault(str(path.relative_to(ROOT)), []).append(f"line {node.lineno}: {sorted(others)}")
    assert not bad, bad
