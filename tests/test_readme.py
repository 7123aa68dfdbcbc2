"""The README's Python examples run as written, against a copy of the example repo."""

from __future__ import annotations

import ast
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feature_store import FeatureStore, example

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 2


def test_readme_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    example.generate(repo / "data")  # the data `make demo` generates
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["training"]) == 4  # type: ignore[arg-type]
    printed = printed_literals()
    assert printed, "the README shows no printed value to check"
    for expression, shown in printed:  # what a comment says a print shows is what it shows
        assert eval(expression, namespace) == shown, expression


def printed_literals() -> list[tuple[str, object]]:
    """``print(EXPR)  # LITERAL`` lines of the README's Python blocks, as (EXPR, the LITERAL's value)."""
    found = []
    for block in python_blocks():
        for line in block.splitlines():
            match = re.fullmatch(r"print\((.+)\)\s+#\s*(.+)", line.strip())
            if match:
                try:
                    found.append((match.group(1), ast.literal_eval(match.group(2))))
                except (ValueError, SyntaxError):  # an abridged value ({..., ...}): nothing to compare
                    continue
    return found


def test_readme_data_is_fresh(tmp_path: Path) -> None:
    """The data the README's examples (and `make demo`) use ends at the current hour, so that features of
    windows ending now hold values: online, 30-day counts are not all 0 and every view has online entities."""
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    data = example.generate(repo / "data", customers=300, days=60, seed=3)
    before = datetime.now(UTC)
    assert before - timedelta(hours=1) < data.end <= before
    with FeatureStore(repo) as store:
        store.apply()
        written = {r.view: r.rows_written for r in store.materialize() if r.part == "online"}
        assert all(written.values()) and set(written) == {"customer_spend", "customer_habits", "customer_profile"}
        ids = list(range(1, 301))
        online = store.get_online_features(["customer_spend:txn_count_30d"], {"customer_id": ids})
        assert sum(1 for count in online.values["txn_count_30d"] if count) > 100
