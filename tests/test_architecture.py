"""docs/architecture.md's layout tree lists exactly the modules and folders of the package, no module imports an
engine's library (duckdb, pyspark) outside that engine's package, and the package's modules import each other
without cycles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "feature_store"


def documented_paths() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layout:start -->", 1)[1].split("<!-- layout:end -->", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in lines[1:]:  # the first line is feature_store/ itself
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([part for _, part in stack] + [name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
    return paths


def actual_paths() -> set[str]:
    paths: set[str] = set()
    for module in PACKAGE.rglob("*.py"):
        relative = module.relative_to(PACKAGE)
        if module.name == "__init__.py" and relative.parent != Path("."):
            continue  # a folder's own __init__ is the folder's line
        paths.add(relative.as_posix())
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and any(folder.glob("*.py")):
            paths.add(folder.relative_to(PACKAGE).as_posix())
    paths.discard(".")
    return paths


def test_the_layout_tree_matches_the_package() -> None:
    documented = {path for path in documented_paths() if not path.startswith("templates")}
    actual = {path for path in actual_paths() if not path.startswith("templates")}
    assert sorted(actual - documented) == [], "modules missing from docs/architecture.md's layout"
    assert sorted(documented - actual) == [], "docs/architecture.md lists modules that do not exist"


@pytest.mark.parametrize(("library", "package"), [("duckdb", "offline/duckdb/"), ("pyspark", "offline/spark/")])
def test_only_an_engines_own_package_imports_its_library(library: str, package: str) -> None:
    importing = sorted(
        module.relative_to(PACKAGE).as_posix()
        for module in PACKAGE.rglob("*.py")
        if re.search(rf"^\s*(import {library}|from {library})", module.read_text(), re.MULTILINE)
    )
    assert importing and all(path.startswith(package) for path in importing), importing


def module_imports() -> dict[str, set[str]]:
    """Per module of the package, the package's modules it imports when it is imported: top-level imports only
    (imports inside functions are deliberate lazy loads, and ``if TYPE_CHECKING:`` blocks never run)."""
    import ast

    modules: dict[str, tuple[Path, bool]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)

    def imported(body: list[ast.stmt], name: str, is_package: bool) -> set[str]:
        found: set[str] = set()
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                found |= imported(node.body + node.orelse, name, is_package)
            elif isinstance(node, ast.Try):
                found |= imported(node.body, name, is_package)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
                # `from package import submodule` imports the submodule, not a name the package defines
                found |= submodules if len(submodules) == len(node.names) else submodules | {base}
        return found

    return {name: {m for m in imported(ast.parse(path.read_text()).body, name, is_package)
                   if m in modules and m != name}
            for name, (path, is_package) in modules.items()}


def test_no_import_cycles() -> None:
    """Modules import each other in one direction only (a cycle makes import order matter and breaks under
    refactoring); a module that needs a module above it imports it inside the function that uses it."""
    graph = module_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target):], module, target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)
    assert len(graph) > 100 and sum(map(len, graph.values())) > 200  # the graph was read at all
