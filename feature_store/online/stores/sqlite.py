"""The SQLite online store: values in one table of a file, the embedded default.

Rows are laid out by entity, as Redis keeps a hash per entity (keys.split_key): the primary key is (entity,
field), where ``entity`` is the key's namespace and packed entity key and ``field`` its view field. An entity's
values of every view, and their pushed deltas, are neighbours in the B-tree, so a read of many views' values of
100 entities is 100 index seeks, not one per view and entity: 100 entities x 10 features of 3 views (5 fields,
two of them pushed deltas) in 1.5 instead of 2.0 ms (benchmarks/online.py, measured 2026-12-05).

Files written by earlier versions hold their values in the table ``fs_online`` (one row per key); this version
neither reads nor writes it: such a store has no identity in the new table, so the next ``materialize`` rebuilds
it, and ``teardown`` removes the old table's rows too.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from feature_store.config import SqliteOnlineConfig, resolve_path
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.keys import SEP, split_key, split_prefix
from feature_store.online.stores.base import SingleNode
from feature_store.online.stores.writes import Batch, Compute, Writes
from feature_store.online.tiles.packing import join, lit

SQLITE_TIMEOUT_SECONDS = 10.0  # how long a SQLite writer waits for another
SQLITE_PAGE_BYTES = 16_384  # of a new SQLite online store file
SQLITE_MMAP_BYTES = 1 << 40  # SQLite caps it at its build's maximum (2 GB in most builds)
SCAN_ROWS = 10_000


TABLE = "fs_online_by_entity"
LEGACY_TABLE = "fs_online"  # one row per key, before the layout by entity (read by nothing; teardown empties it)
Row = tuple[bytes, bytes, bytes, "int | None"]  # entity, field, value, expire at


class SqliteOnlineStore(SingleNode):
    """Values in one SQLite table keyed by (entity, field); a read is one SELECT of the entities' rows."""

    name: ClassVar[str] = "sqlite"
    exact_expiry: ClassVar[bool] = True
    optimistic_updates: ClassVar[bool] = False
    remote_writes: ClassVar[bool] = False  # a file of the driver's disk (base.py)

    def __init__(self, config: SqliteOnlineConfig, repo: Path) -> None:
        self.path = resolve_path(repo, config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._fields: dict[bytes, tuple[bytes, bytes]] = {}
        with self._connection() as con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (entity BLOB NOT NULL, field BLOB NOT NULL, "
                        "value BLOB NOT NULL, expire_at INTEGER, PRIMARY KEY (entity, field)) WITHOUT ROWID")

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
            # Waits for the write lock the same way as update(): with SQLite's own busy handler, a stream of
            # pushes (each retrying every millisecond) starved a materialization write for 10 s under load.
            with self._writing(con):
                con.executemany(INSERT, _rows(writes))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"writing the SQLite online store {self.path} failed: {exc}") from exc

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """Read and write in one IMMEDIATE transaction: other writers (threads or processes) wait."""
        con = self._connection()
        try:
            with self._writing(con):
                current = self._select(con, [_split(key) for key in keys], int(time.time() * 1000))
                con.executemany(INSERT, _rows(compute([current.get(_split(key)) for key in keys])))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"updating the SQLite online store {self.path} failed: {exc}") from exc

    @classmethod
    @contextlib.contextmanager
    def _writing(cls, con: sqlite3.Connection) -> Iterator[None]:
        """One IMMEDIATE transaction, committed on success and rolled back on any exception."""
        cls._begin_immediate(con)
        try:
            yield
        except BaseException:
            con.rollback()
            raise
        con.commit()

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
        return self._read([_split(key) for key in keys])

    def read_views(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        split = [self._view_field(prefix) for prefix, _ in views]
        if all(len(entities) == 1 for _, entities in views):  # one entity row: the commonest read, kept short
            wanted = {namespace + ids[0] for (namespace, _), (_, ids) in zip(split, views, strict=True)}
            if len(wanted) == 1:
                entity = wanted.pop()
                try:
                    rows = self._connection().execute(SELECT_FIELDS, (entity, int(time.time() * 1000))).fetchall()
                except sqlite3.Error as exc:
                    raise OnlineStoreUnavailable(f"reading the SQLite online store {self.path} failed: {exc}") from exc
                found = dict(rows)  # field -> value
                return [found.get(field) for _, field in split]
        pairs: list[tuple[bytes, bytes]] = []
        for (namespace, field), (_, entities) in zip(split, views, strict=True):
            pairs += [(namespace + entity, field) for entity in entities]
        return self._read(pairs)

    def _view_field(self, prefix: bytes) -> tuple[bytes, bytes]:
        """(namespace, field) of a view's key prefix, remembered: a server reads the same few views again and
        again, and splitting is a tenth of a one-entity read."""
        split = self._fields.get(prefix)
        if split is None:
            namespace, field, whole = split_prefix(prefix)
            if not whole:
                raise ValueError(f"not a prefix of one view's values (keys.key_prefix): {prefix!r}")
            if len(self._fields) > 10_000:  # bounded: prefixes change only with generations
                self._fields.clear()
            split = self._fields[prefix] = (namespace, field)
        return split

    def _read(self, pairs: list[tuple[bytes, bytes]]) -> list[bytes | None]:
        if not pairs:
            return []
        try:
            found = self._select(self._connection(), pairs, int(time.time() * 1000))
        except sqlite3.Error as exc:
            raise OnlineStoreUnavailable(f"reading the SQLite online store {self.path} failed: {exc}") from exc
        return [found.get(pair) for pair in pairs]

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """An embedded file: a read blocks for tens of microseconds, less than handing it to a thread."""
        return self.read(keys)

    async def read_views_async(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        return self.read_views(views)

    @staticmethod
    def _select(con: sqlite3.Connection, pairs: Sequence[tuple[bytes, bytes]],
                now_ms: int) -> dict[tuple[bytes, bytes], bytes]:
        """The live values of the pairs' entities, every field of each (an entity's fields are few: its views and
        their deltas), by (entity, field): one index seek per entity. Callers look up the pairs they asked for."""
        if len(pairs) == 1 or all(entity == pairs[0][0] for entity, _ in pairs):  # one entity: the common read
            rows = con.execute(SELECT_ONE, (pairs[0][0], now_ms)).fetchall()
            return {(entity, field): value for entity, field, value in rows}  # BLOBs come back as bytes
        found: dict[tuple[bytes, bytes], bytes] = {}
        entities = list(dict.fromkeys(entity for entity, _ in pairs))
        for start in range(0, len(entities), 900):  # SQLite's bound-parameter limit
            chunk = entities[start:start + 900]
            rows = con.execute(f"SELECT entity, field, value FROM {TABLE} WHERE entity IN "
                               f"({','.join('?' * len(chunk))}) AND (expire_at IS NULL OR expire_at > ?)",
                               [*chunk, now_ms]).fetchall()
            found.update(((entity, field), value) for entity, field, value in rows)
        return found

    def delete_prefixes(self, prefixes: Sequence[bytes], keep: Collection[bytes] = ()) -> int:
        spared = [_split(key) for key in keep]
        return sum(self._delete_where(*_under(prefix), spared) for prefix in prefixes)

    def delete_prefix(self, prefix: bytes) -> int:
        return self.delete_prefixes([prefix])

    def _delete_where(self, where: str, params: list[object], spared: list[tuple[bytes, bytes]]) -> int:
        con = self._connection()
        if spared:
            where += f" AND (entity, field) NOT IN (VALUES {','.join(['(?, ?)'] * len(spared))})"
            params = [*params, *(x for pair in spared for x in pair)]
        with self._writing(con):
            cur = con.execute(f"DELETE FROM {TABLE} WHERE {where}", params)
        return int(cur.rowcount)

    def purge_expired(self, prefix: bytes) -> int:
        """Delete the expired keys under a prefix (reads skip them, but SQLite keeps rows until deleted)."""
        where, params = _under(prefix)
        return self._delete_where(where + " AND expire_at IS NOT NULL AND expire_at <= ?",
                                  [*params, time.time_ns() // 1_000_000], [])

    def scan(self, prefix: bytes) -> Iterator[list[tuple[bytes, bytes]]]:
        """The (key, value) of every key under a prefix, in batches of at most SCAN_ROWS rows read."""
        namespace, _, _ = split_prefix(prefix)
        where, params = _under(prefix)
        con, after = self._connection(), (b"", b"")
        while True:
            rows = con.execute(f"SELECT entity, field, value FROM {TABLE} WHERE {where} AND (entity, field) > (?, ?) "
                               f"ORDER BY entity, field LIMIT {SCAN_ROWS}", [*params, *after]).fetchall()
            if not rows:
                return
            yield [(_join(namespace, bytes(entity), bytes(field)), bytes(value)) for entity, field, value in rows]
            after = (bytes(rows[-1][0]), bytes(rows[-1][1]))

    def delete(self, keys: Sequence[bytes]) -> int:
        con = self._connection()
        pairs = [_split(key) for key in keys]
        deleted = 0
        with self._writing(con):
            for start in range(0, len(pairs), 450):  # SQLite's bound-parameter limit
                chunk = pairs[start:start + 450]
                cur = con.execute(f"DELETE FROM {TABLE} WHERE (entity, field) IN "
                                  f"(VALUES {','.join(['(?, ?)'] * len(chunk))})", [x for p in chunk for x in p])
                deleted += int(cur.rowcount)
        return deleted

    def delete_namespace(self, namespace: bytes) -> int:
        """Every row of the namespace, in this layout's table and in the legacy one (files of earlier versions)."""
        upper = _prefix_end(namespace)
        con = self._connection()
        deleted = 0
        with self._writing(con):
            for table, column in ((TABLE, "entity"), (LEGACY_TABLE, "key")):
                if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone():
                    where, params = f"{column} >= ?", [namespace]
                    if upper is not None:
                        where, params = where + f" AND {column} < ?", [*params, upper]
                    deleted += int(con.execute(f"DELETE FROM {table} WHERE {where}", params).rowcount)
        return deleted

    def ping(self) -> None:
        self._connection().execute("SELECT 1")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


SELECT_ONE = f"SELECT entity, field, value FROM {TABLE} WHERE entity = ? AND (expire_at IS NULL OR expire_at > ?)"
SELECT_FIELDS = f"SELECT field, value FROM {TABLE} WHERE entity = ? AND (expire_at IS NULL OR expire_at > ?)"
INSERT = f"INSERT OR REPLACE INTO {TABLE} (entity, field, value, expire_at) VALUES (?, ?, ?, ?)"


def _split(key: bytes) -> tuple[bytes, bytes]:
    """(entity, field) of a store key (keys.split_key)."""
    return split_key(key)


def _join(namespace: bytes, entity: bytes, field: bytes) -> bytes:
    """The store key of a row: keys.split_key undone."""
    return namespace + SEP + field + SEP + entity[len(namespace):]


def _rows(writes: Writes) -> list[Row] | Iterator[Row]:
    if not isinstance(writes, Batch) or not writes.prefix:
        items = writes.items() if isinstance(writes, Batch) else writes
        return [(*_split(key), value, expire) for key, value, expire in items]
    namespace, field, whole = split_prefix(writes.prefix)
    if not whole:
        raise ValueError(f"a batch's prefix must be one view's (keys.key_prefix): {writes.prefix!r}")
    entities = join([lit(namespace), writes.entities]).to_pylist()  # column-wise: no Python bytes per piece
    expire = [None] * len(entities) if writes.expire_at is None else writes.expire_at.to_pylist()
    rows: list[Row] = [(entity, field, value, at) for entity, value, at in
                       zip(entities, writes.values.to_pylist(), expire, strict=True)]
    return rows + [(*_split(key), value, at) for key, value, at in writes.extra]


def _under(prefix: bytes) -> tuple[str, list[object]]:
    """The WHERE clause of the rows under a key prefix: its namespace's entities, and its view field (or, for a
    keys.view_prefix, every field that starts with it)."""
    namespace, field, whole = split_prefix(prefix)
    params: list[object] = [namespace]
    where = "entity >= ?"
    upper = _prefix_end(namespace)
    if upper is not None:
        where, params = where + " AND entity < ?", [*params, upper]
    if whole:
        return where + " AND field = ?", [*params, field]
    where, params = where + " AND field >= ?", [*params, field]
    field_upper = _prefix_end(field)
    if field_upper is not None:
        where, params = where + " AND field < ?", [*params, field_upper]
    return where, params


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with prefix (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
