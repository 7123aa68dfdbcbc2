"""kill -9 at random points of ``materialize`` (``--full`` and incremental), then a plain rerun: the offline tiles
and the online values are exactly what a clean build gives.

Each trial starts from some state (nothing, a complete build, a build at an earlier end), runs ``materialize`` in
a process of its own with small chunks and batches (many transactions, so many points to be killed between),
kills it with SIGKILL after a random delay, reruns ``materialize`` to completion here, and compares a training
set and an online read of every entity with those of a clean build of the same data at the same end.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from feature_store import example
from feature_store.store import FeatureStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DATA_END = datetime(2026, 6, 1, tzinfo=UTC)
END = DATA_END - timedelta(days=2)  # every run materializes up to here
EARLIER = END - timedelta(days=20)  # the end of an earlier, incremental starting point
NOW = END + timedelta(hours=5)  # online reads at this time
TRIALS = 40
CUSTOMERS = 1000

DRIVER = """
import sys
from datetime import datetime
from feature_store.offline.duckdb import materialize as offline_materialize, online_tiles
from feature_store.online.materialize import pipeline
from feature_store.store import FeatureStore

offline_materialize.ROWS_PER_CHUNK = 1_500  # many small transactions: many points at which to be killed
online_tiles.ENTITIES_PER_CHUNK = 100
pipeline.BATCH = 25
store = FeatureStore(sys.argv[1])
print("ready", flush=True)
store.materialize(end=datetime.fromisoformat(sys.argv[2]), full=sys.argv[3] == "full",
                  progress=lambda what, done, total: print(what, done, total, flush=True))
store.close()
"""


def _repo(path: Path, data: Path, online: str) -> Path:
    path.mkdir(parents=True)
    shutil.copy(ROOT / "feature_repo" / "features.py", path / "features.py")
    (path / "feature_store.yaml").write_text(f"project: crash\nonline_store: {online}\n")
    shutil.copytree(data, path / "data")
    with FeatureStore(path) as store:
        store.apply()
    return path


def _snapshot(repo: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training set over the example's entity rows, and every entity's online values at NOW."""
    with FeatureStore(repo) as store:
        refs = store.catalog().all_feature_refs()
        rows = pd.read_parquet(repo / "data" / "entity_rows.parquet")
        # and shortly after events, where every window (down to the hour) holds some
        events = pd.read_parquet(repo / "data" / "transactions.parquet").iloc[::20]
        rows = pd.concat([rows, pd.DataFrame({
            "customer_id": events["customer_id"],
            "event_timestamp": events["event_timestamp"] + pd.to_timedelta(events.index % 3600 + 1, "s"),
        })], ignore_index=True)
        offline = store.get_historical_features(rows, refs, full_feature_names=True).to_df()
        ids = list(range(1, CUSTOMERS + 3))
        online = store.get_online_features(refs, {"customer_id": ids}, full_feature_names=True, now=NOW)
        served = online.to_df()
        for name, statuses in online.statuses.items():
            served[f"{name}/status"] = statuses
    return offline, served


def _materialize(repo: Path, end: datetime, full: bool = False) -> None:
    with FeatureStore(repo) as store:
        store.materialize(end=end, full=full)


def _driver(repo: Path, full: bool) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(repo), END.isoformat(), "full" if full else "plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip()
    assert ready == b"ready", proc.stderr.read() if proc.stderr else ready
    return proc


def _killed_run(repo: Path, full: bool, reports: int, delay: float) -> bool:
    """Run materialize in a process of its own and SIGKILL it ``delay`` seconds after its ``reports``-th progress
    report (progress is reported after every chunk and batch, so kills land in every phase); True when it was
    killed before it finished."""
    proc = _driver(repo, full)
    assert proc.stdout is not None
    for _ in range(reports):
        if not proc.stdout.readline():
            break
    time.sleep(delay)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def _reports(repo: Path) -> int:
    """How many progress reports a full run makes (the range the kill points are drawn from)."""
    proc = _driver(repo, full=True)
    out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    return len(out.splitlines())


def _assert_same(got: tuple[pd.DataFrame, pd.DataFrame], want: tuple[pd.DataFrame, pd.DataFrame],
                 trial: str) -> None:
    for part, a, b in (("training set", got[0], want[0]), ("online values", got[1], want[1])):
        try:
            pd.testing.assert_frame_equal(a, b, rtol=1e-9, check_dtype=False)
        except AssertionError as exc:
            raise AssertionError(f"{trial}: the {part} differs from a clean build's: {exc}") from None


def _reset(repo: Path, online: str, redis_url: str, key_prefix: str) -> None:
    """Nothing materialized: no offline tables, no online values, no watermarks."""
    for name in ("offline.duckdb", "offline.duckdb.wal", "online.db", "online.db-wal", "online.db-shm",
                 "registry.db"):
        (repo / "data" / name).unlink(missing_ok=True)
    if online == "redis":
        _delete_keys(redis_url, key_prefix)
    with FeatureStore(repo) as store:
        store.apply()


def _delete_keys(redis_url: str, key_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for name in client.scan_iter(match=f"{key_prefix}:*", count=10_000):
        client.delete(name)
    client.close()


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_materialize_killed_at_random_points_then_rerun_equals_a_clean_build(
        tmp_path: Path, online: str, redis_url: str, key_prefix: str) -> None:
    data = tmp_path / "data"
    example.generate(data, customers=CUSTOMERS, days=90, seed=11, end=DATA_END)
    sqlite = "{type: sqlite, path: data/online.db}"
    clean = _repo(tmp_path / "clean", data, sqlite)
    _materialize(clean, END)
    rebuilt = _snapshot(clean)
    _materialize(clean, EARLIER, full=True)
    _materialize(clean, END)
    # An incremental run keeps the values of entities without new rows: those whose windows all ended meanwhile
    # read NULL_VALUE (their value is still stored) where a rebuild has nothing (NOT_FOUND); values are equal.
    continued = _snapshot(clean)
    config = sqlite if online == "sqlite" else f"{{type: redis, url: '{redis_url}', key_prefix: {key_prefix}}}"
    repo = _repo(tmp_path / "trials", data, config)
    reports = _reports(repo)
    rng = random.Random(20261204)
    killed = 0
    try:
        for trial in range(TRIALS // 2):
            start = rng.choice(["nothing", "complete", "earlier"])
            full = rng.random() < 0.5
            if start == "nothing":
                _reset(repo, online, redis_url, key_prefix)
                accepted = [rebuilt]
            elif start == "complete":
                _materialize(repo, END, full=True)
                accepted = [rebuilt]
            else:
                _materialize(repo, EARLIER, full=True)
                # a --full killed before it started over leaves an incremental run to the rerun
                accepted = [continued, rebuilt] if full else [continued]
            at, delay = rng.randint(0, reports), rng.uniform(0, 0.02)
            killed += _killed_run(repo, full, at, delay)
            _materialize(repo, END)
            got = _snapshot(repo)
            what = (f"trial {trial} ({online}: from {start}, {'--full' if full else 'incremental'} killed "
                    f"{delay:.3f} s after report {at})")
            errors = []
            for want in accepted:
                try:
                    _assert_same(got, want, what)
                    break
                except AssertionError as exc:
                    errors.append(str(exc))
            else:
                raise AssertionError("\n".join(errors))
    finally:
        if online == "redis":
            _delete_keys(redis_url, key_prefix)
    assert killed >= TRIALS // 4, f"only {killed} runs were killed before they finished: the delays are too long"


KILLED_AT = """
import os, signal, sys
from datetime import datetime
from feature_store.offline.duckdb.materialize import Materializer
from feature_store.store import FeatureStore

original = getattr(Materializer, sys.argv[3])

def killed(*args, **kwargs):
    original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

setattr(Materializer, sys.argv[3], killed)
with FeatureStore(sys.argv[1]) as store:
    store.materialize(end=datetime.fromisoformat(sys.argv[2]), full=True)
"""


@pytest.mark.parametrize("start", ["complete", "earlier"])
def test_full_killed_right_after_a_table_started_over(tmp_path: Path, start: str) -> None:
    """The narrowest window of offline materialization: a table emptied for a rebuild, no chunk written yet."""
    data = tmp_path / "data"
    example.generate(data, customers=300, days=60, seed=5, end=DATA_END)
    clean = _repo(tmp_path / "clean", data, "{type: sqlite, path: data/online.db}")
    _materialize(clean, END)
    want = _snapshot(clean)
    repo = _repo(tmp_path / "repo", data, "{type: sqlite, path: data/online.db}")
    _materialize(repo, END if start == "complete" else EARLIER)
    proc = subprocess.run([sys.executable, "-c", KILLED_AT, str(repo), END.isoformat(), "_first_time"],
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    _materialize(repo, END)
    got = _snapshot(repo)
    if start == "earlier":  # online values were not touched yet: the rerun continues them from EARLIER
        _materialize(clean, EARLIER, full=True)
        _materialize(clean, END)
        want = (want[0], _snapshot(clean)[1])
    _assert_same(got, want, f"killed after the first table was started over (from {start})")
