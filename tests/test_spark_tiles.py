"""Offline tiles on Spark (offline/spark/tiles.py): training sets read them with the raw path's values (and
DuckDB's), incremental runs equal a full rebuild, reruns are idempotent, a changed definition or file rebuilds,
teardown removes them, and a ``feature-store materialize`` killed with SIGKILL at random points then rerun equals
a clean run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_store.config import RepoConfig, load_config
from feature_store.store import FeatureStore
from tests.spark_fixtures import kill_seed, kill_trials, spark_session
from tests.test_materialize import START, definitions, queries, write_events

pytestmark = pytest.mark.spark
FEATURES = ["spend:s", "spend:m", "spend:c", "spend:mx", "spend:l", "spend:sd"]
SPARK_YAML = ('project: sparktiles\noffline_store: {type: spark, master: "local[2]", warehouse: data/spark, '
              'conf: {spark.sql.shuffle.partitions: "2", spark.default.parallelism: "2"}}\n'
              'online_store: {type: sqlite, path: data/online.db}\n')


def tx_only() -> list[object]:
    return definitions()[:3]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "data" / "tx").mkdir(parents=True)
    (tmp_path / "feature_store.yaml").write_text(SPARK_YAML)
    write_events(tmp_path / "data" / "tx" / "part1.parquet")
    with spark(tmp_path) as store:
        store.apply(tx_only())
    return tmp_path


def spark(repo: Path) -> FeatureStore:
    return FeatureStore(repo, spark=spark_session())


def duckdb(repo: Path) -> FeatureStore:
    config = load_config(repo)
    return FeatureStore(repo, RepoConfig(**{**config.model_dump(), "offline_store": {"type": "duckdb",
                                                                                      "path": "data/duck.db"}}))


def training(store: FeatureStore, days: int = 45) -> pd.DataFrame:
    return store.get_historical_features(queries(days=days), FEATURES).to_df()


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9)


def tiles_of(repo: Path) -> dict[str, pd.DataFrame]:
    """Every hop's committed tiles (what the newest manifest names), sorted."""
    out = {}
    for folder in sorted((repo / "data" / "spark" / "tiles" / "spend").iterdir()):
        manifests = sorted((folder / "_manifest").glob("*.json"))
        manifest = json.loads(manifests[-1].read_text())
        parts = [pq.read_table(folder / run / f"bucket={bucket}").to_pandas()
                 for bucket, run in manifest["buckets"].items()]
        frame = pd.concat(parts, ignore_index=True)
        out[folder.name] = frame.sort_values(["customer_id", "__pos"]).reset_index(drop=True)[sorted(frame.columns)]
    return out


def manifests(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in (repo / "data" / "spark").rglob("_manifest/*.json"))


def test_training_sets_read_tiles_with_the_raw_values_and_duckdbs(repo: Path) -> None:
    with spark(repo) as store, duckdb(repo) as duck:
        duck.apply(tx_only())
        raw = training(store)
        results = store.materialize(end=START + timedelta(days=20, hours=5, minutes=17), online=False)
        assert {r.part for r in results} == {"hop 1h", "hop 1d"}
        assert all(r.rows_written > 0 and r.rebuilt for r in results)
        by_part = {r.part: r.watermark for r in results}
        assert by_part["hop 1h"] == START + timedelta(days=20, hours=5)
        assert by_part["hop 1d"] == START + timedelta(days=20)
        engine = store.offline
        plan = engine.plan(store.offline_catalog(), "spend", _resolved(store))  # type: ignore[attr-defined]
        stored = engine.stored_tiles(store.offline_catalog(), plan)  # type: ignore[attr-defined]
        assert {s.hop for s, _ in stored} == {3_600_000_000, 86_400_000_000}
        same(training(store), raw)
        same(training(store), training(duck))
        # a past cutoff cannot use tiles holding later data: the raw path, same values as DuckDB's
        cut = START + timedelta(days=12)
        rows = queries()
        same(store.get_historical_features(rows, FEATURES, available_before=cut).to_df(),
             duck.get_historical_features(rows, FEATURES, available_before=cut).to_df())


def _resolved(store: FeatureStore) -> list[object]:
    from feature_store.references import resolve_features

    return list(resolve_features(store.offline_catalog(), FEATURES, False))


def test_old_events_of_a_key_reach_the_kernel_as_tiles(repo: Path) -> None:
    """Below the watermark only late events and those in a query's own tile are read one by one."""
    from feature_store.offline.spark.retrieval import _events_needed, entity_frame

    path = repo / "data" / "tx" / "part1.parquet"
    events = pd.read_parquet(path)
    events["created"] = events["event_timestamp"] + pd.to_timedelta(events.index % 60, "s")  # few late events
    events.to_parquet(path, index=False)
    with spark(repo) as store:
        store.materialize(end=START + timedelta(days=29), online=False)
        engine: object = store.offline
        catalog = store.offline_catalog()
        plan = engine.plan(catalog, "spend", _resolved(store))  # type: ignore[attr-defined]
        stored = [s for s, _ in engine.stored_tiles(catalog, plan)]  # type: ignore[attr-defined]
        entities = entity_frame(spark_session(), queries(n=20), ["customer_id"])[0]
        q = entities.select("customer_id", "__t").distinct()
        rows = engine.events(plan)  # type: ignore[attr-defined]
        assert len(stored) == 2 and _events_needed(rows, q, plan, stored).count() < rows.count() / 10
        same(training(store), training(duckdb_applied(repo)))


def duckdb_applied(repo: Path) -> FeatureStore:
    duck = duckdb(repo)
    duck.apply(tx_only())
    return duck


def test_incremental_runs_equal_a_full_rebuild_and_reruns_write_nothing(repo: Path) -> None:
    with spark(repo) as store:
        first = {r.part: r for r in store.materialize(end=START + timedelta(days=10, hours=3), online=False)}
        # new events land in a new file, all available after the watermark: later ones, and late arrivals for
        # tiles already written (which no tile holds)
        path = repo / "data" / "tx" / "part2.parquet"
        new = write_events(path, seed=5, offset_days=9)
        new[new["created"] >= pd.Timestamp(first["hop 1h"].watermark)].to_parquet(path, index=False)
        assert (pd.read_parquet(path)["event_timestamp"] < pd.Timestamp(first["hop 1h"].watermark)).sum() > 0
        second = {r.part: r for r in store.materialize(end=START + timedelta(days=61), online=False)}
        assert not second["hop 1h"].rebuilt and second["hop 1h"].rows_written > 0
        assert second["hop 1h"].previous_watermark == first["hop 1h"].watermark
        incremental, state = tiles_of(repo), manifests(repo)
        got = training(store, days=70)
        again = store.materialize(end=START + timedelta(days=61), online=False)
        assert all(r.rows_written == 0 and not r.rebuilt for r in again)
        assert manifests(repo) == state
        store.materialize(end=START + timedelta(days=5), online=False)  # a watermark never moves back
        assert manifests(repo) == state
        same(training(store, days=70), got)
        full = {r.part: r for r in store.materialize(end=START + timedelta(days=61), full=True, online=False)}
        assert all(r.rebuilt for r in full.values())
        rebuilt = tiles_of(repo)
    assert incremental.keys() == rebuilt.keys()
    for hop in rebuilt:  # the increments hold exactly the rebuild's tiles
        pd.testing.assert_frame_equal(incremental[hop], rebuilt[hop], check_exact=False, rtol=1e-12)
    same(got, training(duckdb_applied(repo), days=70))


def test_a_changed_definition_or_file_rebuilds(repo: Path) -> None:
    with spark(repo) as store:
        store.materialize(end=START + timedelta(days=15), online=False)
        store.apply(definitions(window="14d")[:3])
        expected = training(duckdb(repo))
        results = store.materialize(end=START + timedelta(days=15), online=False)
        assert all(r.rebuilt for r in results)
        same(training(store), expected)
        path = repo / "data" / "tx" / "part1.parquet"
        write_events(path, seed=99)  # the data is rewritten in place: the tiles are stale, and not read
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
        duck = duckdb(repo)
        same(training(spark(repo)), training(duck))
        assert all(r.rebuilt for r in store.materialize(end=START + timedelta(days=15), online=False))
        same(training(store), training(duck))


def test_teardown_removes_the_tiles(repo: Path) -> None:
    from feature_store.teardown import teardown

    with spark(repo) as store:
        store.materialize(end=START + timedelta(days=15), online=False)
        assert manifests(repo)
        report = teardown(store)
    assert set(report.offline_tables) == {"tiles/spend/hop=3600000000", "tiles/spend/hop=86400000000"}
    assert not (repo / "data" / "spark" / "tiles").exists()


END = START + timedelta(days=28, hours=7)


def _killed_cli(repo: Path, full: bool, delay: float) -> bool:
    """``feature-store materialize`` in a process group of its own (Python and its JVM), SIGKILLed after ``delay``
    seconds; True when it had not finished."""
    command = [sys.executable, "-m", "feature_store.cli", "--repo", str(repo), "materialize", "--end",
               END.strftime("%Y-%m-%dT%H:%M:%S"), *(["--full"] if full else [])]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    time.sleep(delay)
    killed = proc.poll() is None
    with contextlib.suppress(ProcessLookupError):  # finished, and its whole group gone with it
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


@pytest.mark.slow
def test_materialize_killed_at_random_points_then_rerun_equals_a_clean_run(repo: Path, tmp_path: Path) -> None:
    write_events(repo / "data" / "tx" / "part2.parquet", n=20_000, seed=7)
    clean = tmp_path / "clean"
    shutil.copytree(repo, clean)
    with spark(clean) as store:
        store.materialize(end=END, online=False)
        want_tiles, want = tiles_of(clean), training(store)
    seed = kill_seed()
    rng = random.Random(seed)
    killed = 0
    for trial in range(kill_trials(3)):
        start = rng.choice(["nothing", "earlier", "complete"])
        full = rng.random() < 0.5
        shutil.rmtree(repo / "data" / "spark", ignore_errors=True)
        with spark(repo) as store:
            if start != "nothing":
                store.materialize(end=END if start == "complete" else END - timedelta(days=9), online=False)
        delay = rng.uniform(3.0, 25.0)
        killed += _killed_cli(repo, full, delay)
        with spark(repo) as store:
            store.materialize(end=END, online=False)
            what = (f"trial {trial} (KILL_SEED={seed}; from {start}, {'--full' if full else 'incremental'}, killed "
                    f"after {delay:.1f} s)")
            got = tiles_of(repo)
            assert got.keys() == want_tiles.keys(), what
            for hop in got:
                pd.testing.assert_frame_equal(got[hop], want_tiles[hop], check_exact=False, rtol=1e-12, obj=what)
            same(training(store), want)
    assert killed >= 1, f"no run was killed before it finished (KILL_SEED={seed})"


def test_the_example_repo_with_pushes_and_every_function_equals_duckdb(tmp_path: Path) -> None:
    """Push sources, several views and hops, and functions that read events rather than tiles (LastK, the
    sketches): after Spark's offline materialization its training set still equals DuckDB's."""
    from tests.server_fixtures import make_repo
    from tests.test_spark_engine import EXTRA_PY, VIEWS, entity_rows, spark_store

    repo = make_repo(tmp_path / "repo", "", "", customers=40, online_store={"type": "sqlite", "path": "data/online.db"})
    (repo / "extra.py").write_text(EXTRA_PY)
    features = [f"{view}:{feature}" for view, names in VIEWS.items() for feature in names]
    with FeatureStore(repo) as duck, spark_store(repo) as store:
        duck.apply()
        duck.push_log.settle_seconds = store.push_log.settle_seconds = 0.0
        store.push_log.bucket_seconds = 1e-6  # type: ignore[attr-defined]
        stamp = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
        duck.push("transactions_push", {"transaction_id": [7, 8], "customer_id": [3, 4], "event_timestamp": [stamp] * 2,
                                        "created": [stamp] * 2, "amount": [1.5, 2.0], "category": ["travel"] * 2})
        results = store.materialize(online=False)
        assert {r.view for r in results} >= {"customer_spend", "customer_live", "customer_extra"}
        assert sum(r.rows_written for r in results) > 0
        rows = entity_rows(list(range(1, 45)))
        expected = duck.get_historical_features(rows, features).to_df()
        same(store.get_historical_features(rows, features).to_df(), expected)
