"""CLI tables at 80 columns in a pipe or a CI log: no name cut or broken, no line wider than the console."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from feature_store import FeatureStore
from feature_store.cli import main
from feature_store.cli_output import Col, Grid

ROOT = Path(__file__).resolve().parent.parent
NARROW = {"COLUMNS": "80"}


def run80(repo: Path, *args: str) -> str:
    """A command with COLUMNS=80 and stdout not a terminal (CliRunner's stdout is a buffer)."""
    result = CliRunner().invoke(main, ["--repo", str(repo), *args], env=NARROW, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def check(output: str, names: Iterable[str], width: int = 80) -> None:
    lines = output.splitlines()
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    assert "…" not in output
    tokens = {token.strip(",()[]'\":") for line in lines for token in line.split()}
    missing = sorted(name for name in names if name not in tokens)
    assert not missing, f"names cut, broken or missing: {missing}\n{output}"


@pytest.fixture
def applied(example_repo: Path) -> Path:
    with FeatureStore(example_repo) as store:
        store.apply()
    return example_repo


def catalog_names(repo: Path) -> set[str]:
    with FeatureStore(repo) as store:
        catalog = store.catalog()
        names = {*catalog.entities, *catalog.sources, *catalog.views, *catalog.services}
        names |= {f"{v.name}:{f}" for v in catalog.views.values() for f in v.feature_names}
        names |= {k for e in catalog.entities.values() for k in e.join_keys}
    return names | {"data/transactions.parquet", "data/profiles.parquet"}


def test_list_and_describe(applied: Path) -> None:
    check(run80(applied, "list"), catalog_names(applied))
    with FeatureStore(applied) as store:
        view = store.get_feature_view("customer_spend")
    described = run80(applied, "describe", "customer_spend")
    check(described, {"customer_spend", "transactions_push", *view.feature_names})


def test_plan_with_a_change(applied: Path) -> None:
    check(run80(Path(applied), "plan"), set())  # "No changes" sentence
    features = applied / "features.py"
    features.write_text(features.read_text().replace('name="spend_7d"', 'name="spend_last_seven_days"'))
    check(run80(applied, "plan"), {"customer_spend", "fraud_model_v1"})


def test_materialize_get_online_verify_and_training_set(applied: Path) -> None:
    check(run80(applied, "materialize"), {"customer_spend", "customer_habits", "customer_profile"})
    online = run80(applied, "get-online", "--entities", "customer_id=1,2,3,4,5,999999", "--service",
                   "fraud_model_v1")
    check(online, {"avg_spend_90d", "spend_stddev_30d", "txn_count_1h", "customer_id=999999", "NOT_FOUND"})
    check(run80(applied, "verify", "--sample", "20"), {"customer_spend", "spend_stddev_30d", "lifetime_spend"})
    trained = run80(applied, "training-set", "--entities", "data/entity_rows.parquet", "--service",
                    "fraud_model_v1", "--full-feature-names")
    check(trained, {"customer_spend__avg_spend_90d", "customer_habits__spend_stddev_30d",
                    "customer_profile__age", "event_timestamp"})


def test_list_in_a_pipe_of_a_real_process(applied: Path) -> None:
    env = {**os.environ, **NARROW,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("FORCE_COLOR", None)
    done = subprocess.run([sys.executable, "-m", "feature_store", "--repo", str(applied), "list"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    check(done.stdout, catalog_names(applied))
    assert "━" not in done.stdout and "\x1b[" not in done.stdout  # plain text: no box, no colours


def render(grid: Grid, width: int, terminal: bool) -> str:
    console = Console(width=width, force_terminal=terminal, color_system=None, record=True)
    with console.capture() as captured:
        grid.show(console)
    return captured.get()


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "framed"])
def test_a_wide_table_wraps_cells_at_spaces_and_keeps_words(terminal: bool) -> None:
    grid = Grid("Sources", "name", "reads", Col("rows", right=True))
    grid.add_row("transactions_push", "pushed events + transactions (data/transactions.parquet)", "1,234")
    grid.add_row("profiles", Text("data/profiles.parquet", style="dim"), "7")
    out = render(grid, 50, terminal)
    check(out, {"transactions_push", "data/transactions.parquet", "data/profiles.parquet", "1,234"}, width=50)
    assert len(out.splitlines()) > 4  # the long cell wrapped


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "framed"])
def test_a_table_too_wide_for_its_words_prints_blocks(terminal: bool) -> None:
    grid = Grid("Features", "reference", "function", "window")
    grid.add_row("customer_habits:spend_stddev_30d_of_a_long_name", "count_distinct_of_a_long_name", "30d")
    out = render(grid, 60, terminal)
    check(out, {"customer_habits:spend_stddev_30d_of_a_long_name", "count_distinct_of_a_long_name"}, width=60)
    assert "reference: customer_habits:spend_stddev_30d_of_a_long_name" in out


def test_an_empty_table_says_so() -> None:
    assert render(Grid("Feature services", "name", "features"), 80, False).split() == ["Feature", "services",
                                                                                       "(none)"]


def test_monitor_drift_freshness_and_skew(applied: Path, tmp_path: Path) -> None:
    import pandas as pd

    with (applied / "feature_store.yaml").open("a") as config:
        config.write("monitoring: {log_served: true}\n")
    run80(applied, "materialize")
    with FeatureStore(applied) as store:
        service = store.get_feature_service("fraud_model_v1")
        training = store.get_historical_features(pd.read_parquet(applied / "data" / "entity_rows.parquet"), service,
                                                 full_feature_names=True).to_df()
        store.save_profile("fraud_model_v1_training_set", training)
        store.get_online_features(service, {"customer_id": list(range(1, 60))}, full_feature_names=True)
    drift = run80(applied, "monitor", "--reference", "fraud_model_v1_training_set", "--current", "served:..")
    check(drift, {"customer_spend__avg_spend_90d", "customer_habits__spend_stddev_30d", "customer_profile__age",
                  "customer_spend", "customer_habits", "customer_profile", "fraud_model_v1_training_set"})
    check(run80(applied, "monitor", "--skew"), {"customer_spend__avg_spend_90d", "customer_profile__age"})
