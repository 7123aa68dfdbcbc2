"""Start-up cost of the command line: which modules a command imports (deterministic, unlike timings; the
timings are in benchmarks/cli_startup.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import feature_store
from feature_store import FeatureStore

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "duckdb", "numpy", "pyarrow", "polars", "sqlalchemy", "redis", "fastapi", "uvicorn")


def loaded_after(code: str, cwd: Path) -> list[str]:
    """Runs ``code`` in a new interpreter; the HEAVY modules it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env=_env())
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def _env() -> dict[str, str]:
    # The package under test first (a worktree may not be the editable install of the shared venv).
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_cli(*args: str) -> str:
    return (f"from feature_store.cli import main\n"
            f"try:\n    main({list(args)!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n")


def test_importing_the_cli_loads_no_heavy_module(tmp_path: Path) -> None:
    assert loaded_after("import feature_store.cli", tmp_path) == []


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_load_no_heavy_module(flag: str, tmp_path: Path) -> None:
    assert loaded_after(run_cli(flag), tmp_path) == []


def test_definitions_load_no_engine(tmp_path: Path) -> None:
    code = "from feature_store import Count, Entity, FeatureService, FeatureView, Field, FileSource, PushSource, Sum"
    assert loaded_after(code, tmp_path) == []


def test_list_reads_the_registry_only(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        store.apply()
    assert loaded_after(run_cli("--repo", str(example_repo), "list"), example_repo) == ["sqlalchemy"]


def test_plan_checks_sources_without_pandas_or_online_stores(example_repo: Path) -> None:
    loaded = loaded_after(run_cli("--repo", str(example_repo), "plan"), example_repo)
    assert "duckdb" in loaded  # it reads the sources' schemas
    assert not {"pandas", "polars", "redis", "fastapi", "uvicorn"} & set(loaded)


def test_public_names_import_lazily_and_stay_importable() -> None:
    for name in feature_store.__all__:
        assert getattr(feature_store, name) is not None
    assert feature_store.FeatureStore is FeatureStore
    assert set(feature_store.__all__) <= set(dir(feature_store))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        feature_store.NoSuchThing  # noqa: B018
    with pytest.raises(ImportError):
        from feature_store import NoSuchThing  # noqa: F401
