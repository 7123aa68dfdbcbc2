"""Online stores behind one small protocol: Redis (production) and SQLite (embedded default).

A store only keeps opaque values under binary keys, each with an expiry; everything it holds
is written by materialization and read back by the reader. Keys carry the project name and a
layout version, so projects can share one Redis and a new layout never misreads an old one.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from feature_store.config import RedisOnlineConfig, SqliteOnlineConfig, resolve_path
from feature_store.errors import OnlineStoreConflict, OnlineStoreUnavailable
from feature_store.online.aio import HANDED_OVER, AsyncReads, mget_command, reply_reader
from feature_store.online.writes import Writes, items_of, resp_sets

LAYOUT_VERSION = 3
SQLITE_TIMEOUT_SECONDS = 10.0  # how long a SQLite writer waits for another
SQLITE_PAGE_BYTES = 16_384  # of a new SQLite online store file
SQLITE_MMAP_BYTES = 1 << 40  # SQLite caps it at its build's maximum (2 GB in most builds)

Compute = Callable[[list[bytes | None]], Writes]
UPDATE_ATTEMPTS = 100  # optimistic retries of an atomic update that concurrent writers keep invalidating


class OnlineStore(Protocol):
    name: ClassVar[str]
    one_round_trip_reads: ClassVar[bool]

    def write(self, writes: Writes) -> None: ...

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """Atomically: read ``keys``, then write what ``compute`` makes of their current values."""
        ...

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """``read`` for code on an asyncio event loop (the feature server)."""
        ...

    def delete_prefix(self, prefix: bytes) -> int: ...

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        """Delete every key under any of the prefixes except those in ``keep``; return how many."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def key_prefix(store_prefix: str, project: str, view: str, signature: str = "") -> bytes:
    """Keys of a view's values; with the definition's signature, so a changed definition never reads old values."""
    base = f"{store_prefix}:v{LAYOUT_VERSION}:{project}:{view}:"
    return (base + (f"{signature}:" if signature else "")).encode()


class RedisOnlineStore:
    """Values in Redis strings: a read is one MGET (one round trip) whatever the number of keys."""

    name: ClassVar[str] = "redis"
    one_round_trip_reads: ClassVar[bool] = True

    def __init__(self, config: RedisOnlineConfig) -> None:
        self.config = config
        self.url = _safe_url(config.url)
        self.client = redis.Redis.from_url(
            config.url, socket_timeout=config.timeout_seconds, socket_connect_timeout=config.timeout_seconds,
            retry=Retry(NoBackoff(), 0),  # fail within the timeout; the next call reconnects by itself
            health_check_interval=30,
        )
        self._local = threading.local()  # each thread's connection for reads
        self._readers: list[Connection] = []  # all of them, to close
        self._readers_lock = threading.Lock()
        handed = self.client.connection_pool.connection_class in HANDED_OVER  # not over TLS
        self._async = AsyncReads(self._new_connection, config.timeout_seconds, self._unavailable) if handed else None

    def _new_connection(self) -> Connection:
        """A connection of its own (not from the pool), set up as the URL says."""
        pool = self.client.connection_pool
        connection: Connection = pool.connection_class(**pool.connection_kwargs)
        return connection

    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailable:
        return OnlineStoreUnavailable(
            f"the Redis online store at {self.url} is unavailable ({type(exc).__name__}: {exc}); check that it "
            "runs and that online_store.url in feature_store.yaml is right.", url=self.url,
        )

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled connection for hand-written pipelines; dropped, not reused, after any failure, since
        replies may be left unread on it (or a WATCH pending)."""
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        try:
            with self._dropped_on_failure(connection):
                yield connection
        finally:
            pool.release(connection)

    @contextmanager
    def _dropped_on_failure(self, connection: Connection) -> Iterator[None]:
        """After any failure the connection is disconnected (replies may be left unread on it, or a WATCH
        pending; its next use connects again), and a Redis error, refused writes too (out of memory,
        read-only replica), becomes OnlineStoreUnavailable."""
        try:
            yield
        except BaseException as exc:
            connection.disconnect()
            if isinstance(exc, RedisError):
                raise self._unavailable(exc) from exc
            raise

    @contextmanager
    def _read_connection(self) -> Iterator[Connection]:
        """This thread's own connection: reads skip the pool, whose checkout costs about as much as parsing
        a small reply (a lock, and a poll for unread data). Dropped after any failure, like pooled ones, and
        made again in a forked child (the parent's socket is not its own)."""
        mine = getattr(self._local, "reader", None)
        if mine is None or mine[0] != os.getpid():
            connection = self._new_connection()
            with self._readers_lock:
                self._readers.append(connection)
            self._local.reader = mine = (os.getpid(), connection)
        with self._dropped_on_failure(mine[1]):
            yield mine[1]

    def write(self, writes: Writes) -> None:
        """Every command in one buffer, then their replies: one round trip, packed by resp_sets."""
        if not len(writes):
            return
        with self._connection() as connection:
            commands = resp_sets(writes)
            connection.send_packed_command([commands.data])
            _replies(connection, commands.count)

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """WATCH the keys, read them, and write in MULTI/EXEC; a concurrent write to any of them retries."""
        if not keys:
            return
        for attempt in range(UPDATE_ATTEMPTS):
            with self._connection() as connection:
                connection.send_packed_command(connection.pack_commands([("WATCH", *keys), ("MGET", *keys)]))
                connection.read_response()  # WATCH is in effect before MGET runs: both in one round trip
                current: list[bytes | None] = connection.read_response()
                writes = compute(current)
                commands = resp_sets(writes)
                connection.send_packed_command([b"*1\r\n$5\r\nMULTI\r\n", commands.data, b"*1\r\n$4\r\nEXEC\r\n"])
                # OK, QUEUED per command, then EXEC's replies: none when a watched key changed
                if _replies(connection, commands.count + 2) is not None:
                    return
            time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))  # spread the retries
        raise OnlineStoreConflict(
            f"updating {len(keys)} key(s) in the Redis online store at {self.url} lost to concurrent writers "
            f"{UPDATE_ATTEMPTS} times in a row; retry later.", url=self.url,
        )

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        with self._read_connection() as connection:
            connection.send_packed_command([mget_command(keys)])  # redis-py's packing costs 3x
            values: list[bytes | None] = connection.read_response()
        return values

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """``read`` without blocking the loop while Redis answers: concurrent reads share a pipelined
        connection (aio.py). Over TLS, the blocking ``read``."""
        if not keys:
            return []
        if self._async is None:
            return self.read(keys)
        return await self._async.mget(mget_command(keys))

    def delete_prefix(self, prefix: bytes) -> int:
        return self.delete_prefixes([prefix])

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        """Keys under any of the prefixes, found in one SCAN of the database (matching their common start)."""
        if not prefixes:
            return 0
        common = bytes(_common_start(prefixes))
        wanted, spared = tuple(prefixes), frozenset(keep)
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=_glob_escape(common) + b"*", count=10_000):
                if key.startswith(wanted) and key not in spared:
                    batch.append(key)
                if len(batch) >= 5_000:
                    deleted += int(self.client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(self.client.unlink(*batch))
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        return deleted

    def ping(self) -> None:
        try:
            self.client.ping()
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for connection in readers:
            connection.disconnect()
        self._local = threading.local()
        if self._async is not None:
            self._async.close()
        self.client.close()


def _replies(connection: Connection, count: int) -> Any:
    """Read ``count`` replies, raising the first error among them; return the last. redis-py spends about
    3 us a reply in Python: a batch's thousands are parsed here by a hiredis reader of their own, straight
    off the connection's socket (nothing else is in flight on it: every caller reads all it asked for)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:  # not connected: redis-py's own path connects or raises
        replies = [connection.read_response() for _ in range(count)]
        return replies[-1] if replies else None
    reader = reply_reader()
    reply: Any = None
    while count:
        reply = reader.gets()
        if reply is False:  # not a whole reply yet
            try:
                data = sock.recv(1 << 16)
            except TimeoutError as exc:
                raise RedisTimeoutError(f"timeout reading replies: {exc}") from exc
            except OSError as exc:
                raise RedisConnectionError(f"error reading replies: {exc}") from exc
            if not data:
                raise RedisConnectionError("connection closed by server")
            reader.feed(data)
        elif isinstance(reply, ResponseError):
            raise reply
        else:
            count -= 1
    return reply


class SqliteOnlineStore:
    """Values in one SQLite table; a read is one SELECT ... WHERE key IN (...)."""

    name: ClassVar[str] = "sqlite"
    one_round_trip_reads: ClassVar[bool] = True

    def __init__(self, config: SqliteOnlineConfig, repo: Path) -> None:
        self.path = resolve_path(repo, config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as con:
            con.execute("CREATE TABLE IF NOT EXISTS fs_online (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
                        "expire_at INTEGER) WITHOUT ROWID")

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(self.path, timeout=SQLITE_TIMEOUT_SECONDS, check_same_thread=False)
            except sqlite3.Error as exc:
                raise self._cannot_open(exc) from exc
            try:
                self._configure(con)
            except sqlite3.Error as exc:
                con.close()
                raise self._cannot_open(exc) from exc
            self._local.con = con
        return con

    def _cannot_open(self, exc: sqlite3.Error) -> OnlineStoreUnavailable:
        return OnlineStoreUnavailable(
            f"cannot open the SQLite online store {self.path}: {exc}; check online_store.path in feature_store.yaml, "
            "or delete the file and run `feature-store materialize --full`.",
        )

    @staticmethod
    def _configure(con: sqlite3.Connection) -> None:
        # Before anything is written (a no-op on an existing file): a WITHOUT ROWID row holds at most about a
        # quarter of a page, so with 4 KB pages a 1 KB value spills onto overflow pages. 16 KB pages keep
        # values up to about 4 KB in the B-tree: 3x faster writes, 2x faster reads, a third of the file (measured).
        con.execute(f"PRAGMA page_size = {SQLITE_PAGE_BYTES}")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        # Reads from the file's pages in place instead of a read() per page: 300 random keys of a 1.6 GB
        # file in 1.3 instead of 3.5 ms (measured). Writes still go through SQLite's own I/O.
        con.execute(f"PRAGMA mmap_size = {SQLITE_MMAP_BYTES}")

    def write(self, writes: Writes) -> None:
        con = self._connection()
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO fs_online (key, value, expire_at) VALUES (?, ?, ?)",
                                items_of(writes))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"writing the SQLite online store {self.path} failed: {exc}") from exc

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """Read and write in one IMMEDIATE transaction: other writers (threads or processes) wait."""
        con = self._connection()
        try:
            self._begin_immediate(con)
            try:
                current = self._select(con, keys, int(time.time() * 1000))
                con.executemany("INSERT OR REPLACE INTO fs_online (key, value, expire_at) VALUES (?, ?, ?)",
                                items_of(compute([current.get(key) for key in keys])))
            except BaseException:
                con.rollback()
                raise
            con.commit()
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"updating the SQLite online store {self.path} failed: {exc}") from exc

    @staticmethod
    def _begin_immediate(con: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, trying every millisecond or so for up to the timeout. SQLite's own busy handler
        backs off to 100 ms between tries, so a writer that commits often (a stream of pushes) can starve a
        waiting one (seen in CI: a materialization timed out after 10 s behind a pusher)."""
        deadline = time.monotonic() + SQLITE_TIMEOUT_SECONDS
        con.execute("PRAGMA busy_timeout = 1")
        try:
            while True:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(random.uniform(0.0002, 0.002))
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(SQLITE_TIMEOUT_SECONDS * 1000)}")

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            found = self._select(self._connection(), keys, int(time.time() * 1000))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"reading the SQLite online store {self.path} failed: {exc}") from exc
        return [found.get(key) for key in keys]

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """An embedded file: a read blocks for tens of microseconds, less than handing it to a thread."""
        return self.read(keys)

    @staticmethod
    def _select(con: sqlite3.Connection, keys: Sequence[bytes], now_ms: int) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for start in range(0, len(keys), 900):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 900]
            rows = con.execute(
                f"SELECT key, value FROM fs_online WHERE key IN ({','.join('?' * len(chunk))}) "
                "AND (expire_at IS NULL OR expire_at > ?)", [*chunk, now_ms],
            ).fetchall()
            found.update((bytes(k), bytes(v)) for k, v in rows)
        return found

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        return sum(self._delete_prefix(prefix, list(keep)) for prefix in prefixes)

    def delete_prefix(self, prefix: bytes) -> int:
        return self.delete_prefixes([prefix])

    def _delete_prefix(self, prefix: bytes, keep: list[bytes]) -> int:
        con = self._connection()
        upper = _prefix_end(prefix)
        where, params = "key >= ?", [prefix]
        if upper is not None:
            where, params = where + " AND key < ?", [*params, upper]
        if keep:
            where, params = where + f" AND key NOT IN ({','.join('?' * len(keep))})", [*params, *keep]
        with con:
            cur = con.execute(f"DELETE FROM fs_online WHERE {where}", params)
        return int(cur.rowcount)

    def ping(self) -> None:
        self._connection().execute("SELECT 1")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def open_online_store(config: RedisOnlineConfig | SqliteOnlineConfig, repo: Path) -> OnlineStore:
    if isinstance(config, RedisOnlineConfig):
        return RedisOnlineStore(config)
    return SqliteOnlineStore(config, repo)


def _glob_escape(prefix: bytes) -> bytes:
    """A SCAN MATCH pattern matching the prefix literally."""
    out = bytearray()
    for byte in prefix:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def _common_start(prefixes: Sequence[bytes]) -> bytes:
    first, last = min(prefixes), max(prefixes)
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    return first[:size]


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with prefix (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
