"""`feature-store monitor`: parquet files, saved profiles and served-log ranges compared; the table at 80
columns, --json, --html (self-contained, a plot per feature), --fail-on-drift's exit status 3."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from feature_store.cli import main
from feature_store.errors import MonitoringError
from feature_store.monitoring.monitor import served_range
from feature_store.store import FeatureStore
from tests.test_cli_width import check


def run(repo: Path, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--repo", str(repo), "monitor", *args], env={"COLUMNS": "80"},
                                catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def tables(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    n = 4000
    reference = pd.DataFrame({"customer_id": np.arange(n), "spend_in_the_last_thirty_days": rng.normal(100, 10, n),
                              "segment": rng.choice(["student", "business"], n)})
    current = pd.DataFrame({"customer_id": np.arange(n), "spend_in_the_last_thirty_days": rng.normal(110, 10, n),
                            "segment": rng.choice(["student", "business", "retired"], n)})
    paths = tmp_path / "reference.parquet", tmp_path / "current.parquet"
    reference.to_parquet(paths[0])
    current.to_parquet(paths[1])
    return paths


@pytest.fixture
def applied(example_repo: Path) -> Path:
    with FeatureStore(example_repo) as store:
        store.apply()
    return example_repo


def test_parquet_against_parquet_json_html_and_exit_status(applied: Path, tmp_path: Path) -> None:
    reference, current = tables(tmp_path)
    out = run(applied, "--reference", str(reference), "--current", str(current), "--json", str(tmp_path / "m.json"),
              "--html", str(tmp_path / "m.html"))
    check(out, {"spend_in_the_last_thirty_days", "segment", "retired", "customer_spend", "customer_profile"})
    assert "customer_id" not in out  # an entity key: not a feature
    result = json.loads((tmp_path / "m.json").read_text())
    spend, segment = result["features"]["spend_in_the_last_thirty_days"], result["features"]["segment"]
    assert spend["drifted"] is True and spend["psi"] > 0.5 and spend["unseen"] == []
    assert segment["unseen"] == ["retired"] and 0.28 < segment["unseen_share"] < 0.39 and segment["drifted"]
    assert set(result["freshness"]) == {"customer_spend", "customer_habits", "customer_profile"}
    page = (tmp_path / "m.html").read_text()
    assert page.count('class="feature"') == 2 and "Plotly.newPlot" in page
    assert "<script src=" not in page  # plotly.js inlined: the page opens offline
    run(applied, "--reference", str(reference), "--current", str(current), "--fail-on-drift", code=3)
    run(applied, "--reference", str(reference), "--current", str(reference), "--fail-on-drift")


def test_saved_profile_as_reference_and_per_feature_drift_recorded(applied: Path, tmp_path: Path) -> None:
    reference, current = tables(tmp_path)
    with FeatureStore(applied) as store:
        store.save_profile("baseline", str(reference))
    run(applied, "--reference", "baseline", "--current", str(reference), "--no-record")
    with FeatureStore(applied) as store:
        assert store.registry.drift_scores() == {}
    run(applied, "--reference", "baseline", "--current", str(current), "--fail-on-drift", code=3)
    with FeatureStore(applied) as store:
        scores = store.registry.drift_scores()
    assert scores["spend_in_the_last_thirty_days"][0] > 0.5 and scores["segment"][1] == 0.2


def test_errors_name_the_input(applied: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--repo", str(applied), "monitor", "--reference", "nope", "--current",
                                       "served:2026-01-01..2026-01-02"])
    assert result.exit_code == 1 and "no saved profile 'nope'" in result.output
    result = CliRunner().invoke(main, ["--repo", str(applied), "monitor", "--reference", "x"])
    assert result.exit_code == 1 and "needs --reference and --current" in result.output


def test_served_ranges() -> None:
    assert served_range("2026-12-01..2026-12-05") == (datetime(2026, 12, 1, tzinfo=UTC),
                                                      datetime(2026, 12, 6, tzinfo=UTC))  # the end day included
    start, end = served_range("2026-12-01T08:00..2026-12-01T09:30+01:00")
    assert start == datetime(2026, 12, 1, 8, tzinfo=UTC) and end == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    for bad in ("2026-12-01", "yesterday..today", "2026-12-05..2026-12-01"):
        with pytest.raises(MonitoringError):
            served_range(bad)


def test_a_views_source_over_a_time_range(applied: Path, tmp_path: Path) -> None:
    events = pd.read_parquet(applied / "data" / "transactions.parquet")
    end = events["event_timestamp"].max().floor("D")
    first, middle = (end - pd.Timedelta(days=20)).date(), (end - pd.Timedelta(days=10)).date()
    out = run(applied, "--reference", f"source:customer_spend:{first}..{middle}", "--current",
              f"source:customer_spend:{middle}..", "--json", str(tmp_path / "m.json"))
    check(out, {"amount", "category"})
    result = json.loads((tmp_path / "m.json").read_text())
    stamps = events["event_timestamp"]
    start_ts, middle_ts = pd.Timestamp(first, tz="UTC"), pd.Timestamp(middle, tz="UTC") + pd.Timedelta(days=1)
    assert result["reference_rows"] == int(((stamps >= start_ts) & (stamps < middle_ts)).sum())
    assert "customer_id" not in result["features"] and "created" not in result["features"]
    assert not result["features"]["category"]["drifted"]
    result = CliRunner().invoke(main, ["--repo", str(applied), "monitor", "--reference", "source:customer_spend",
                                       "--current", "x.parquet"])
    assert result.exit_code == 1 and "source:VIEW:START..END" in result.output
