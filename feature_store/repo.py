"""Loading a feature repo: import its Python files and collect the definitions they hold."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Mapping
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
    SparkSource,
)
from feature_store.errors import DefinitionError, FeatureStoreError, RepoLoadError, validation_problems

# What a repo file may define: any other module-level value is not the feature store's
_DEFINITIONS = (Entity, FileSource, DuckDBSource, SparkSource, PushSource, FeatureView, FeatureService)

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
        files = repo_files(repo)
        own = {p.resolve(): str(p.relative_to(repo)) for p in files}  # where an error is located
        for path in files:
            relative = str(path.relative_to(repo))
            for value in _import(path, relative, own).__dict__.values():
                if isinstance(value, _DEFINITIONS) and id(value) not in origins:
                    objects.append(value)
                    origins[id(value)] = relative
    finally:
        sys.path.remove(added_path)
    return Catalog.build(objects, origins)


def _import(path: Path, relative: str, own: Mapping[Path, str]) -> object:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"feature_repo_{digest}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RepoLoadError(f"cannot import {relative}: not a Python module.", file=relative)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FeatureStoreError as exc:
        raise _located(exc, f"{relative}: {exc.message}", relative, own) from exc
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise _located(DefinitionError(f"{relative}: invalid {exc.title}: {problems}"), None, relative, own,
                       exc) from exc
    except Exception as exc:  # user code can fail in any way; report where, keep the cause
        what = exc.msg if isinstance(exc, SyntaxError) else exc  # its str() holds a location too
        raise _located(RepoLoadError(f"importing {relative} failed: {type(exc).__name__}: {what}"), None, relative,
                       own, exc) from exc
    return module


def _located(error: FeatureStoreError, message: str | None, relative: str, own: Mapping[Path, str],
             cause: BaseException | None = None) -> FeatureStoreError:
    """``error`` (with ``message``, if given) plus where in the repo's code it happened: file and line.

    An error that already names a file (its own ``file`` detail) keeps it; the repo location is then
    given as ``repo_file`` and ``repo_line``.
    """
    cause = cause or error
    file, line, code = _repo_frame(cause, own)
    text = message or error.message
    if line is not None:
        where = f"line {line}" if file == relative else f"{file}, line {line}"
        text += f" ({where}: {code})" if code else f" ({where})"
    details = dict(error.details)
    if "file" in details:
        details.update(repo_file=file or relative, repo_line=line)
    else:
        details.update(file=file or relative, line=line)
    try:
        return type(error)(text, **details)
    except TypeError:  # a subclass with an __init__ of its own: keep the cause, report as a load error
        return RepoLoadError(text, **details)


def _repo_frame(exc: BaseException, own: Mapping[Path, str]) -> tuple[str | None, int | None, str]:
    """The innermost place in the repo's own files where ``exc`` was raised: (relative file, line, code)."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:  # raised by the compiler, not in a frame
        inside = own.get(Path(exc.filename).resolve())
        if inside is not None:
            return inside, exc.lineno, _short(exc.text or "")
    found: tuple[str | None, int | None, str] = (None, None, "")
    for frame in traceback.extract_tb(exc.__traceback__):
        inside = own.get(Path(frame.filename).resolve())
        if inside is not None and frame.lineno is not None:
            found = (inside, frame.lineno, _short(frame.line or ""))
    return found


def _short(code: str, limit: int = 80) -> str:
    """One line of code for a message: enough to recognize it."""
    code = code.strip()
    return code if len(code) <= limit else code[:limit - 3] + "..."
