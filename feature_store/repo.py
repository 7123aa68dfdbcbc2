"""Loading a feature repo: import its Python files and collect the definitions they hold."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from pydantic import ValidationError

from feature_store.catalog import Catalog
from feature_store.definitions import (
    Definition,
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureView,
    FileSource,
    PushSource,
)
from feature_store.errors import DefinitionError, FeatureStoreError, RepoLoadError, validation_problems

_SKIP_DIRS = {"data", "__pycache__", "node_modules", "venv", "site-packages"}


def repo_files(repo: Path) -> list[Path]:
    """Every *.py file of the repo, except under data/, hidden or private folders, and test_*/_* files."""
    files = []
    for path in sorted(repo.rglob("*.py")):
        parts = path.relative_to(repo).parts
        if any(p in _SKIP_DIRS or p.startswith((".", "_")) for p in parts[:-1]):
            continue
        if parts[-1].startswith(("_", "test_")):
            continue
        files.append(path)
    return files


def load_repo(repo: Path) -> Catalog:
    """Import each repo file and build a catalog from the definitions found at module level."""
    objects: list[Definition] = []
    origins: dict[int, str] = {}
    added_path = str(repo.resolve())
    sys.path.insert(0, added_path)  # so repo files can import each other
    try:
        for path in repo_files(repo):
            relative = str(path.relative_to(repo))
            for value in _import(path, relative).__dict__.values():
                if isinstance(value, Entity | FileSource | DuckDBSource | PushSource | FeatureView | FeatureService) \
                        and id(value) not in origins:
                    objects.append(value)
                    origins[id(value)] = relative
    finally:
        sys.path.remove(added_path)
    return Catalog.build(objects, origins)


def _import(path: Path, relative: str) -> object:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"feature_repo_{digest}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RepoLoadError(f"cannot import {relative}: not a Python module.", file=relative)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FeatureStoreError as exc:
        raise type(exc)(f"{relative}: {exc.message}", file=relative, **exc.details) from exc
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise DefinitionError(f"{relative}: invalid {exc.title}: {problems}", file=relative) from exc
    except Exception as exc:  # user code can fail in any way; report where, keep the cause
        raise RepoLoadError(
            f"importing {relative} failed: {type(exc).__name__}: {exc}", file=relative
        ) from exc
    return module
