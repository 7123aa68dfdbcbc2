"""docs/architecture.md's layout tree lists exactly the modules and folders of the package, and no module
imports an engine's library (duckdb, pyspark) outside that engine's package."""

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
