"""Online store faults with a throwaway redis-server of the test's own: down, hung, back, flushed.

The server is this test's alone (its own port), so stopping, restarting and flushing it touches no one else.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

import feature_store as fs
from feature_store.config import RedisOnlineConfig
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.keys import LAYOUT_VERSION, key_prefix
from feature_store.online.stores.redis.store import RedisOnlineStore
from feature_store.store import FeatureStore
from tests.conftest import _free_port, start_redis

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

TIMEOUT = 0.5  # online_store.timeout_seconds
_NOW = datetime.now(UTC)
DAY = datetime(_NOW.year, _NOW.month, _NOW.day, tzinfo=UTC) - timedelta(days=3)
END = DAY + timedelta(hours=6)
FEATURES = ["spend:n", "spend:total", "profile:tier"]
KEYS = [1, 2]
VALUES = {"n": [2, 1], "total": [30.0, 5.0], "tier": ["gold", "silver"]}


def definitions() -> list[Any]:
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    tx = fs.FileSource(name="tx", path="data/tx.parquet")
    spend = fs.FeatureView(name="spend", entities=[customer], source=tx, features=[
        fs.Count(window="1d", name="n"), fs.Sum("amount", window="1d", name="total")])
    profiles = fs.FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
    profile = fs.FeatureView(name="profile", entities=[customer], source=profiles,
                             features=[fs.Field("tier", "string")], ttl="2d")
    return [customer, tx, spend, profiles, profile]


class Server:
    """A redis-server on a fixed port that the test can stop, freeze and start again."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = start_redis(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
                self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def start(self) -> None:
        assert self.proc is None
        self.proc = start_redis(self.port)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)  # the port still accepts connections; nothing ever answers

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def flush(self) -> None:
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            client.flushdb()  # this server is the test's alone
        finally:
            client.close()


@pytest.fixture
def server() -> Iterator[Server]:
    started = Server()
    yield started
    started.stop()


def make_repo(url: str) -> Path:
    repo = Path(tempfile.mkdtemp(prefix="online_faults_"))
    (repo / "data").mkdir()
    (repo / "feature_store.yaml").write_text(
        f"project: faults\nonline_store: {{type: redis, url: '{url}', key_prefix: faults, "
        f"timeout_seconds: {TIMEOUT}}}\n")
    pd.DataFrame({
        "customer_id": pd.array([1, 1, 2], dtype="int64"),
        "event_timestamp": [DAY + timedelta(hours=1), DAY + timedelta(hours=2), DAY + timedelta(hours=3)],
        "amount": [10.0, 20.0, 5.0],
    }).to_parquet(repo / "data" / "tx.parquet", index=False)
    pd.DataFrame({
        "customer_id": pd.array([1, 2], dtype="int64"),
        "updated_at": [DAY, DAY + timedelta(hours=1)],
        "tier": ["gold", "silver"],
    }).to_parquet(repo / "data" / "profiles.parquet", index=False)
    return repo


@pytest.fixture
def repo(server: Server) -> Iterator[Path]:
    path = make_repo(server.url)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(repo: Path) -> Iterator[FeatureStore]:
    opened = FeatureStore(repo)
    opened.apply(definitions())
    opened.materialize(end=END)
    yield opened
    opened.close()


Read = Callable[[FeatureStore], Any]


@pytest.fixture(params=["sync", "async"])
def read(request: pytest.FixtureRequest) -> Iterator[Read]:
    """get_online_features, or its asyncio twin (the feature server's path) on one event loop for the whole
    test, so that a connection the loop holds must recover by itself."""
    if request.param == "sync":
        yield lambda store: store.get_online_features(FEATURES, {"customer_id": KEYS}, now=END)
        return
    loop = asyncio.new_event_loop()
    yield lambda store: loop.run_until_complete(
        store.get_online_features_async(FEATURES, {"customer_id": KEYS}, now=END))
    loop.close()


def assert_served(store: FeatureStore, read: Read) -> None:
    response = read(store)
    assert response.values == VALUES
    assert all(s == "PRESENT" for statuses in response.statuses.values() for s in statuses)


def assert_unavailable(call: Callable[[], object], port: int) -> OnlineStoreUnavailable:
    started = time.monotonic()
    with pytest.raises(OnlineStoreUnavailable) as caught:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"took {elapsed:.1f} s"
    assert elapsed < TIMEOUT * 4 + 1, f"took {elapsed:.1f} s with timeout_seconds={TIMEOUT}"
    assert f"redis://127.0.0.1:{port}/0" in str(caught.value)
    assert caught.value.http_status == 503
    return caught.value


def test_down_then_back_then_flushed(server: Server, store: FeatureStore, read: Read) -> None:
    assert_served(store, read)

    # (a) the server stops: a clear error naming the URL, fast, every time
    server.stop()
    for _ in range(3):
        error = assert_unavailable(lambda: read(store), server.port)
    assert error.details.get("url") == server.url

    # (b) a new (empty) server on the same port: the same FeatureStore works again, no restart needed
    server.start()
    response = read(store)
    assert all(s == "NOT_FOUND" for statuses in response.statuses.values() for s in statuses)
    store.materialize(end=END, full=True)
    assert_served(store, read)

    # (c) the server is flushed: NOT_FOUND (the empty-window values), and a full materialize rebuilds
    server.flush()
    lost = read(store)
    assert lost.values == {"n": [0, 0], "total": [0, 0], "tier": [None, None]}
    assert all(s == "NOT_FOUND" for statuses in lost.statuses.values() for s in statuses)
    results = [r for r in store.materialize(end=END, full=True) if r.part == "online"]
    assert results and all(r.rebuilt and r.rows_written == 2 for r in results)
    assert_served(store, read)


def test_hung_server_times_out(server: Server, store: FeatureStore, read: Read) -> None:
    """A server that accepts connections but never answers (SIGSTOP): the read gives up after the timeout."""
    assert_served(store, read)
    server.freeze()
    try:
        assert_unavailable(lambda: read(store), server.port)
        assert_unavailable(lambda: read(store), server.port)
    finally:
        server.thaw()
    assert_served(store, read)


def test_materialize_while_down_raises_and_keeps_the_watermark(server: Server, repo: Path) -> None:
    with FeatureStore(repo) as store:
        store.apply(definitions())
        server.stop()
        assert_unavailable(lambda: store.materialize(end=END), server.port)
        server.start()
        # the failed run moved no online watermark: the next plain (incremental) run writes everything
        results = [r for r in store.materialize(end=END) if r.part == "online"]
        assert all(r.rows_written == 2 for r in results), results
        assert_served(store, lambda s: s.get_online_features(FEATURES, {"customer_id": KEYS}, now=END))


def test_store_never_reachable(read: Read) -> None:
    port = _free_port()  # nothing listens there
    repo = make_repo(f"redis://:s3cret@127.0.0.1:{port}/0")
    try:
        with FeatureStore(repo) as store:
            store.apply(definitions())
            started = time.monotonic()
            with pytest.raises(OnlineStoreUnavailable) as caught:
                read(store)
            assert time.monotonic() - started < 5
            message = str(caught.value)
            assert f"127.0.0.1:{port}/0" in message
            assert "s3cret" not in message and "s3cret" not in repr(caught.value.details)  # password hidden
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def test_refused_writes_raise_and_leave_no_reply_behind(server: Server) -> None:
    """Redis refuses a batch part-way (maxmemory reached, noeviction): the write and the atomic update raise
    OnlineStoreUnavailable with Redis' reason, and the connection with replies still unread is dropped, so the
    store's next commands get their own replies."""
    store = RedisOnlineStore(RedisOnlineConfig(url=server.url, timeout_seconds=TIMEOUT))
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 1_000_000)
        t = key_prefix("t", "proj", "view")
        batch = [(t + b"%d" % i, b"x" * 1000, None) for i in range(5_000)]  # about 5 MB: refused from ~1 MB on
        with pytest.raises(OnlineStoreUnavailable, match="OOM"):
            store.write(batch)
        with pytest.raises(OnlineStoreUnavailable, match="OOM"):
            store.update([t + b"0"], lambda current: batch[:2_000])
        admin.config_set("maxmemory", 0)
        store.write([(t + b"a", b"1", None)])
        store.update([t + b"b"], lambda current: [(t + b"b", b"2" if current == [None] else b"?", None)])
        assert store.read([t + b"a", t + b"b", t + b"missing"]) == [b"1", b"2", None]
    finally:
        admin.close()
        store.close()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_async_reads_authenticate_and_select_the_database(transport: str, tmp_path: Path) -> None:
    """The event loop's connection is set up by redis-py from the URL (password, database, unix socket)
    before the loop takes its socket: a read sees the URL's database of a password-protected server."""
    port, sock = _free_port(), tmp_path / "redis.sock"
    proc = start_redis(port, "--requirepass", "s3cret", "--unixsocket", str(sock), "--unixsocketperm", "700")
    admin = redis.Redis(host="127.0.0.1", port=port, password="s3cret", db=3)
    url = f"redis://:s3cret@127.0.0.1:{port}/3" if transport == "tcp" else f"unix://:s3cret@{sock}?db=3"
    store = RedisOnlineStore(RedisOnlineConfig(url=url, timeout_seconds=TIMEOUT))
    try:
        prefix = key_prefix("fs", "proj", "view")
        admin.hset(b"fs:v%d:proj:k" % LAYOUT_VERSION, b"view:", b"in db 3")  # keys.py's layout, written by hand
        assert asyncio.run(store.read_async([prefix + b"k", prefix + b"other"])) == [b"in db 3", None]
        wrong = RedisOnlineStore(RedisOnlineConfig(url=url.replace("s3cret", "wrong"), timeout_seconds=TIMEOUT))
        with pytest.raises(OnlineStoreUnavailable) as caught:
            asyncio.run(wrong.read_async([prefix + b"k"]))
        assert "wrong" not in str(caught.value)  # the password stays out of the message
        wrong.close()
    finally:
        store.close()
        admin.close()
        proc.terminate()
        proc.wait(timeout=10)
