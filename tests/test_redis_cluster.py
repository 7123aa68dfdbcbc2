"""What only a Redis Cluster does: routing per node, redirects after a resharding, pushes applied slot by slot with
an idempotency marker in each slot, and a failover the store recovers from by itself.

The conformance suite (test_online_stores.py) and the consistency harness (test_online_consistency.py) run on the
cluster through the online store matrix (conftest.py: ``redis-cluster``); these tests add what the matrix cannot.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.connection import Connection
from redis.crc import key_slot

from feature_store.config import RedisOnlineConfig
from feature_store.errors import ConfigError, OnlineStoreUnavailable
from feature_store.online.keys import key_prefix as layout_prefix
from feature_store.online.keys import split_key
from feature_store.online.stores import open_online_store
from feature_store.online.stores.redis.cluster import RedisClusterOnlineStore
from tests.conftest import delete_under, redis_clients
from tests.redis_cluster import ClusterUnavailable, LocalCluster

pytestmark = pytest.mark.redis_cluster  # six servers: `make test` runs these, `make test-fast` does not


@pytest.fixture
def prefix_name() -> Iterator[str]:
    yield f"fstest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(redis_cluster_url: str, prefix_name: str) -> Iterator[RedisClusterOnlineStore]:
    opened = open_online_store(RedisOnlineConfig(url=redis_cluster_url, cluster=True, key_prefix=prefix_name),
                               Path("."))
    assert isinstance(opened, RedisClusterOnlineStore)
    yield opened
    opened.close()
    delete_under(redis_cluster_url, prefix_name, cluster=True)


def keys_of(prefix_name: str, n: int, view: str = "view") -> list[bytes]:
    prefix = layout_prefix(prefix_name, "proj", view)
    return [prefix + b"e%d" % i for i in range(n)]


def test_config_names_any_nodes_and_refuses_what_a_cluster_cannot_do() -> None:
    config = RedisOnlineConfig(url="redis://:pw@10.0.0.1:7000,10.0.0.2:7001", cluster=True)
    from feature_store.config import cluster_urls

    assert cluster_urls(config.url) == ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001"]
    with pytest.raises(ValueError, match="cluster: true"):
        RedisOnlineConfig(url="redis://a:7000,b:7001")
    with pytest.raises(ValueError, match="database 0"):
        RedisOnlineConfig(url="redis://a:7000/3", cluster=True)
    with pytest.raises(ValueError, match="hash tag"):
        RedisOnlineConfig(key_prefix="fs{x}", cluster=True)


def test_a_yaml_with_cluster_true_opens_the_cluster_store(tmp_path: Path, redis_cluster_url: str) -> None:
    from feature_store.config import load_config

    (tmp_path / "feature_store.yaml").write_text(
        f"project: p\nonline_store: {{type: redis, url: '{redis_cluster_url}', cluster: true}}\n")
    config = load_config(tmp_path)
    store = open_online_store(config.online_store, tmp_path)
    try:
        assert isinstance(store, RedisClusterOnlineStore)
        store.ping()
    finally:
        store.close()
    (tmp_path / "feature_store.yaml").write_text("project: p\nonline_store: {type: redis, url: 'redis://a:1,b:2'}\n")
    with pytest.raises(ConfigError, match="cluster: true"):
        load_config(tmp_path)


def test_an_unreachable_cluster_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    store = open_online_store(RedisOnlineConfig(url="redis://127.0.0.1:1", cluster=True, timeout_seconds=0.2),
                              tmp_path)  # opening needs no live cluster
    with pytest.raises(OnlineStoreUnavailable, match="Redis Cluster"):
        store.read([keys_of("fs", 1)[0]])
    with pytest.raises(OnlineStoreUnavailable):
        asyncio.run(store.read_async([keys_of("fs", 1)[0]]))
    store.close()


def test_keys_are_laid_out_as_on_one_redis(store: RedisClusterOnlineStore, redis_cluster_url: str,
                                           prefix_name: str) -> None:
    """An entity's values of every view are one hash named as on a single node: one key, so one slot."""
    a, b = keys_of(prefix_name, 1, "a")[0], keys_of(prefix_name, 1, "b")[0]
    store.write([(a, b"1", None), (b, b"2", None)])
    name = split_key(a)[0]
    assert name == split_key(b)[0] and b"{" not in name
    found = []
    for client in redis_clients(redis_cluster_url, cluster=True):
        found += [(key, client.hgetall(key)) for key in client.scan_iter(match=f"{prefix_name}:*")]
        client.close()
    assert found == [(name, {split_key(a)[1]: b"1", split_key(b)[1]: b"2"})]


def test_a_read_sends_one_buffer_to_each_node(store: RedisClusterOnlineStore, prefix_name: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys = keys_of(prefix_name, 300)
    store.write([(key, key[-4:], None) for key in keys])
    store.read(keys)  # connected to every node
    sent: list[tuple[int, bytes]] = []
    original = Connection.send_packed_command

    def send(self: Connection, command: Any, *args: Any, **kwargs: Any) -> None:
        sent.append((self.port, b"".join(command) if isinstance(command, list) else command))
        original(self, command, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_packed_command", send)
    assert store.read(keys) == [key[-4:] for key in keys]
    ports = [port for port, _ in sent]
    assert len(ports) == len(set(ports)) == 3  # 300 entities fall on every master: one buffer each
    assert sum(data.count(b"HMGET") for _, data in sent) == 300


def test_transaction_groups_are_slots_and_a_colocated_key_shares_the_slot(store: RedisClusterOnlineStore,
                                                                          prefix_name: str) -> None:
    keys = keys_of(prefix_name, 50)
    groups = store.transaction_groups(keys)
    assert sorted(i for group in groups for i in group) == list(range(50))
    for group in groups:
        assert len({key_slot(split_key(keys[i])[0]) for i in group}) == 1
    marker = layout_prefix(prefix_name, "proj", "__pushes", "src/0") + b"\xc1push-id"
    for key in keys:
        moved = store.colocated(marker, key)
        assert key_slot(split_key(moved)[0]) == key_slot(split_key(key)[0])
        assert moved.endswith(b"\xc1push-id")
    with pytest.raises(ValueError, match="one slot"):
        store.update(keys, lambda current: [])


class CounterTarget:
    """The smallest PushTarget write_pushes needs: each push adds one to the delta of 40 entities."""

    def __init__(self, prefix_name: str) -> None:
        self.prefix = layout_prefix(prefix_name, "proj", "v", "s")
        self.delta = layout_prefix(prefix_name, "proj", "v", "s+")

    def events(self, rows: Any, pushed_at: int) -> list[tuple[bytes, int]]:
        return [(b"e%d" % i, 1) for i in range(40)]

    def apply(self, base: bytes | None, delta: bytes | None, events: list[int],
              now_us: int) -> tuple[tuple[None, None], tuple[bytes, None]]:
        return (None, None), (b"%d" % (int(delta or 0) + sum(events)), None)


def test_a_push_that_fails_on_one_slot_counts_each_entity_once_when_retried(
        store: RedisClusterOnlineStore, prefix_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push of 40 entities on many slots, one transaction per slot; two slots' transactions land, then a node
    is lost. A retry with the same push id skips the landed slots (each has its marker) and applies the
    rest: every entity counted once. Without a push id there is no marker, and a retry would count twice."""
    from feature_store.online.push.writer import write_pushes

    target: Any = CounterTarget(prefix_name)
    marker = (layout_prefix(prefix_name, "proj", "__pushes", "src/0") + b"\xc1id-1", b"1", None)
    deltas = [target.delta + b"e%d" % i for i in range(40)]
    fail = [True]
    original = RedisClusterOnlineStore.update_each

    def update_each(self: RedisClusterOnlineStore, updates: Any) -> None:
        if fail[0]:  # the first two slots' transactions land, then a node is lost
            original(self, updates[:2])
            raise OnlineStoreUnavailable("node lost (injected)", url="test")
        original(self, updates)

    monkeypatch.setattr(RedisClusterOnlineStore, "update_each", update_each)
    assert len(store.transaction_groups(deltas)) > 3
    with pytest.raises(OnlineStoreUnavailable):
        write_pushes(store, [target], None, 0, 0, marker)  # type: ignore[arg-type]
    first = store.read(deltas)
    assert 0 < sum(v is not None for v in first) < 40  # midway: some slots landed, others not
    fail[0] = False
    assert write_pushes(store, [target], None, 0, 0, marker) == sum(v is None for v in first)  # type: ignore[arg-type]
    assert store.read(deltas) == [b"1"] * 40  # every entity counted once
    assert write_pushes(store, [target], None, 0, 0, marker) == 0  # type: ignore[arg-type]
    assert store.read(deltas) == [b"1"] * 40


def test_reads_writes_and_pushes_follow_a_resharding(store: RedisClusterOnlineStore, redis_cluster_url: str,
                                                     prefix_name: str) -> None:
    """Slots move to another node (MOVED): the same store object reads, writes and updates them there."""
    keys = keys_of(prefix_name, 200)
    store.write([(key, b"v1", None) for key in keys])
    assert store.read(keys) == [b"v1"] * 200
    reshard(redis_cluster_url, 0, 1, 2000)
    assert store.read(keys) == [b"v1"] * 200  # MOVED replies followed
    assert asyncio.run(store.read_async(keys)) == [b"v1"] * 200
    store.write([(key, b"v2", None) for key in keys])
    assert store.read(keys) == [b"v2"] * 200
    reshard(redis_cluster_url, 1, 0, 2000)  # back: a batch written column-wise meets MOVED, sent again value by value
    import pyarrow as pa

    from feature_store.online.stores.writes import Batch

    prefix = layout_prefix(prefix_name, "proj", "view")
    columnar: list[bool] = []
    original = store._write_columns
    store._write_columns = lambda *a: columnar.append(original(*a)) or columnar[-1]  # type: ignore[method-assign]
    store.write(Batch(pa.array([key[len(prefix):] for key in keys], pa.large_binary()),
                      pa.array([b"v3"] * 200, pa.large_binary()), prefix=prefix))
    assert columnar == [False]  # the column-wise send met MOVED, and the batch went again value by value
    assert store.read(keys) == [b"v3"] * 200
    for key in keys[:20]:
        store.update([key], lambda current, key=key: [(key, (current[0] or b"") + b"+", None)])
    assert store.read(keys[:20]) == [b"v3+"] * 20


def test_a_read_follows_ask_during_a_slot_migration(store: RedisClusterOnlineStore, redis_cluster_url: str,
                                                    prefix_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot half migrated: its key already moved answers ASK at the source; the read goes to the target after
    ASKING, and the keys still at the source are read there, in the same read."""
    keys = keys_of(prefix_name, 60)
    store.write([(key, key[-3:], None) for key in keys])
    clients = {c.connection_pool.connection_kwargs["port"]: c for c in redis_clients(redis_cluster_url, cluster=True)}
    moving = split_key(keys[0])[0]
    slot = key_slot(moving)
    source = next(c for c in clients.values() if c.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
    target = next(c for c in clients.values() if c is not source)
    source_id, target_id = _text(source.execute_command("CLUSTER MYID")), _text(target.execute_command("CLUSTER MYID"))
    target_port = target.connection_pool.connection_kwargs["port"]
    try:
        target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
        source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
        source.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", moving)
        sent: list[bytes] = []
        original = Connection.send_packed_command

        def send(self: Connection, command: Any, *args: Any, **kwargs: Any) -> None:
            sent.append(b"".join(command) if isinstance(command, list) else command)
            original(self, command, *args, **kwargs)

        monkeypatch.setattr(Connection, "send_packed_command", send)
        assert store.read(keys) == [key[-3:] for key in keys]
        assert any(data.startswith(b"*1\r\n$6\r\nASKING") for data in sent)
        monkeypatch.undo()
        assert asyncio.run(store.read_async(keys)) == [key[-3:] for key in keys]
    finally:
        for client in clients.values():
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            client.close()
    assert store.read(keys) == [key[-3:] for key in keys]  # and MOVED once the slot is the target's


def test_an_error_reply_of_one_node_leaves_no_reply_unread(store: RedisClusterOnlineStore, redis_cluster_url: str,
                                                            prefix_name: str) -> None:
    """A read failing on one node (a key of another type there) must read every node's replies anyway: else the
    next read on those connections would get this one's values."""
    keys = keys_of(prefix_name, 100)
    store.write([(key, key[-3:], None) for key in keys])
    bad = layout_prefix(prefix_name, "proj", "view") + b"string"
    from redis.cluster import RedisCluster

    with RedisCluster.from_url(redis_cluster_url.split(",")[0]) as cluster:
        cluster.set(split_key(bad)[0], b"x")
    with pytest.raises(OnlineStoreUnavailable, match="WRONGTYPE"):
        store.read([*keys, bad])
    assert store.read(keys) == [key[-3:] for key in keys]


def reshard(url: str, source: int, target: int, slots: int) -> None:
    """Move ``slots`` slots (and their keys) from one master to another (indexes among the masters)."""
    clients = redis_clients(url, cluster=True)
    try:
        ids = [_text(client.execute_command("CLUSTER MYID")) for client in clients]
        port = clients[source].connection_pool.connection_kwargs["port"]
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "--cluster", "check", f"127.0.0.1:{port}"], capture_output=True,
                             timeout=30, check=False).returncode != 0:  # until every node agrees on the slots
            assert time.monotonic() < deadline, "the cluster's nodes did not agree on its configuration"
            time.sleep(0.2)
        moved = subprocess.run(
            ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{port}", "--cluster-from", ids[source],
             "--cluster-to", ids[target], "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=120, check=False)
        assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr
    finally:
        for client in clients:
            client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.slow  # a cluster of its own, killed and failed over: seconds of waiting
def test_a_master_killed_fails_reads_only_during_the_failover(tmp_path: Path) -> None:
    """kill -9 a master: reads raise OnlineStoreUnavailable (never a wrong value) until its replica is promoted,
    then return the right values from the same store object, on the blocking and the asyncio paths."""
    try:
        cluster = LocalCluster(tmp_path).start()
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    store = open_online_store(RedisOnlineConfig(url=cluster.url, cluster=True, timeout_seconds=0.5), tmp_path)
    try:
        keys = keys_of("fs", 300)
        store.write([(key, key[-5:], None) for key in keys])
        expected = [key[-5:] for key in keys]
        assert store.read(keys) == expected
        cluster.wait_replicated()  # every write reached a replica before a master dies: a failover loses nothing
        victim = cluster.masters()[0]
        cluster.kill(victim)
        killed, errors, recovered = time.monotonic(), 0, None
        for attempt in itertools.count():
            if time.monotonic() - killed > 60:
                break
            try:  # the blocking path and the feature server's, in turn
                got = store.read(keys) if attempt % 2 else asyncio.run(store.read_async(keys))
            except OnlineStoreUnavailable:
                errors += 1
                time.sleep(0.05)
                continue
            assert got == expected  # never a wrong value
            recovered = time.monotonic() - killed
            break
        assert recovered is not None, "reads did not recover within 60 s of the failover"
        assert victim not in cluster.masters()
        for _ in range(20):  # and keep working
            assert store.read(keys) == expected
        assert asyncio.run(store.read_async(keys)) == expected
        store.write([(key, b"after", None) for key in keys])
        assert store.read(keys) == [b"after"] * 300
        print(f"failover: reads failed {errors} times, recovered {recovered:.1f} s after kill -9")
    finally:
        store.close()
        cluster.stop()
