"""Monitoring with a real feature server process on Redis: its reads are logged; skew recomputes them offline and
finds nothing on a healthy deployment, then finds a value tampered in the online store; /metrics counts logged and
dropped reads and exports freshness per view and the last drift score per feature."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from feature_store.cli import main
from feature_store.monitoring.skew import skew
from feature_store.online.read.entities import coerced
from feature_store.online.tiles.columnar import pack_key_columns
from feature_store.store import FeatureStore
from tests.server_fixtures import (
    FEATURES_10,
    SERVER_REDIS_DB,
    Server,
    delete_keys,
    make_repo,
    run_server,
    unique_prefix,
    with_db,
)

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

LOGGING = "monitoring: {log_served: true, flush_seconds: 0.2}\n"


def wait_for(condition: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def read(server: Server, ids: list[int], features: list[str] = FEATURES_10) -> dict[str, Any]:
    with server.client() as client:
        answer = client.post("/get-online-features", json={"features": features, "entities": {"customer_id": ids}})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def logged_rows(store: FeatureStore, start: datetime) -> int:
    return len(store.served_features(start, datetime.now(UTC) + timedelta(seconds=1)))


def metric(text: str, name: str, labels: str = "") -> float | None:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def tamper(store: FeatureStore, view_feature: str, victim: int, donor: int) -> None:
    """The online value of ``victim`` in the feature's view becomes ``donor``'s, behind the library's back."""
    version, catalog = store.serving_catalog()
    plan = store.online.plans(catalog, version, [view_feature], False)[0]
    packed = pack_key_columns([coerced([victim, donor], kind, key)
                               for key, kind in zip(plan.keys, plan.key_kinds, strict=True)])
    keys = [plan.prefix + key for key in packed]
    _, value = store.online.store.read(keys)
    assert value is not None
    store.online.store.write([(keys[0], value, None)])


@pytest.fixture
def repo(tmp_path: Path, redis_url: str) -> Any:
    path = make_repo(tmp_path / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix(), LOGGING, customers=60)
    yield path
    delete_keys(path)


def test_served_reads_are_logged_skew_is_zero_then_finds_a_tampered_value(repo: Path, tmp_path: Path) -> None:
    start = datetime.now(UTC)
    ids = list(range(1, 31))
    with run_server(repo, tmp_path / "server.log") as server, FeatureStore(repo) as store:
        for chunk in range(0, 30, 10):
            read(server, ids[chunk:chunk + 10])
        assert wait_for(lambda: logged_rows(store, start) == 30)
        logged = store.served_features(start, datetime.now(UTC))
        assert sorted(logged["customer_id"]) == ids
        healthy = skew(store, start, datetime.now(UTC))
        assert set(healthy.features) == {ref.replace(":", "__") for ref in FEATURES_10}
        assert all(f.compared == 30 for f in healthy.features.values())
        assert healthy.ok, {n: f.examples for n, f in healthy.features.items() if f.mismatches}

        ages = pd.read_parquet(repo / "data" / "profiles.parquet").sort_values("updated_at").groupby(
            "customer_id")["age"].last()
        victim, donor = next((a, b) for a in ids for b in ids if ages[a] != ages[b])
        tamper(store, "customer_profile:age", victim, donor)
        tampered_at = datetime.now(UTC)
        answer = read(server, [victim, donor], ["customer_profile:age"])
        assert answer["results"][1]["values"][0] == ages[donor]  # the server serves the tampered value
        assert wait_for(lambda: logged_rows(store, tampered_at) == 2)
        found = skew(store, tampered_at, datetime.now(UTC)).features["customer_profile__age"]
        assert found.compared == 2 and found.mismatches == 1 and found.mismatch_rate == 0.5
        assert f"customer_id={victim} at" in found.examples[0]

        result = CliRunner().invoke(main, ["--repo", str(repo), "monitor", "--skew", "--current", "served:.."],
                                    env={"COLUMNS": "80"})
        assert result.exit_code == 1 and "customer_profile__age" in result.output, result.output

        reference = tmp_path / "reference.parquet"
        logged.to_parquet(reference)
        result = CliRunner().invoke(main, ["--repo", str(repo), "monitor", "--reference", str(reference),
                                           "--current", "served:.."], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        with server.client() as client:
            text = client.get("/metrics").text
    assert metric(text, "feature_store_served_log_rows_total") == 32
    assert metric(text, "feature_store_served_log_dropped_total") == 0
    watermark_age = metric(text, "feature_store_view_watermark_age_seconds", '{view="customer_spend"}')
    assert watermark_age is not None and watermark_age >= 0
    assert metric(text, "feature_store_view_last_push_age_seconds", '{view="customer_live"}') is None  # no push yet
    psi = metric(text, "feature_store_feature_drift_psi", '{feature="customer_profile__age"}')
    assert psi is not None and psi >= 0
    assert metric(text, "feature_store_feature_drift_threshold", '{feature="customer_profile__age"}') == 0.2


def test_a_full_queue_drops_reads_and_metrics_count_them(repo: Path, tmp_path: Path) -> None:
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace(LOGGING, "monitoring: {log_served: true, queue_size: 2, "
                                                          "flush_seconds: 3600}\n"))
    with run_server(repo, tmp_path / "server.log") as server:
        reads = 0
        text = ""
        while reads < 2000:  # faster than the writer drains (every 0.2 s) a queue of 2: some are dropped
            read(server, [1, 2])
            reads += 1
            if reads % 20 == 0:
                with server.client() as client:
                    text = client.get("/metrics").text
                if (metric(text, "feature_store_served_log_dropped_total") or 0) > 0:
                    break
    dropped = metric(text, "feature_store_served_log_dropped_total")
    assert dropped is not None and dropped > 0
    with FeatureStore(repo) as store:  # the server wrote what it kept when it stopped
        logged = len(store.served_features(datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC)))
    assert logged + 2 * dropped == 2 * reads  # every read logged (2 rows) or counted as dropped


def test_a_killed_server_leaves_whole_log_files(repo: Path, tmp_path: Path) -> None:
    import signal

    start = datetime.now(UTC)
    with run_server(repo, tmp_path / "server.log") as server, FeatureStore(repo) as store:
        read(server, [1, 2, 3])
        assert wait_for(lambda: logged_rows(store, start) == 3)  # written (every 0.2 s here)
        for _ in range(50):
            read(server, [4])
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        logged = store.served_features(start, datetime.now(UTC))  # every file reads: no half-written one counts
    assert logged["customer_id"].tolist()[:3] == [1, 2, 3]
    assert 3 <= len(logged) <= 53 and set(logged["customer_id"].tolist()[3:]) <= {4}
