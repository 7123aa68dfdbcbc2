"""One conformance suite for every online store: SQLite (embedded file) and Redis (a real server).

A store keeps opaque values under binary keys, each with an optional expiry (epoch ms). Redis tests
write only under the test's own ``key_prefix`` and delete only those keys afterwards.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.connection import Connection

from feature_store.config import RedisOnlineConfig, SqliteOnlineConfig
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.keys import LAYOUT_VERSION, split_key, view_prefix
from feature_store.online.keys import key_prefix as layout_prefix
from feature_store.online.stores import OnlineStore, open_online_store
from feature_store.online.stores.sqlite import SQLITE_PAGE_BYTES, SqliteOnlineStore
from feature_store.online.stores.writes import Batch


@pytest.fixture
def kind(online_store: dict[str, str]) -> str:
    return online_store["type"]


@pytest.fixture
def config(online_store: dict[str, str]) -> RedisOnlineConfig | SqliteOnlineConfig:
    if online_store["type"] == "sqlite":
        return SqliteOnlineConfig(path=online_store["path"])
    return RedisOnlineConfig.model_validate(online_store)


@pytest.fixture
def store(config: RedisOnlineConfig | SqliteOnlineConfig, tmp_path: Path) -> Iterator[OnlineStore]:
    opened = open_online_store(config, tmp_path)
    yield opened
    opened.close()


@pytest.fixture
def prefix(key_prefix: str) -> bytes:
    """The prefix every key of a test starts with (the layout's own prefix, under the test's key_prefix)."""
    return key_prefix_for(key_prefix, "view")


def key_prefix_for(store_prefix: str, view: str) -> bytes:
    return layout_prefix(store_prefix, "proj", view)


def now_ms() -> int:
    return int(time.time() * 1000)


def test_class_attributes(kind: str, store: OnlineStore) -> None:
    assert store.name == kind
    assert type(store).name == kind
    assert type(store).optimistic_updates is (kind == "redis")
    store.ping()


def test_key_prefix_carries_store_prefix_layout_version_project_and_view() -> None:
    assert layout_prefix("fs", "demo", "spend", "ab12") == f"fs:v{LAYOUT_VERSION}:demo:\0spend:ab12\0".encode()
    assert not layout_prefix("fs", "demo", "spend2").startswith(view_prefix("fs", "demo", "spend"))
    assert layout_prefix("fs", "demo", "spend", "ab12").startswith(view_prefix("fs", "demo", "spend"))
    assert split_key(layout_prefix("fs", "demo", "spend", "ab12") + b"\x91\x00") == (
        f"fs:v{LAYOUT_VERSION}:demo:".encode() + b"\x91\x00", b"spend:ab12")  # NUL in an entity key is fine


def test_round_trip_of_many_keys_in_one_read(store: OnlineStore, prefix: bytes) -> None:
    n = 2500  # more than SQLite's bound-parameter chunk
    items = [(prefix + f"k{i}".encode(), f"value-{i}".encode() * (1 + i % 3), None) for i in range(n)]
    store.write(items)
    keys = [prefix + f"k{i}".encode() for i in range(n)] + [prefix + f"missing{i}".encode() for i in range(300)]
    random.Random(7).shuffle(keys)
    got = store.read(keys)
    assert len(got) == len(keys)
    expected = {k: v for k, v, _ in items}
    assert got == [expected.get(k) for k in keys]  # input order, None for missing keys


def test_a_large_batch_with_items_round_trips(store: OnlineStore, prefix: bytes) -> None:
    """A materialization batch (column-wise, on a cluster routed by numpy-computed slots), entities with
    braces (a hash tag on a cluster) and extra items among it."""
    entities = [b"e%d" % i for i in range(500)] + [b"{x}%d" % i for i in range(20)] + [b"}{", b"a{b", b"{}c"]
    values = [b"v" + e for e in entities]
    expire = [now_ms() + 60_000 if i % 2 else None for i in range(len(entities))]
    batch = Batch(pa.array(entities, pa.large_binary()), pa.array(values, pa.large_binary()),
                  pa.array(expire, pa.int64()), prefix=prefix).with_items([(prefix + b"extra", b"x", None)])
    store.write(batch)
    assert store.read([prefix + e for e in [*entities, b"extra"]]) == [*values, b"x"]
    store.write(batch.slice(3, 400))  # a slice: offsets not from 0
    assert store.read([prefix + e for e in entities]) == values


def test_read_with_repeated_and_only_missing_keys(store: OnlineStore, prefix: bytes) -> None:
    store.write([(prefix + b"a", b"1", None)])
    assert store.read([prefix + b"a", prefix + b"zz", prefix + b"a"]) == [b"1", None, b"1"]
    assert store.read([prefix + b"nope"]) == [None]


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)  # round trips are a network property
def test_redis_read_is_one_round_trip(store: OnlineStore, prefix: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """One buffer of commands sent, and their replies read after it, whatever the number of keys: counted on
    redis-py's connection (the replies are read off its socket, not by read_response)."""
    store.write([(prefix + f"k{i}".encode(), b"v", None) for i in range(500)])
    store.read([prefix + b"k0"])  # connected: the handshake of a new connection is not the read's
    sent: list[bytes] = []
    replies: list[object] = []
    original_send, original_read = Connection.send_packed_command, Connection.read_response

    def send(self: Connection, command: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        original_send(self, command, *args, **kwargs)

    def read(self: Connection, *args: Any, **kwargs: Any) -> object:
        replies.append(reply := original_read(self, *args, **kwargs))
        return reply

    monkeypatch.setattr(Connection, "send_packed_command", send)
    monkeypatch.setattr(Connection, "read_response", read)
    got = store.read([prefix + f"k{i}".encode() for i in range(500)] + [prefix + b"missing"])
    assert got == [b"v"] * 500 + [None]
    assert len(sent) == 1 and sent[0].count(b"HMGET") == 501 and replies == []
    other = key_prefix_for(prefix.decode().split(":v")[0], "other")
    store.write([(other + f"k{i}".encode(), b"w", None) for i in range(0, 500, 2)])
    entities = [f"k{i}".encode() for i in range(100)]
    sent.clear()
    got = store.read_views([(prefix, entities), (other, entities)])  # the reader's call: views of one entity list
    assert got == [b"v"] * 100 + [b"w" if i % 2 == 0 else None for i in range(100)]
    assert len(sent) == 1 and sent[0].count(b"HMGET") == 100 and replies == []  # one HMGET per entity


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)
@pytest.mark.parametrize("scripted", [False, True], ids=["pexpireat-options", "script"])
def test_an_entity_hash_expires_at_the_latest_expiry_written_to_it(store: OnlineStore, key_prefix: str,
                                                                  scripted: bool) -> None:
    """Redis: every write leaves the hash's expiry at the later of its own and the value's, whichever the
    order and the path (items, a column-wise batch, an atomic update); no expiry is the year 9999. Redis before
    7.0 gets the script, which any Redis runs, so both paths are checked here."""
    store._scripted = scripted  # type: ignore[attr-defined]
    a, b = key_prefix_for(key_prefix, "a"), key_prefix_for(key_prefix, "b")
    name = split_key(a + b"e")[0]
    client = redis.Redis.from_url(store.config.url)  # type: ignore[attr-defined]

    def ttl_s() -> float:
        return float(client.pttl(name)) / 1000

    try:
        store.write([(a + b"e", b"1", now_ms() + 60_000)])
        assert 55 < ttl_s() <= 60  # a new hash gets the value's expiry (NX)
        store.write([(b + b"e", b"2", now_ms() + 30_000)])
        assert 55 < ttl_s() <= 60  # an earlier one does not shorten it
        store.write(Batch(pa.array([b"e", b"f"], pa.large_binary()), pa.array([b"3", b"4"], pa.large_binary()),
                          pa.array([now_ms() + 120_000, None], pa.int64()), prefix=b))
        assert 115 < ttl_s() <= 120  # a later one lengthens it (GT), column-wise too
        assert client.pttl(split_key(b + b"f")[0]) > 100 * 365 * 86_400_000  # no expiry: the year 9999
        store.update([a + b"e"], lambda current: [(a + b"e", b"5", None)])
        assert ttl_s() > 100 * 365 * 86_400
        assert store.read([a + b"e", b + b"e", b + b"f"]) == [b"5", b"3", b"4"]
    finally:
        client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_read_views_equals_a_read_of_every_key(store: OnlineStore, key_prefix: str, data: st.DataObject) -> None:
    """Any views, sharing entity lists or not, with repeated, missing and binary entities: ``read_views`` gives
    what reading every key ``prefix + entity`` gives, view after view."""
    prefixes = [key_prefix_for(key_prefix, view) for view in ("a", "b", "c")]
    entities = [b"", b"e1", b"e2", b"\x00", b"\x91\xce\x00\x01", b"\xff" * 3]
    store.write([(prefix + entity, prefix[-3:] + entity, None) for prefix in prefixes for entity in entities[1:4]])
    lists = data.draw(st.lists(st.lists(st.sampled_from(entities), max_size=6), min_size=1, max_size=3))
    views = data.draw(st.lists(st.tuples(st.sampled_from(prefixes), st.sampled_from(lists)), min_size=1, max_size=4))
    expected = store.read([prefix + entity for prefix, own in views for entity in own])
    assert store.read_views(views) == expected
    assert asyncio.run(store.read_views_async(views)) == expected


def test_read_views_of_views_with_their_own_entities(store: OnlineStore, prefix: bytes) -> None:
    """Views whose entity lists differ (other join keys) and repeat entities, read in one call, in view order."""
    other = key_prefix_for(prefix.decode().split(":v")[0], "other")
    store.write([(prefix + b"a", b"1", None), (prefix + b"b", b"2", None), (other + b"b", b"3", None)])
    first, second = [b"a", b"b", b"zz", b"a"], [b"b", b"a"]
    assert store.read_views([(prefix, first), (other, second), (prefix, second)]) == [
        b"1", b"2", None, b"1", b"3", None, b"2", b"1"]
    assert store.read_views([(prefix, []), (other, [])]) == []
    got = asyncio.run(store.read_views_async([(other, second), (prefix, first)]))
    assert got == [b"3", None, b"1", b"2", None, b"1"]


def test_empty_reads_and_writes(store: OnlineStore, prefix: bytes) -> None:
    assert store.read([]) == []
    store.write([])
    assert store.read([prefix + b"x"]) == [None]
    assert store.delete_prefix(prefix) == 0


def test_overwrite(store: OnlineStore, prefix: bytes) -> None:
    key = prefix + b"k"
    store.write([(key, b"first", None)])
    store.write([(key, b"second", None)])
    assert store.read([key]) == [b"second"]
    # an expiring value overwritten by a persistent one persists
    store.write([(key, b"third", now_ms() + 150)])
    store.write([(key, b"fourth", None)])
    time.sleep(0.3)
    assert store.read([key]) == [b"fourth"]
    # a persistent value overwritten with an expiry in the past is gone where expiry is exact; on Redis
    # expiries only lengthen (an entity's hash lives as long as the longest-lived value written to it)
    store.write([(key, b"fifth", now_ms() - 1000)])
    assert store.read([key]) == ([None] if store.exact_expiry else [b"fifth"])


def test_an_entity_lives_as_long_as_its_longest_lived_value(store: OnlineStore, key_prefix: str) -> None:
    """Values of two views of one entity: on Redis the one that expires first stays while the other lives (one
    hash, one expiry: the later one, in whatever order they are written); exact stores drop it on time."""
    spend, profile = key_prefix_for(key_prefix, "spend"), key_prefix_for(key_prefix, "profile")
    for first, second in ((spend, profile), (profile, spend)):
        entity = b"e" + first[-8:-1]
        store.write([(first + entity, b"short", now_ms() + 200)])
        store.write([(second + entity, b"long", now_ms() + 60_000)])
        store.write([(first + b"alone", b"short", now_ms() + 200)])
        time.sleep(0.4)
        assert store.read([first + entity, second + entity]) == [None if store.exact_expiry else b"short", b"long"]
        assert store.read([first + b"alone"]) == [None]  # alone in its hash: gone on time everywhere


def test_last_write_of_a_key_in_one_batch_wins(store: OnlineStore, prefix: bytes) -> None:
    key = prefix + b"k"
    store.write([(key, b"one", None), (key, b"two", None)])
    assert store.read([key]) == [b"two"]


def test_expiry(store: OnlineStore, prefix: bytes) -> None:
    past, soon, later, forever = (prefix + name for name in (b"past", b"soon", b"later", b"forever"))
    store.write([(past, b"p", now_ms() - 5), (soon, b"s", now_ms() + 400), (later, b"l", now_ms() + 60_000),
                 (forever, b"f", None)])
    assert store.read([past, soon, later, forever]) == [None, b"s", b"l", b"f"]
    time.sleep(0.6)
    assert store.read([past, soon, later, forever]) == [None, None, b"l", b"f"]


def test_expiry_a_few_ms_ahead(store: OnlineStore, prefix: bytes) -> None:
    key = prefix + b"k"
    store.write([(key, b"v", now_ms() + 5)])
    time.sleep(0.05)
    assert store.read([key]) == [None]


def test_expired_key_can_be_written_again(store: OnlineStore, prefix: bytes) -> None:
    key = prefix + b"k"
    store.write([(key, b"old", now_ms() - 1)])
    store.write([(key, b"new", now_ms() + 60_000)])
    assert store.read([key]) == [b"new"]


def test_delete_prefix_deletes_only_that_prefix(store: OnlineStore, key_prefix: str) -> None:
    spend = key_prefix_for(key_prefix, "spend")
    spend2 = key_prefix_for(key_prefix, "spend2")  # shares "spend" but not "spend:"
    other = layout_prefix(key_prefix, "other_project", "spend")
    redefined = layout_prefix(key_prefix, "proj", "spend", "0123abcd")  # another definition of the view
    store.write([(spend + f"{i}".encode(), b"x", None) for i in range(1500)])
    store.write([(spend + b"\xff\xfe", b"x", None), (spend + b"\x00", b"x", now_ms() + 60_000)])
    store.write([(spend2 + b"1", b"keep", None), (other + b"1", b"keep", None), (redefined + b"1", b"keep", None)])
    deleted = store.delete_prefix(spend)
    assert deleted == 1502
    assert store.read([spend + b"1", spend + b"1499", spend + b"\xff\xfe", spend + b"\x00"]) == [None] * 4
    assert store.read([spend2 + b"1", other + b"1", redefined + b"1"]) == [b"keep"] * 3
    assert store.delete_prefix(spend) == 0
    # the deleted prefix can be written again
    store.write([(spend + b"1", b"again", None)])
    assert store.read([spend + b"1"]) == [b"again"]
    # every definition of the view, and nothing else
    assert store.delete_prefix(view_prefix(key_prefix, "proj", "spend")) == 2
    assert store.read([spend + b"1", redefined + b"1", spend2 + b"1", other + b"1"]) == [None, None, b"keep", b"keep"]


def test_delete_prefixes_spares_the_keys_to_keep(store: OnlineStore, key_prefix: str) -> None:
    """A rebuild deletes a view's keys but its marker (set to the rebuild's own value just before)."""
    spend, profile = key_prefix_for(key_prefix, "spend"), key_prefix_for(key_prefix, "profile")
    keys = [spend + b"1", spend + b"\xc1", profile + b"1", profile + b"\xc1"]
    store.write([(key, b"x", None) for key in keys])
    assert store.delete_prefixes([spend, profile], keep=[spend + b"\xc1", profile + b"\xc1"]) == 2
    assert store.read(keys) == [None, b"x", None, b"x"]
    assert store.delete_prefixes([spend, profile]) == 2


@pytest.mark.parametrize("suffix", ["a*b", "a?b", "[ab]", "a\\b"], ids=["star", "question", "brackets", "backslash"])
def test_delete_prefix_is_literal_not_a_pattern(store: OnlineStore, key_prefix: str, suffix: str) -> None:
    """A store prefix can hold any character but NUL (key_prefix in feature_store.yaml is free text)."""
    prefix = layout_prefix(key_prefix + suffix, "proj", "view")
    alikes = [layout_prefix(key_prefix + alike, "proj", "view") for alike in ("aXb", "a:b", "ab", "a", "b", "a\\\\b")
              if alike != suffix]
    store.write([(prefix + b"1", b"gone", None), *((alike + b"1", b"keep", None) for alike in alikes)])
    assert store.delete_prefix(prefix) == 1
    assert store.read([prefix + b"1", *(alike + b"1" for alike in alikes)]) == [None] + [b"keep"] * len(alikes)


def test_delete_prefix_with_entities_of_0xff_bytes(store: OnlineStore, key_prefix: str) -> None:
    """Binary entity keys at the top of the byte range go with their view's prefix; other views' stay."""
    spend, profile = key_prefix_for(key_prefix, "spend"), key_prefix_for(key_prefix, "profile")
    store.write([(spend + b"\xff", b"gone", None), (spend + b"\xff" * 9, b"gone", None),
                 (profile + b"\xff", b"keep", None)])
    assert store.delete_prefix(spend) == 2
    assert store.read([spend + b"\xff", spend + b"\xff" * 9, profile + b"\xff"]) == [None, None, b"keep"]


def test_binary_keys_and_values(store: OnlineStore, prefix: bytes) -> None:
    keys = [prefix + bytes([b]) for b in range(256)] + [prefix + b"\x00\x00", prefix + b"\xff" * 40,
                                                         prefix + "é€😀".encode(), prefix + b"\x80\x81 \t\n"]
    values = [bytes([i % 256]) * (i % 5) + b"\x00\xff" for i in range(len(keys))]
    store.write([(k, v, None) for k, v in zip(keys, values, strict=True)])
    assert store.read(keys) == values
    assert store.read(list(reversed(keys))) == list(reversed(values))
    assert store.read([prefix]) == [None]  # the bare prefix is another key


def test_large_value(store: OnlineStore, prefix: bytes) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    store.write([(prefix + b"big", value, None)])
    assert store.read([prefix + b"big"]) == [value]


def test_a_second_instance_sees_the_writes(config: RedisOnlineConfig | SqliteOnlineConfig, tmp_path: Path,
                                           store: OnlineStore, prefix: bytes) -> None:
    store.write([(prefix + b"k", b"v", None)])
    other = open_online_store(config, tmp_path)
    try:
        assert other.read([prefix + b"k"]) == [b"v"]
        other.write([(prefix + b"k", b"w", None)])
        assert store.read([prefix + b"k"]) == [b"w"]
    finally:
        other.close()


def test_reads_and_writes_from_threads(store: OnlineStore, prefix: bytes) -> None:
    def work(t: int) -> None:
        keys = [prefix + f"t{t}-{i}".encode() for i in range(50)]
        store.write([(k, k, None) for k in keys])
        assert store.read(keys) == keys

    in_threads(work, 6)


def in_threads(work: Callable[[int], None], count: int) -> None:
    """work(0) .. work(count - 1) at once, each in its own thread; the first failure fails the test."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            work(t)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def test_close_then_use_again(config: RedisOnlineConfig | SqliteOnlineConfig, tmp_path: Path, prefix: bytes) -> None:
    opened = open_online_store(config, tmp_path)
    opened.write([(prefix + b"k", b"v", None)])
    opened.close()
    assert opened.read([prefix + b"k"]) == [b"v"]  # a closed store reconnects on its next use
    opened.close()


# --- SQLite's file -------------------------------------------------------------------------------------------


def test_a_new_sqlite_file_keeps_1_kb_values_in_its_b_tree(tmp_path: Path) -> None:
    """16 KB pages: with SQLite's default 4 KB, a WITHOUT ROWID row over about 1 KB spills onto overflow pages
    (3x slower writes, 2x slower reads, measured)."""
    store = open_online_store(SqliteOnlineConfig(path="data/online.db"), tmp_path)
    try:
        store.write([(key_prefix_for("fs", "spend") + b"k%d" % i, bytes(1500), None) for i in range(200)])
    finally:
        store.close()
    con = sqlite3.connect(tmp_path / "data" / "online.db")
    try:
        assert con.execute("PRAGMA page_size").fetchone() == (SQLITE_PAGE_BYTES,)
        # dbstat is not built into every SQLite: count pages instead, 200 rows of 1.5 KB fit in 20 of 16 KB
        assert con.execute("PRAGMA page_count").fetchone()[0] <= 40
    finally:
        con.close()


def test_an_existing_sqlite_file_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "data" / "online.db"
    path.parent.mkdir()
    con = sqlite3.connect(path)
    con.execute("PRAGMA page_size = 4096")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE fs_online (key BLOB PRIMARY KEY, value BLOB NOT NULL, expire_at INTEGER) WITHOUT ROWID")
    con.execute("INSERT INTO fs_online VALUES (x'01', x'02', NULL)")
    con.commit()
    con.close()
    store = open_online_store(SqliteOnlineConfig(path="data/online.db"), tmp_path)
    key = key_prefix_for("fs", "spend") + b"\x01"
    try:
        store.write([(key, bytes(1500), None)])
        assert store.read([key]) == [bytes(1500)]
        # the file's table of an earlier layout stays as it was until teardown empties it
        assert store.delete_namespace(b"\x01") == 1
    finally:
        store.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA page_size").fetchone() == (4096,)
    finally:
        con.close()


def test_sqlite_reads_through_mmap(tmp_path: Path) -> None:
    store = SqliteOnlineStore(SqliteOnlineConfig(path="data/online.db"), tmp_path)
    try:
        assert store._connection().execute("PRAGMA mmap_size").fetchone()[0] > 0
    finally:
        store.close()


def test_a_file_that_is_not_a_sqlite_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "data" / "online.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(OnlineStoreUnavailable, match=r"online\.db.*materialize --full"):
        open_online_store(SqliteOnlineConfig(path="data/online.db"), tmp_path)
    assert path.read_bytes() == b"not a database, " * 512  # left as it was


# --- read_async: the feature server's reads, on an event loop --------------------------------------------


def test_read_async_equals_read(store: OnlineStore, prefix: bytes) -> None:
    items = [(prefix + f"k{i}".encode(), f"value-{i}".encode() * (1 + i % 3), None) for i in range(1500)]
    store.write(items)
    keys = [k for k, _, _ in items] + [prefix + b"missing", prefix + b"k7"]
    random.Random(3).shuffle(keys)

    async def both() -> tuple[list[bytes | None], list[bytes | None], list[bytes | None]]:
        return await store.read_async(keys), await store.read_async([]), await store.read_async([prefix + b"no"])

    got, empty, missing = asyncio.run(both())
    assert got == store.read(keys)
    assert empty == [] and missing == [None]


def test_concurrent_async_reads_each_get_their_own_values(store: OnlineStore, prefix: bytes) -> None:
    """Reads in flight together share one pipelined Redis connection: each must get its own reply, in
    whatever order the tasks run, also when some read many keys and some none."""
    store.write([(prefix + b"c%d" % i, b"v%d" % i, None) for i in range(400)])
    rng = random.Random(11)
    requests = [[prefix + b"c%d" % rng.randrange(450) for _ in range(rng.choice([0, 1, 3, 100]))] for _ in range(300)]

    async def all_at_once() -> list[list[bytes | None]]:
        return list(await asyncio.gather(*(store.read_async(keys) for keys in requests)))

    async def staggered() -> list[list[bytes | None]]:
        """Reads sent while others are in flight and while none is (on Redis, those of many replies are then
        parsed as one array): each task yields to the loop a random number of times first."""
        async def one(keys: list[bytes], turns: int) -> list[bytes | None]:
            for _ in range(turns):
                await asyncio.sleep(0)
            return await store.read_async(keys)

        return list(await asyncio.gather(*(one(keys, rng.randrange(40)) for keys in requests)))

    expected = [[b"v" + k[len(prefix) + 1:] if int(k[len(prefix) + 1:]) < 400 else None for k in keys]
                for keys in requests]
    assert asyncio.run(all_at_once()) == expected
    for _ in range(3):
        assert asyncio.run(staggered()) == expected


def test_async_reads_from_several_loops_and_threads(store: OnlineStore, prefix: bytes) -> None:
    store.write([(prefix + b"t%d" % i, b"%d" % i, None) for i in range(20)])

    def work(t: int) -> None:
        async def reads() -> None:
            for i in range(20):
                if await store.read_async([prefix + b"t%d" % i, prefix + b"none"]) != [b"%d" % i, None]:
                    raise AssertionError(f"thread {t}: wrong value for t{i}")

        for _ in range(3):  # a new loop each time: the previous loop's connection is not reused
            asyncio.run(reads())

    in_threads(work, 4)


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)
def test_async_reads_over_tls_block_as_the_sdk_does(store: OnlineStore) -> None:
    """A TLS socket is not handed to the event loop (asyncio would redo the handshake): such a store reads
    with its blocking path. Opening one connects nowhere, so no TLS server is needed to see the choice."""
    from feature_store.online.stores.redis.store import RedisOnlineStore

    assert isinstance(store, RedisOnlineStore) and store._async is not None
    tls = RedisOnlineStore(RedisOnlineConfig(url="rediss://127.0.0.1:1/0"))
    assert tls._async is None
    tls.close()
