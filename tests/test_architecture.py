"""The shape of the code, read from its source (nothing imported): no import cycle between the project's
modules, counting imports inside functions and under TYPE_CHECKING, no import of a layer above a module's own
(docs/architecture.md), and no function over 90 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 90


def project_modules() -> dict[str, Path]:
    """Module name -> source file, under the names they are installed as: prunebench/, methods/ as
    prunebench.methods, the top-level cli.py as prunebench.cli (prunebench/cli.py is a symlink to it)."""
    modules = {}
    for top, package in (("prunebench", "prunebench"), ("methods", "prunebench.methods")):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.is_symlink():
                continue
            parts = path.relative_to(ROOT / top).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    modules["prunebench.cli"] = ROOT / "cli.py"
    return modules


def imported(name: str, path: Path, tree: ast.Module) -> set[str]:
    """Absolute names of everything `tree` imports anywhere (functions, TYPE_CHECKING blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports. Importing a.b.c also runs the package a.b's __init__:
    that counts too, unless a.b is the importing module's own package."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in imported(name, path, ast.parse(path.read_text(), str(path))):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            while target:
                if target != name and not name.startswith(target + "."):
                    edges.add(target)
                target = target.rpartition(".")[0]
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_imports_and_imports_inside_functions():
    graph = import_graph()
    assert "prunebench.methods" in graph and "prunebench.cli" in graph and len(graph) > 40
    assert "prunebench.registry" in graph["prunebench.request"]
    tree = ast.parse("from . import store\nfrom .report import leaderboard\ndef f():\n    import prunebench.tasks\n"
                     "if TYPE_CHECKING:\n    from ..methods import l0\n")
    names = imported("prunebench.report.x", Path("x.py"), tree)
    assert {"prunebench.report.store", "prunebench.report.report.leaderboard", "prunebench.tasks",
            "prunebench.methods.l0"} <= names
    names = imported("prunebench.running", Path("__init__.py"), ast.parse("from . import runner"))
    assert "prunebench.running.runner" in names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_the_projects_modules():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_function_over_90_lines():
    long = []
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, "functions over 90 lines: " + ", ".join(sorted(long))


#: The layers of docs/architecture.md, lowest first; a module not named here is in the core (layer 0).
LAYERS = ("prunebench.running", "prunebench.report", "prunebench.suites", "prunebench.cli")


def layer(module: str) -> int:
    for level, prefix in enumerate(LAYERS, start=1):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return LAYERS.index("prunebench.cli") + 1 if module == "prunebench.__main__" else 0


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{name} -> {target}" for name, targets in import_graph().items() for target in targets
                    if layer(target) > layer(name))
    assert not upward, "imports of a higher layer: " + "; ".join(upward)
    assert layer("prunebench.harness") < layer("prunebench.running.runner") < layer("prunebench.report.site")
    assert layer("prunebench.report.site") < layer("prunebench.suites.check") < layer("prunebench.cli")
