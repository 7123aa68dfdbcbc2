"""The served-value log: what online reads answered (entity keys, request time, each feature's value and status),
as files partitioned by day, readable back as a feature table.

A read encodes what it answered (the feature server's already-encoded response body as it is; an SDK response
through orjson, in C: served_spool.py) and appends it to a deque with its cached shape and watermarks (after drawing
the sample): no conversion to columns, no lock, no I/O, not even a line to copy. A writer thread joins what has
queued into JSON lines and appends them to a zstd-compressed spool file per day every 0.2 s and renames the file
into view every ``flush_seconds``. Turning lines into typed columns costs Python work, which on a serving host
competed with reads for the GIL (p99 +30-240 %, docs/monitoring.md): it is done where the log is read or compacted
(``served_features``, ``feature-store monitor``, ``feature-store compact``), which replace each spool file by a
parquet file of the same name. The queue is bounded: when the writer falls behind, reads are dropped from the log
(and counted), never delayed. A file is hidden (``.name.part``) until renamed, so readers see whole files only; a
killed process loses what it had not renamed yet, at most ``flush_seconds`` of reads.

Layout: ``<dir>/date=YYYY-MM-DD/<host>-<pid>-<us>-<seq>.jsonl.zst`` (spool) or ``.parquet``; the columns read
back are ``request_time`` (UTC), the entity keys, ``<view>__<feature>`` and ``<view>__<feature>__status`` for each
feature read, and internal columns (``_fs_``: the read's number, each view's online watermark then) that skew uses.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_store.monitoring.served_spool import (
    COLUMNS,
    FEAST_BODY,
    REQUEST_ID,
    REQUEST_TIME,
    SPOOL_SUFFIX,
    STATUS_SUFFIX,
    WATERMARK_PREFIX,
    LineEncoder,
    feature_pairs,
    spool_table,
)

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from feature_store.config import MonitoringConfig
    from feature_store.online.read.reader import OnlineResponse
    from feature_store.online.service import State

__all__ = ["REQUEST_ID", "REQUEST_TIME", "STATUS_SUFFIX", "WATERMARK_PREFIX", "ServedLog", "feature_pairs"]

INTERNAL_PREFIX = "_fs_"
CONVERT_SECONDS = 0.2  # the writer appends what is queued this often (files are renamed every flush_seconds)
PART_SUFFIX = ".part"

class ServedLog:
    """A project's served-value log: ``record`` on the read path, a writer thread, ``read`` for time ranges."""

    def __init__(self, directory: Path, sample_rate: float = 1.0, queue_size: int = 10_000,
                 flush_seconds: float = 5.0) -> None:
        self.directory = directory
        self.sample_rate = sample_rate
        self.queue_size = queue_size
        self.flush_seconds = flush_seconds
        self.dropped = 0  # reads not logged because the queue was full
        self.logged_rows = 0
        self.on_drop: Callable[[], None] | None = None  # the server counts drops in /metrics
        self.on_write: Callable[[int], None] | None = None
        # (kind, request us, shape, watermarks, body, entity rows): a line's parts, joined by the writer
        self._queue: deque[tuple[bytes, int, bytes, bytes, bytes, int]] = deque()
        self._encoder = LineEncoder()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._seq = count()
        self._parts: dict[int, Path] = {}  # per day, the file being appended to (renamed at each flush)
        self._part_rows = 0
        self.writer_seconds = 0.0  # CPU time of the writer thread (benchmarks/monitoring.py)
        _LOGS.add(self)

    @classmethod
    def from_config(cls, config: MonitoringConfig, directory: Path) -> ServedLog:
        return cls(directory, config.sample_rate, config.queue_size, config.flush_seconds)

    # --- the read path: keep it this small -------------------------------------------------------

    def record(self, features: Any, full_feature_names: bool, response: OnlineResponse,
               state: State | None) -> None:
        """An SDK read: its columns, encoded now by orjson (a microsecond for one entity, in C). Its request
        time is the response's own (``response.request_us``: the ``now`` its values are for)."""
        self._queue_line(COLUMNS, features, full_feature_names, response, response, state)

    def record_body(self, features: Any, full_feature_names: bool, response: OnlineResponse, body: bytes,
                    state: State | None) -> None:
        """A feature server's read: the body it encoded for its client (Feast's format), logged as it is."""
        self._queue_line(FEAST_BODY, features, full_feature_names, response, body, state)

    def _queue_line(self, kind: bytes, features: Any, full: bool, response: OnlineResponse, payload: Any,
                    state: State | None) -> None:
        # Encoded here, on the read path, rather than by the writer thread: a thread converting in bursts took
        # the GIL from reads (p99 +30-240 %, docs/monitoring.md), and queued Python containers cost the garbage
        # collector; a read queues bytes, and the writer thread only joins, compresses and appends them.
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        columns = response.entity_columns
        shape, marks, body = self._encoder.parts(kind, features, full, len(columns), payload, state)
        if self._thread is None:  # the first read of this process (a forked child's too: _forked)
            self._start()
        self._queue.append((kind, response.request_us, shape, marks, body,
                            len(next(iter(columns.values()))) if columns else 0))

    # --- the writer ------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._write_lock:
            if self._thread is not None:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="served-log-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = min(CONVERT_SECONDS, self.flush_seconds)
        last_write = time.monotonic()
        while not self._stop.wait(interval):
            started = time.thread_time()
            if time.monotonic() - last_write >= self.flush_seconds:
                self.flush()
                last_write = time.monotonic()
            else:
                self.append()
            self.writer_seconds += time.thread_time() - started

    def append(self) -> int:
        """Append what is queued to each day's open file, a zstd frame per day; returns the entity rows."""
        import pyarrow as pa

        with self._write_lock:
            days: dict[int, list[bytes]] = {}
            rows = 0
            for _ in range(len(self._queue)):
                kind, request_us, shape, marks, body, n = self._queue.popleft()
                # a line's pieces, joined once per frame: each body is copied once, not per line and again
                days.setdefault(request_us // _DAY_US, []).extend(
                    (b'["', kind, b'",%d,' % request_us, shape, b",", marks, b",", body, b"]\n"))
                rows += n
            for day, pieces in days.items():
                part = self._parts.get(day)
                if part is None:
                    part = self._parts[day] = self._part_path(day)
                # One frame per append: smaller frames (joined a bounded piece at a time) measured worse at p99
                frame = pa.compress(b"".join(pieces), codec="zstd", asbytes=True)  # zstd frames concatenate
                with part.open("ab") as out:
                    out.write(frame)
            self._part_rows += rows
            return rows

    def flush(self) -> int:
        """Write what is queued now and close the open files (renamed: readers see whole files); returns the
        entity rows written since the last flush."""
        self.append()
        with self._write_lock:
            parts, self._parts = self._parts, {}
            written, self._part_rows = self._part_rows, 0
            for part in parts.values():
                os.replace(part, part.with_name(part.name[1:-len(PART_SUFFIX)]))
            self.logged_rows += written
            if written and self.on_write is not None:
                self.on_write(written)
            return written

    def _part_path(self, day: int) -> Path:
        folder = self.directory / f"date={(_EPOCH + timedelta(days=day)).date().isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1e6)}-{next(self._seq)}{SPOOL_SUFFIX}"
        return folder / f".{name}{PART_SUFFIX}"  # hidden until whole

    def _forked(self) -> None:
        """In a forked child: the parent's writer thread did not come along. The child neither writes its
        parent's queued reads (the parent does) nor appends to its files; its first read starts its own writer.
        (A fork hook, not a pid check per read: os.getpid() is a system call on the read path.)"""
        self._write_lock = threading.Lock()  # the parent's thread may have held it at the fork
        self._queue.clear()
        self._parts, self._part_rows = {}, 0
        self._thread = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():  # a forked child's is None (_forked)
            self._thread.join(timeout=10)
        self.flush()

    # --- reading ---------------------------------------------------------------------------------

    def files(self, start: datetime, end: datetime) -> Iterator[Path]:
        """The files of the days from ``start`` to ``end`` (their rows may still lie outside the range): parquet
        files, and spool files not yet compacted into one."""
        day = start.astimezone(UTC).date()
        while day <= end.astimezone(UTC).date():
            folder = self.directory / f"date={day.isoformat()}"
            if folder.is_dir():
                names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
                for name in sorted(names):
                    if name.endswith(".parquet") or (name.endswith(SPOOL_SUFFIX) and
                                                     _compacted_name(name) not in names):
                        yield folder / name
            day += timedelta(days=1)

    def read(self, start: datetime, end: datetime, internal: bool = False) -> pd.DataFrame:
        """The reads served in [start, end), one row per entity row, in request-time order. Spool files read are
        compacted into parquet on the way (so the next read is quicker)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc

        tables = [self._table(path) for path in self.files(start, end)]
        if not tables:
            return pd.DataFrame({REQUEST_TIME: pd.Series([], dtype="datetime64[us, UTC]")})
        table = pa.concat_tables(tables, promote_options="permissive")  # reads of other features: other columns
        times = table.column(REQUEST_TIME)
        table = table.filter(pc.and_(pc.greater_equal(times, pa.scalar(start, times.type)),
                                     pc.less(times, pa.scalar(end, times.type))))
        table = table.sort_by([(REQUEST_TIME, "ascending"), (REQUEST_ID, "ascending")])
        if not internal:
            table = table.drop_columns([c for c in table.column_names if c.startswith(INTERNAL_PREFIX)])
        return table.to_pandas()

    def compact(self, start: datetime | None = None, end: datetime | None = None) -> int:
        """Replace the spool files of [start, end] (default: every day) by parquet files; returns how many."""
        days = sorted(p.name[5:] for p in self.directory.glob("date=*")) if self.directory.is_dir() else []
        if not days:
            return 0
        first = start or datetime.fromisoformat(days[0]).replace(tzinfo=UTC)
        last = end or datetime.fromisoformat(days[-1]).replace(tzinfo=UTC)
        spools = [p for p in self.files(first, last) if p.name.endswith(SPOOL_SUFFIX)]
        for path in spools:
            self._table(path)
        return len(spools)

    @staticmethod
    def _table(path: Path) -> pa.Table:
        """A file's rows; a spool file is compacted into its parquet twin first (whole, by rename), then deleted.
        Two readers may compact one spool at once: both write the same rows, and the later rename wins."""
        import pyarrow.parquet as pq

        if path.name.endswith(".parquet"):
            return pq.read_table(path)
        twin = path.with_name(_compacted_name(path.name))
        try:
            table = spool_table(path)
        except FileNotFoundError:  # another reader compacted it meanwhile
            return pq.read_table(twin)
        temporary = path.with_name(f".{twin.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, twin)
        path.unlink(missing_ok=True)
        return table

    def remove(self) -> int:
        """Delete every file of the log (teardown); return how many."""
        removed = 0
        if not self.directory.is_dir():
            return 0
        for folder in sorted(self.directory.glob("date=*")):
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
                removed += 1
            with contextlib.suppress(OSError):  # not empty: a server still running just wrote to it
                folder.rmdir()
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        return removed


_LOGS: weakref.WeakSet[ServedLog] = weakref.WeakSet()  # every log of this process, for the fork hook


def _after_fork_in_child() -> None:
    for log in list(_LOGS):
        log._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400_000_000


def _compacted_name(spool: str) -> str:
    return spool[:-len(SPOOL_SUFFIX)] + ".parquet"
