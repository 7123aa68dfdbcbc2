"""A push log several hosts share: pushed rows in a PostgreSQL table, folded into parquet parts by compaction.

Each push's lines are inserted and committed before it is acknowledged. A writer thread per process commits every
push waiting at that moment in one transaction (group commit), so many concurrent pushes share one round trip and one
WAL flush. The manifest of compacted parts is a row per push source in ``<table>_manifest``; the parts themselves
live on storage every host reading training sets can reach (``compacted_path``).

Compaction finds the last row to fold in under a brief ``EXCLUSIVE`` table lock: it waits for the inserts in flight
to commit, so every row up to that id is visible and a row committed later gets a higher id (ids are taken when an
insert starts, after its lock). Readers read the rows first and the manifest second: rows deleted in between were
folded into parts that manifest names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feature_store.errors import MissingDependencyError, PushLogUnavailable, PushStalledError
from feature_store.offline.push_log import compaction
from feature_store.offline.push_log.base import Availability, CompactResult, LogSnapshot

try:
    import psycopg
except ImportError:  # an optional extra: the error says how to install it when this log is configured
    psycopg = None  # type: ignore[assignment]


@dataclass
class _Pending:
    source: str
    data: bytes
    pushed_at: int
    deadline_us: int | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class PostgresManifest:
    """A source's manifest as a row of ``<table>_manifest``; compactions take turns by an advisory lock."""

    def __init__(self, log: PostgresPushLog, source: str) -> None:
        self.log, self.source = log, source

    def load(self, con: Any = None) -> compaction.Manifest:
        """The manifest, on ``con`` when a caller already holds a connection (else on one of its own)."""
        if con is None:
            with self.log.connect() as own:
                return self.load(own)
        row = con.execute(f"SELECT manifest FROM {self.log.table}_manifest WHERE source = %s",
                          (self.source,)).fetchone()
        return compaction.Manifest.from_json(row[0]) if row else compaction.Manifest()

    def commit(self, manifest: compaction.Manifest) -> None:
        with self.log.connect() as con:
            con.execute(f"INSERT INTO {self.log.table}_manifest (source, manifest) VALUES (%s, %s) "
                        "ON CONFLICT (source) DO UPDATE SET manifest = EXCLUDED.manifest",
                        (self.source, manifest.to_json()))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        digest = hashlib.sha256(f"{self.log.table}/{self.source}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        with self.log.connect() as con:  # the lock ends with the session: also when the process is killed
            con.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                con.execute("SELECT pg_advisory_unlock(%s)", (key,))


class PostgresPushLog(Availability):
    """Pushed rows in ``<table>(id, source, pushed_at, line)``; compacted parts under ``<folder>/<source>/``."""

    def __init__(self, url: str, table: str, folder: Path, delete_grace_seconds: float = 900.0,
                 commit_delay_ms: float = 0.0) -> None:
        super().__init__()
        if psycopg is None:
            raise MissingDependencyError("offline_store.push_log type 'postgres' needs psycopg: "
                                         "pip install 'feature-store[postgres]'")
        self.url, self.table, self.folder = url, table, folder
        self.fsync = True  # a push is acknowledged once its transaction committed
        self.delete_grace_seconds = delete_grace_seconds
        self.commit_delay_ms = commit_delay_ms
        self._lock = threading.Lock()
        self._last = 0
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._writer: tuple[int, threading.Thread] | None = None
        self._created = False
        self._scratch: Path | None = None

    # --- connections -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        try:
            con = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise PushLogUnavailable(f"cannot reach the push log's PostgreSQL database: {exc}. Check "
                                     "offline_store.push_log.url and that the database is up.") from exc
        try:
            if not self._created:
                self._create(con)
            yield con
        except psycopg.Error as exc:
            raise PushLogUnavailable(f"the push log's PostgreSQL database failed: {exc}") from exc
        finally:
            con.close()

    def _create(self, con: Any) -> None:
        t = self.table
        with con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(7311)")  # CREATE IF NOT EXISTS races between processes
            con.execute(f"CREATE TABLE IF NOT EXISTS {t} (id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, "
                        "pushed_at BIGINT NOT NULL, line TEXT NOT NULL)")
            con.execute(f"CREATE INDEX IF NOT EXISTS {t}_source_id ON {t} (source, id)")
            con.execute(f"CREATE INDEX IF NOT EXISTS {t}_source_at ON {t} (source, pushed_at)")
            con.execute(f"CREATE TABLE IF NOT EXISTS {t}_manifest (source TEXT PRIMARY KEY, manifest TEXT NOT NULL)")
        self._created = True

    # --- appending ---------------------------------------------------------------------------------------------

    def append(self, source: str, lines: Callable[[int], bytes], pushed_at: int | None = None,
               deadline_us: int | None = None) -> int:
        """Insert ``lines(pushed_at)`` and wait for their commit, shared with the pushes waiting alongside."""
        with self._lock:
            if pushed_at is None:
                pushed_at = self._last = max(self._last + 1, time.time_ns() // 1000)
            self._start_writer()
        pending = _Pending(source, lines(pushed_at), pushed_at, deadline_us)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pushed_at

    def _start_writer(self) -> None:
        if self._writer is None or self._writer[0] != os.getpid():  # none yet, or this is a forked child
            self._queue = queue.SimpleQueue()
            thread = threading.Thread(target=self._write_loop, name="push-log-writer", daemon=True)
            self._writer = (os.getpid(), thread)
            thread.start()

    def _write_loop(self) -> None:
        con: Any = None
        while True:
            batch = [self._queue.get()]
            if self.commit_delay_ms:
                time.sleep(self.commit_delay_ms / 1000)
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self._queue.get_nowait())
            try:
                con = con if con is not None and not con.closed else psycopg.connect(self.url, connect_timeout=5)
                if not self._created:
                    self._create_with(con)
                self._commit(con, batch)
            except psycopg.Error as exc:
                with contextlib.suppress(Exception):
                    con.close()
                con = None
                for item in batch:
                    if item.error is None:
                        item.error = PushLogUnavailable(
                            f"push to {item.source!r} was not logged: the push log's PostgreSQL database failed "
                            f"({exc}); nothing of it was acknowledged, retry it.", push_source=item.source)
            for item in batch:
                item.done.set()

    def _create_with(self, con: Any) -> None:
        con.autocommit = True
        self._create(con)
        con.autocommit = False

    def _commit(self, con: Any, batch: list[_Pending]) -> None:
        now = time.time_ns() // 1000
        rows: list[tuple[str, int, str]] = []
        for item in batch:
            if item.deadline_us is not None and now > item.deadline_us:
                item.error = PushStalledError(
                    f"push to {item.source!r} reached the push log after its key's lease ended; nothing was logged: "
                    "retry it with the same push id.", push_source=item.source)
                continue
            rows.extend((item.source, item.pushed_at, line) for line in item.data.decode().rstrip("\n").split("\n"))
        with con.transaction(), con.cursor() as cur, \
                cur.copy(f"COPY {self.table} (source, pushed_at, line) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    # --- reading -----------------------------------------------------------------------------------------------

    def _tail(self, con: Any, source: str) -> list[tuple[int, str]]:
        return con.execute(f"SELECT id, line FROM {self.table} WHERE source = %s ORDER BY id", (source,)).fetchall()

    def snapshot(self, source: str) -> LogSnapshot:
        """The compacted parts, and the rows not folded into them written to a scratch JSON-lines file."""
        with self.connect() as con:  # autocommit: each statement sees what was committed when it ran
            tail = self._tail(con, source)  # rows first, manifest second (module docstring)
            manifest = PostgresManifest(self, source).load(con)
        lines = [line for row_id, line in tail if row_id > manifest.upto]
        parts = tuple(str(self.folder / source / r) for r in sorted(manifest.parts))
        if not lines:
            return LogSnapshot(parquet=parts)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="fs-push-log-"))
        data = ("\n".join(lines) + "\n").encode()
        path = self._scratch / f"{source}-{hashlib.sha256(data).hexdigest()[:24]}.jsonl"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return LogSnapshot(parquet=parts, jsonl=(str(path),))

    def has_copy(self, source: str, push_id: str, pushed_at: int, rows: int) -> bool:
        from feature_store.offline.push_log.files import _row_of

        with self.connect() as con:
            lines = con.execute(f"SELECT line FROM {self.table} WHERE source = %s AND pushed_at = %s",
                                (source, pushed_at)).fetchall()
            manifest = PostgresManifest(self, source).load(con)
        seen = compaction.has_rows_of(self.folder / source, manifest, push_id, pushed_at, rows)
        for (line,) in lines:
            if (row := _row_of(f"{line}\n".encode(), push_id, pushed_at, rows)) is not None:
                seen.add(row)
        return len(seen) == rows

    def last_push(self, source: str) -> int | None:
        with self.connect() as con:
            row = con.execute(f"SELECT max(pushed_at) FROM {self.table} WHERE source = %s", (source,)).fetchone()
            last = PostgresManifest(self, source).load(con).last_pushed_at()
        return max([v for v in (row[0] if row else None, last) if v is not None], default=None)

    # --- compaction --------------------------------------------------------------------------------------------

    def compact(self, source: str) -> CompactResult:
        """Fold the source's committed rows into parquet parts, then delete them from the table."""
        folder, store = self.folder / source, PostgresManifest(self, source)
        grace_us = int(self.delete_grace_seconds * 1e6)
        with store.locked():
            manifest = compaction.delete_unlisted(folder, store.load(), grace_us)
            with self.connect() as con, con.transaction():
                con.execute(f"LOCK TABLE {self.table} IN EXCLUSIVE MODE")  # waits for inserts in flight
                row = con.execute(f"SELECT max(id) FROM {self.table} WHERE source = %s", (source,)).fetchone()
            upto = max(manifest.upto, int(row[0]) if row and row[0] is not None else 0)
            with self.connect() as con:
                lines = [line for (line,) in con.execute(
                    f"SELECT line FROM {self.table} WHERE source = %s AND id > %s AND id <= %s ORDER BY id",
                    (source, manifest.upto, upto))]
            table = compaction.parse_lines(("\n".join(lines) + "\n").encode()) if lines else compaction.concat([])
            parts = compaction.write_parts(folder, table)
            manifest = compaction.Manifest({**manifest.parts, **parts}, manifest.compacted, upto, manifest.retired)
            store.commit(manifest)
            with self.connect() as con:  # folded in: readers skip them by the manifest, so they can go at once
                removed = con.execute(f"DELETE FROM {self.table} WHERE source = %s AND id <= %s",
                                      (source, upto)).rowcount
            merged = compaction.merge_days(folder, manifest)
            if merged is not None:
                store.commit(merged)
                manifest = merged
        return CompactResult(source, table.num_rows, len(parts), max(0, removed), len(manifest.parts))

    # --- housekeeping ------------------------------------------------------------------------------------------

    def sources(self) -> list[str]:
        with self.connect() as con:
            rows = con.execute(f"SELECT DISTINCT source FROM {self.table} UNION "
                               f"SELECT source FROM {self.table}_manifest").fetchall()
        return sorted(r[0] for r in rows)

    def remove(self, sources: Iterable[str]) -> int:
        removed = 0
        with self.connect() as con:
            for source in sources:
                removed += max(0, con.execute(f"DELETE FROM {self.table} WHERE source = %s", (source,)).rowcount)
                con.execute(f"DELETE FROM {self.table}_manifest WHERE source = %s", (source,))
                removed += len(list((self.folder / source).glob(compaction.PART_GLOB)))
                shutil.rmtree(self.folder / source, ignore_errors=True)
        return removed

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
