"""A repo file that fails on import is reported with its file and line; --debug adds the traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from feature_store import FeatureStore
from feature_store.cli import main
from feature_store.errors import DefinitionError, RepoLoadError, SourceNotFoundError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo with the example config and one good definition."""
    path = tmp_path / "repo"
    path.mkdir()
    shutil.copy(ROOT / "feature_repo" / "feature_store.yaml", path / "feature_store.yaml")
    (path / "good.py").write_text('from feature_store import Entity\n\ncustomer = Entity(name="customer", '
                                  'join_keys=["customer_id"])\n')
    return path


def plan_error(repo: Path) -> pytest.ExceptionInfo[Exception]:
    with pytest.raises(Exception) as info, FeatureStore(repo) as store:
        store.plan()
    return info


def test_runtime_error_names_file_and_line(repo: Path) -> None:
    (repo / "broken.py").write_text("rate = 1\n\nscaled = rate / 0\n")
    err = plan_error(repo).value
    assert isinstance(err, RepoLoadError)
    assert err.message == "importing broken.py failed: ZeroDivisionError: division by zero (line 3: scaled = rate / 0)"
    assert err.details == {"file": "broken.py", "line": 3}
    assert isinstance(err.__cause__, ZeroDivisionError)


def test_error_in_a_helper_file_names_the_helper(repo: Path) -> None:
    (repo / "helpers.py").write_text("def weight():\n    return {}['w']\n")
    (repo / "broken.py").write_text("import helpers\n\nw = helpers.weight()\n")
    err = plan_error(repo).value
    assert isinstance(err, RepoLoadError)
    assert "importing broken.py failed: KeyError: 'w' (helpers.py, line 2: return {}['w'])" in err.message
    assert err.details == {"file": "helpers.py", "line": 2}


def test_syntax_error_is_located_once(repo: Path) -> None:
    (repo / "broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    err = plan_error(repo).value
    assert isinstance(err, RepoLoadError)
    assert err.message == "importing broken.py failed: SyntaxError: invalid syntax (line 2: def f(:)"
    assert err.details == {"file": "broken.py", "line": 2}


def test_definition_errors_get_the_line(repo: Path) -> None:
    (repo / "broken.py").write_text('from feature_store import Entity, Sum\n\n\ns = Sum("amount", window="0d")\n')
    err = plan_error(repo).value
    assert isinstance(err, DefinitionError)
    assert err.message.startswith("broken.py: Sum('amount') window: must be positive, got '0d'")
    assert err.message.endswith("""(line 4: s = Sum("amount", window="0d"))""")
    assert err.details["line"] == 4


def test_a_feature_store_error_that_names_a_file_keeps_it(repo: Path) -> None:
    """It used to crash with a raw KeyError: 'file' (the file was passed twice)."""
    (repo / "broken.py").write_text(
        "from feature_store.errors import SourceNotFoundError\n\n"
        'raise SourceNotFoundError("data/x.parquet matches no file", file="data/x.parquet")\n'
    )
    err = plan_error(repo).value
    assert isinstance(err, SourceNotFoundError)
    assert err.message.startswith("broken.py: data/x.parquet matches no file (line 3: raise SourceNotFoundError(")
    assert err.details == {"file": "data/x.parquet", "repo_file": "broken.py", "repo_line": 3}
    assert isinstance(err.__cause__, SourceNotFoundError)


def test_cli_prints_file_and_line_and_the_traceback_only_with_debug(repo: Path) -> None:
    (repo / "broken.py").write_text("rate = 1\n\nscaled = rate / 0\n")
    plain = CliRunner().invoke(main, ["--repo", str(repo), "plan"])
    assert plain.exit_code == 1
    assert "RepoLoadError: importing broken.py failed: ZeroDivisionError: division by zero (line 3:" in plain.output
    assert "Traceback" not in plain.output and "--debug" in plain.output

    debug = CliRunner().invoke(main, ["--repo", str(repo), "--debug", "plan"])
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.output
    assert f'File "{repo / "broken.py"}", line 3' in debug.output  # the user's frame, with its code
    assert "scaled = rate / 0" in debug.output
    assert debug.output.rstrip().splitlines()[-1].startswith("error: RepoLoadError: importing broken.py failed")


def test_cli_reports_an_error_that_names_a_file(repo: Path) -> None:
    (repo / "broken.py").write_text(
        "from feature_store.errors import SourceNotFoundError\n\n"
        'raise SourceNotFoundError("data/x.parquet matches no file", file="data/x.parquet")\n'
    )
    result = CliRunner().invoke(main, ["--repo", str(repo), "plan"])
    assert result.exit_code == 1
    assert "error: SourceNotFoundError: broken.py: data/x.parquet matches no file (line 3:" in result.output
    assert "KeyError" not in result.output and "Traceback" not in result.output
