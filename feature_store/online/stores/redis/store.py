"""The Redis online store: an entity's values of every view in one hash (keys.py), one field per view.

A read of many entities from several views is one pipelined ``HMGET`` per entity, sent as one buffer:
one round trip. Keeping an entity's views in one hash, rather than a string key per view and entity,
halves what Redis spends on a 100-entity read of 3 views at a million entities (0.75 -> 0.33 ms,
measured in docs/online.md): each key lookup there is a few cache and TLB misses.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from itertools import chain
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from feature_store.config import RedisOnlineConfig
from feature_store.errors import OnlineStoreConflict, OnlineStoreUnavailable
from feature_store.online.keys import SEP, field_matches, split_key, split_prefix
from feature_store.online.stores.base import SingleNode
from feature_store.online.stores.redis.aio import HANDED_OVER, AsyncReads, first_error, reply_reader
from feature_store.online.stores.redis.resp import hdel_units, resp_hsets
from feature_store.online.stores.writes import Compute, Writes

SEP_BYTES = SEP
UPDATE_ATTEMPTS = 100  # optimistic retries of an atomic update that concurrent writers keep invalidating
SCAN_COUNT = 10_000


class RedisOnlineStore(SingleNode):
    """Values in Redis hashes: a read is pipelined HMGETs (one round trip) whatever the number of keys."""

    name: ClassVar[str] = "redis"
    exact_expiry: ClassVar[bool] = False  # a hash expires with the last of its values (redis/resp.py)
    optimistic_updates: ClassVar[bool] = True  # WATCH, read, MULTI/EXEC
    remote_writes: ClassVar[bool] = True  # every host reaching the URL writes the same server

    def __init__(self, config: RedisOnlineConfig) -> None:
        self.config = config
        self.url = safe_url(config.url)
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
        self._scripted: bool | None = None  # expiries by script (a server before 7.0); asked at the first write

    def _expiry_by_script(self) -> bool:
        """Whether the server lacks PEXPIREAT's NX and GT (Redis before 7.0), so writes.resp_hsets scripts them."""
        if self._scripted is None:
            try:
                version = str(self.client.info("server").get("redis_version", "7"))
            except RedisError as exc:
                raise self._unavailable(exc) from exc
            major = version.partition(".")[0]
            self._scripted = major.isdigit() and int(major) < 7
        return self._scripted

    def _connection_for(self, name: bytes) -> AbstractContextManager[Connection]:
        """A pooled connection to the server that holds hash ``name`` (a cluster has several)."""
        return self._connection()

    def _masters(self) -> list[redis.Redis]:
        """A client of every server holding keys of the store: SCANs go to each."""
        return [self.client]

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
    def _connection(self, client: redis.Redis | None = None) -> Iterator[Connection]:
        """A pooled connection (of ``client``, by default the store's) for hand-written pipelines; dropped, not
        reused, after any failure, since replies may be left unread on it (or a WATCH pending)."""
        pool = (client or self.client).connection_pool
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
        """Every command in one buffer, then their replies: one round trip, packed by resp_hsets."""
        if not len(writes):
            return
        scripted = self._expiry_by_script()
        with self._connection() as connection:
            commands = resp_hsets(writes, scripted)
            connection.send_packed_command([commands.data])
            _replies(connection, commands.count)

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """WATCH the keys' hashes, read them, and write in MULTI/EXEC; a concurrent write to any of those
        hashes (of any view: WATCH sees whole keys) retries."""
        if not keys:
            return
        reads = _Reads.of(keys)
        scripted = self._expiry_by_script()
        watch = b"*%d\r\n$5\r\nWATCH\r\n%b" % (1 + len(reads.names), b"".join(map(_bulk, reads.names)))
        for attempt in range(UPDATE_ATTEMPTS):
            with self._connection_for(reads.names[0]) as connection:
                # WATCH is in effect before the HMGETs run: all in one round trip
                connection.send_packed_command([watch, reads.command])
                current = reads.values(_replies(connection, 1 + reads.count, every=True)[1:])
                commands = resp_hsets(compute(current), scripted)
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
        return self._read(_Reads.of(keys))

    def read_views(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        """The values of ``prefix + entity`` for every (prefix, entities) pair, pair after pair: one HMGET
        per entity of all the pairs that share its entities."""
        if not any(entities for _, entities in views):
            return []
        return self._read(_Reads.of_views(views))

    def _read(self, reads: _Reads) -> list[bytes | None]:
        try:
            with self._read_connection() as connection:
                fresh = getattr(connection, "_sock", None) is None
                connection.send_packed_command([reads.command])
                replies = _replies(connection, reads.count, every=True)
        except OnlineStoreUnavailable as exc:
            # A connection idle since the server restarted (or closed it) fails at its next use: a read is safe to
            # send again, once, on a new one, as redis-py retries its own; a new connection's failure is final.
            if fresh or not isinstance(exc.__cause__, RedisConnectionError):
                raise
            with self._read_connection() as connection:
                connection.send_packed_command([reads.command])
                replies = _replies(connection, reads.count, every=True)
        return reads.values(replies)

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """``read`` without blocking the loop while Redis answers: concurrent reads share a pipelined
        connection (aio.py). Over TLS, the blocking ``read`` in a thread: a Redis that hangs must not hold
        the loop (and every other request on it) for a timeout per read."""
        if not keys:
            return []
        return await self._read_async(_Reads.of(keys))

    async def read_views_async(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        if not any(entities for _, entities in views):
            return []
        return await self._read_async(_Reads.of_views(views))

    async def _read_async(self, reads: _Reads) -> list[bytes | None]:
        if self._async is None:
            return await asyncio.to_thread(self._read, reads)
        return reads.values(await self._async.request(reads.command, reads.count))

    def delete_prefix(self, prefix: bytes) -> int:
        return self.delete_prefixes([prefix])

    def purge_expired(self, prefix: bytes) -> int:
        return 0  # Redis expires keys itself

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        """The fields of the prefixes' views in every hash of their namespaces, found in one SCAN of the
        database per namespace; return how many. A hash whose last field goes is gone (Redis drops it)."""
        wanted: dict[bytes, list[tuple[bytes, bool]]] = {}
        for prefix in prefixes:
            namespace, field, whole = split_prefix(prefix)
            wanted.setdefault(namespace, []).append((field, whole))
        spared = frozenset(split_key(key) for key in keep)
        try:
            return sum(self._delete_fields(client, namespace, fields, spared)
                       for client in self._masters() for namespace, fields in wanted.items())
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    def _delete_fields(self, client: redis.Redis, namespace: bytes, fields: list[tuple[bytes, bool]],
                       spared: frozenset[tuple[bytes, bytes]]) -> int:
        deleted = 0
        for batch in _scanned(client, namespace, "hash"):
            deleted += self._delete_in(client, batch, fields, spared)
        return deleted

    def _delete_in(self, client: redis.Redis, names: list[bytes], fields: list[tuple[bytes, bool]],
                   spared: frozenset[tuple[bytes, bytes]]) -> int:
        """HDEL, in one round trip, the matching fields of the hashes (read in another)."""
        with self._connection(client) as connection:
            connection.send_packed_command([b"".join(b"*2\r\n$5\r\nHKEYS\r\n" + _bulk(name) for name in names)])
            present = _replies(connection, len(names), every=True)
            commands = []
            for name, own in zip(names, present, strict=True):
                doomed = [f for f in own if (name, f) not in spared and any(field_matches(f, *w) for w in fields)]
                if doomed:
                    commands.append(b"*%d\r\n$4\r\nHDEL\r\n%b%b" % (
                        2 + len(doomed), _bulk(name), b"".join(map(_bulk, doomed))))
            if not commands:
                return 0
            connection.send_packed_command([b"".join(commands)])
            return sum(_replies(connection, len(commands), every=True))

    def scan(self, prefix: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
        """The (key, value) of every key under a key_prefix, in batches: one SCAN of the prefix's namespace, and
        the field of each hash found read in one round trip per batch."""
        namespace, field, whole = split_prefix(prefix)
        if not whole:
            raise ValueError("scan takes the prefix of one view's values (keys.key_prefix)")
        head = prefix[:len(namespace)] + SEP_BYTES + field + SEP_BYTES
        try:
            for client in self._masters():
                for batch in _scanned(client, namespace, "hash"):
                    yield self._fields_of(client, batch, field, namespace, head)
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    def _fields_of(self, client: redis.Redis, names: list[bytes], field: bytes, namespace: bytes,
                   head: bytes) -> list[tuple[bytes, bytes]]:
        with self._connection(client) as connection:
            connection.send_packed_command([b"".join(b"*3\r\n$4\r\nHGET\r\n" + _bulk(n) + _bulk(field) for n in names)])
            values = _replies(connection, len(names), every=True)
        return [(head + name[len(namespace):], value) for name, value in zip(names, values, strict=True)
                if value is not None]

    def delete_namespace(self, namespace: bytes) -> int:
        """UNLINK every key under the namespace, of any type (older layouts kept strings), SCAN batch by batch:
        a key per UNLINK, pipelined, since a cluster refuses one command over keys of several slots."""
        deleted = 0
        try:
            for client in self._masters():
                for batch in _scanned(client, namespace, None):
                    with self._connection(client) as connection:
                        connection.send_packed_command([b"".join(b"*2\r\n$6\r\nUNLINK\r\n" + _bulk(n) for n in batch)])
                        deleted += sum(_replies(connection, len(batch), every=True))
            return deleted
        except RedisError as exc:
            raise self._unavailable(exc) from exc

    def delete(self, keys: Sequence[bytes]) -> int:
        """Delete these keys (their fields: a hash whose last field goes is gone); return how many were there."""
        if not keys:
            return 0
        with self._connection() as connection:
            commands = [command for _, command in hdel_units(keys)]
            connection.send_packed_command([b"".join(commands)])
            return sum(_replies(connection, len(commands), every=True))

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


class _Reads:
    """HMGETs of keys: one per hash, with the fields asked of it, and where each key's value comes back."""

    __slots__ = ("command", "count", "names", "order", "slices", "units")

    def __init__(self, command: bytes, count: int, names: list[bytes] | None = None, order: list[int] | None = None,
                 slices: list[slice] | None = None, units: list[tuple[bytes, bytes]] | None = None) -> None:
        self.command, self.count = command, count  # the HMGETs in RESP, and how many
        self.names = names or []  # their hashes, where a caller needs them (to WATCH)
        # for a cluster, which sends each to the node of its hash: (hash, HMGET) each, in the order of command's
        self.units = units
        # where the keys' values are among the replies' values laid end to end: per key, or per run of keys
        self.order, self.slices = order, slices

    def values(self, replies: list[list[bytes | None]]) -> list[bytes | None]:
        flat: list[bytes | None] = list(chain.from_iterable(replies))
        if self.slices is not None:
            return list(chain.from_iterable(flat[run] for run in self.slices))
        return [flat[i] for i in self.order or ()]

    @classmethod
    def of(cls, keys: Sequence[bytes], units: bool = False) -> _Reads:
        """Any keys: grouped by hash, in order of first appearance (``units``: each HMGET apart too)."""
        fields: dict[bytes, list[bytes]] = {}
        spots = []
        for key in keys:
            name, field = split_key(key)
            own = fields.setdefault(name, [])
            spots.append((name, len(own)))
            own.append(field)
        starts, at = {}, 0
        for name, own in fields.items():
            starts[name] = at
            at += len(own)
        commands = [b"*%d\r\n$5\r\nHMGET\r\n%b%b" % (2 + len(own), _bulk(name), b"".join(map(_bulk, own)))
                    for name, own in fields.items()]
        return cls(b"".join(commands), len(fields), list(fields), order=[starts[name] + i for name, i in spots],
                   units=list(zip(fields, commands, strict=True)) if units else None)

    @classmethod
    def of_views(cls, views: Sequence[tuple[bytes, Sequence[bytes]]], units: bool = False) -> _Reads:
        """The keys ``prefix + entity`` of (prefix, entities) pairs, pair after pair (the reader's views):
        the views that share one list of entities ask each entity's hash once, for all their fields."""
        namespace = _namespace(tuple(prefix for prefix, _ in views))
        if namespace is None:  # never from the reader: one project a read
            return cls.of([prefix + entity for prefix, entities in views for entity in entities], units)
        shared: dict[int, list[int]] = {}  # views usually share one entity list; others have other join keys
        for v, (_, entities) in enumerate(views):
            shared.setdefault(id(entities), []).append(v)
        parts: list[bytes] = []
        runs: list[slice] = [slice(0)] * len(views)
        start = count = 0
        for members in shared.values():
            entities, width = views[members[0]][1], len(members)
            parts += _hmgets(namespace, _fields(tuple(views[v][0] for v in members)), entities)
            stop = start + width * len(entities)
            for at, v in enumerate(members):  # a view's values are every width-th from its field's place on
                runs[v] = slice(start + at, stop, width)
            start, count = stop, count + len(entities)
        if units:  # each entity's HMGET is three parts: up to the entity, the entity, after it
            made = [(namespace + parts[i + 1], b"".join(parts[i:i + 3])) for i in range(0, len(parts), 3)]
            return cls(b"", count, slices=runs, units=made)
        return cls(b"".join(parts), count, slices=runs)


Fields = tuple[bytes, bytes]  # an HMGET of some views' fields, up to the hash's name and after it


@functools.lru_cache(maxsize=1024)  # the reader asks for the same few combinations of views, again and again
def _namespace(prefixes: tuple[bytes, ...]) -> bytes | None:
    """The namespace of the views of ``prefixes`` (None: they are not of one namespace)."""
    namespaces = {split_prefix(prefix)[0] for prefix in prefixes}
    return namespaces.pop() if len(namespaces) == 1 else None


@functools.lru_cache(maxsize=1024)
def _fields(prefixes: tuple[bytes, ...]) -> Fields:
    """How to ask an entity's hash for the fields of the views of ``prefixes``."""
    fields = [split_prefix(prefix)[1] for prefix in prefixes]
    return b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields)), b"\r\n" + b"".join(map(_bulk, fields))


def _hmgets(namespace: bytes, fields: Fields, entities: Sequence[bytes]) -> list[bytes]:
    """``HMGET namespace+entity fields...`` per entity, as pieces to join: the command up to the entity is the
    same for every entity of one key length (most of them), so it is made once per length."""
    head, tail = fields
    heads: dict[int, bytes] = {}
    parts: list[bytes] = []
    base = len(namespace)
    for entity in entities:
        size = base + len(entity)
        start = heads.get(size) or heads.setdefault(size, head + b"$%d\r\n%b" % (size, namespace))
        parts += (start, entity, tail)
    return parts


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _replies(connection: Connection, count: int, every: bool = False) -> Any:
    """Read ``count`` replies, raising the first error among them; return the last (``every``: all of them).

    redis-py spends about 3 us a reply in Python, and even a hiredis reader's ``gets`` per reply costs a
    read of 100 entities (100 HMGET replies) tens of microseconds: the replies are parsed here by a hiredis
    reader of their own, straight off the connection's socket, as one array (a header for ``count``
    elements fed first: the replies arrive back to back), so in one call, in C. Nothing else is in flight
    on the connection: every caller reads all it asked for."""
    replies = read_replies(connection, count)
    error = first_error(replies)
    if error is not None:
        raise error
    return replies if every else replies[-1] if replies else None


def read_replies(connection: Connection, count: int) -> list[Any]:
    """``count`` replies off the connection, error replies among them as ResponseError values (see _replies)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:  # not connected: redis-py's own path connects or raises
        replies = []
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
    else:
        reader = reply_reader()
        reader.feed(b"*%d\r\n" % count)
        while (replies := reader.gets()) is False:  # not all of them yet
            try:
                data = sock.recv(1 << 16)
            except TimeoutError as exc:
                raise RedisTimeoutError(f"timeout reading replies: {exc}") from exc
            except OSError as exc:
                raise RedisConnectionError(f"error reading replies: {exc}") from exc
            if not data:
                raise RedisConnectionError("connection closed by server")
            reader.feed(data)
    return replies


def _scanned(client: redis.Redis, namespace: bytes, kind: str | None) -> Iterator[list[bytes]]:
    """The keys under a namespace on one server (of one type, if ``kind``), in batches of up to SCAN_COUNT."""
    batch: list[bytes] = []
    for name in client.scan_iter(match=_glob_escape(namespace) + b"*", count=SCAN_COUNT, _type=kind):
        batch.append(name)
        if len(batch) >= SCAN_COUNT:
            yield batch
            batch = []
    if batch:
        yield batch


def _glob_escape(prefix: bytes) -> bytes:
    """A SCAN MATCH pattern matching the prefix literally."""
    out = bytearray()
    for byte in prefix:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
