"""The served-value log of the SDK: what reads answered, sampled, through a bounded queue that drops (and counts)
rather than blocks, in parquet files partitioned by day, read back by time range, removed by teardown."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feature_store.store import FeatureStore

REFS = ["customer_spend:spend_7d", "customer_profile:segment", "customer_spend:last_category"]


def logging_repo(repo: Path, **monitoring: object) -> Path:
    settings = {"log_served": "true", **{k: str(v) for k, v in monitoring.items()}}
    inner = ", ".join(f"{k}: {v}" for k, v in settings.items())
    with (repo / "feature_store.yaml").open("a") as config:
        config.write(f"monitoring: {{{inner}}}\n")
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize()
    return repo


def test_reads_are_logged_with_keys_time_values_and_statuses(example_repo: Path) -> None:
    repo = logging_repo(example_repo)
    start = datetime.now(UTC)
    with FeatureStore(repo) as store:
        answered = store.get_online_features(REFS, {"customer_id": [1, 2, 999_999]})
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # a read "as of": logged at that time
        store.get_online_features(store.get_feature_service("fraud_model_v1"), [{"customer_id": 3}],
                                  full_feature_names=True, now=at)
        logged = store.served_features(start, datetime.now(UTC) + timedelta(seconds=1))
        earlier = store.served_features(at, at + timedelta(seconds=1))
    assert logged["customer_id"].tolist() == [1, 2, 999_999]
    assert logged["customer_spend__spend_7d"].tolist() == answered.values["spend_7d"]
    assert logged["customer_profile__segment"].tolist()[:2] == answered.values["segment"][:2]
    assert logged["customer_spend__last_category__status"].tolist() == answered.statuses["last_category"]
    assert logged["customer_spend__last_category__status"].iloc[2] == "NOT_FOUND"
    assert (logged["request_time"] >= pd.Timestamp(start)).all()
    assert not [c for c in logged.columns if c.startswith("_fs_")]  # internal columns only for skew
    assert earlier["customer_id"].tolist() == [3] and earlier["request_time"].iloc[0] == pd.Timestamp(at)
    assert "customer_habits__spend_stddev_30d" in earlier.columns
    assert (repo / "data" / "served_log" / "demo" / "date=2026-01-02").is_dir()  # partitioned by day


def test_a_sample_rate_of_zero_logs_nothing_and_a_full_queue_drops(example_repo: Path) -> None:
    repo = logging_repo(example_repo, sample_rate=0.0)
    start = datetime.now(UTC)
    with FeatureStore(repo) as store:
        for _ in range(20):
            store.get_online_features(REFS, {"customer_id": [1]})
        assert store.served_features(start, datetime.now(UTC)).empty
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace("sample_rate: 0.0", "sample_rate: 1.0, queue_size: 5, "
                                                                      "flush_seconds: 3600"))
    with FeatureStore(repo) as store:
        assert store.served_log is not None
        reads = 0
        while store.served_log.dropped == 0 and reads < 10_000:  # faster than the writer drains: the queue fills
            store.get_online_features(REFS, {"customer_id": [1]})
            reads += 1
        assert store.served_log.dropped >= 1
        # every read is logged or counted as dropped
        assert len(store.served_features(start, datetime.now(UTC))) + store.served_log.dropped == reads


def test_half_the_reads_at_a_half_sample_rate(example_repo: Path) -> None:
    repo = logging_repo(example_repo, sample_rate=0.5)
    start = datetime.now(UTC)
    with FeatureStore(repo) as store:
        for _ in range(400):
            store.get_online_features(REFS, {"customer_id": [1, 2]})
        logged = store.served_features(start, datetime.now(UTC))
    reads = logged["request_time"].nunique()
    assert 140 < reads < 260  # binomial(400, 0.5): outside this range once in ~10^8 runs
    assert len(logged) == 2 * reads  # a read is logged whole or not at all


def test_logging_off_by_default(example_repo: Path) -> None:
    with FeatureStore(example_repo) as store:
        assert store.served_log is None


def test_teardown_removes_the_log(example_repo: Path) -> None:
    repo = logging_repo(example_repo)
    with FeatureStore(repo) as store:
        store.get_online_features(REFS, {"customer_id": [1]})
        assert store.served_log is not None
        store.served_log.flush()
        report = store.teardown()
    assert report.served_log_files == 1
    assert not (repo / "data" / "served_log" / "demo").exists()


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_sample_rate_is_a_share(example_repo: Path, rate: float) -> None:
    from feature_store.errors import ConfigError

    with (example_repo / "feature_store.yaml").open("a") as config:
        config.write(f"monitoring: {{log_served: true, sample_rate: {rate}}}\n")
    with pytest.raises(ConfigError, match="sample_rate"):
        FeatureStore(example_repo)


def test_skew_is_zero_across_pushes_and_a_materialization(example_repo: Path) -> None:
    from feature_store.monitoring.skew import skew

    repo = logging_repo(example_repo)
    start = datetime.now(UTC)
    refs = ["customer_spend:spend_7d", "customer_spend:txn_count_30d", "customer_spend:last_category",
            "customer_habits:txn_count_1h", "customer_profile:age"]
    with FeatureStore(repo) as store:
        store.push_log.settle_seconds = 0.0
        before = store.get_online_features(refs, {"customer_id": list(range(1, 40))})
        now = pd.Timestamp(datetime.now(UTC))
        store.push("transactions_push", pd.DataFrame({
            "transaction_id": [10_000_001, 10_000_002], "customer_id": [1, 2], "amount": [123.5, 7.25],
            "category": ["brand_new", "grocery"], "event_timestamp": [now, now], "created": [now, now]}))
        after = store.get_online_features(refs, {"customer_id": [1, 2, 3]})
        assert after.values["spend_7d"][0] == pytest.approx(before.values["spend_7d"][0] + 123.5)  # pushed: online
        store.materialize()  # a later watermark: reads after it are recomputed against it
        store.get_online_features(refs, {"customer_id": [1, 2, 3]})
        report = skew(store, start, datetime.now(UTC))
    assert {f.compared for f in report.features.values()} == {45}
    assert report.ok, {n: f.examples for n, f in report.features.items() if f.mismatches}


def test_writers_of_two_logs_append_at_once_and_flush_counts_each_read_once(example_repo: Path) -> None:
    import threading

    repo = logging_repo(example_repo, flush_seconds=3600)
    with FeatureStore(repo) as store, FeatureStore(repo) as other:
        for _ in range(300):
            store.get_online_features(REFS, {"customer_id": [1, 2]})
            other.get_online_features(REFS, {"customer_id": [3]})
        assert store.served_log is not None and other.served_log is not None
        threads = [threading.Thread(target=log.append) for log in (store.served_log, other.served_log,
                                                                    store.served_log)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.served_log.flush() == 600 and other.served_log.flush() == 300
        logged = store.served_features(datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC))
    assert len(logged) == 900 and sorted(set(logged["customer_id"])) == [1, 2, 3]


def test_spool_files_are_compacted_into_parquet_with_the_same_rows(example_repo: Path) -> None:
    repo = logging_repo(example_repo)
    start = datetime.now(UTC)
    with FeatureStore(repo) as store:
        for customer in range(1, 40):
            store.get_online_features(REFS, {"customer_id": [customer, customer + 1]})
        assert store.served_log is not None
        store.served_log.flush()
        folder = next((repo / "data" / "served_log" / "demo").glob("date=*"))
        assert [p.suffixes[-2:] for p in folder.iterdir()] == [[".jsonl", ".zst"]]
        (folder / ".leftover-of-a-killed-process.jsonl.zst.part").write_bytes(b"\x28\xb5\x2f")  # cut short
        end = datetime.now(UTC)
        from_spool = store.served_value_log().read(start, end, internal=True)
        assert sorted(p.suffix for p in folder.iterdir() if not p.name.startswith(".")) == [".parquet"]
        from_parquet = store.served_value_log().read(start, end, internal=True)
        assert store.compact_served_log() == 0  # nothing left to compact
    pd.testing.assert_frame_equal(from_spool, from_parquet)
    assert len(from_spool) == 78 and from_spool["customer_id"].tolist()[:4] == [1, 2, 2, 3]
    assert from_spool["_fs_request"].nunique() == 39  # the rows of one read share its number


def test_compact_cli_compacts_the_served_log(example_repo: Path) -> None:
    from click.testing import CliRunner

    from feature_store.cli import main

    repo = logging_repo(example_repo)
    with FeatureStore(repo) as store:
        store.get_online_features(REFS, {"customer_id": [1]})
    result = CliRunner().invoke(main, ["--repo", str(repo), "compact"])
    assert result.exit_code == 0, result.output
    assert "1 spool file(s) compacted" in result.output
    folder = next((repo / "data" / "served_log" / "demo").glob("date=*"))
    assert [p.suffix for p in folder.iterdir()] == [".parquet"]




def test_a_forked_child_logs_its_own_reads_not_its_parents(example_repo: Path) -> None:
    import os

    repo = logging_repo(example_repo, flush_seconds=3600)
    start = datetime.now(UTC)
    with FeatureStore(repo) as store:
        assert store.served_log is not None
        for customer in (1, 2, 3):
            store.get_online_features(REFS, {"customer_id": [customer]})  # queued, not written yet
        pid = os.fork()
        if pid == 0:  # the child: one read of its own, written, then gone
            try:
                store.get_online_features(REFS, {"customer_id": [7]})
                store.served_log.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        logged = store.served_features(start, datetime.now(UTC) + timedelta(seconds=1))
    assert sorted(logged["customer_id"].tolist()) == [1, 2, 3, 7]
