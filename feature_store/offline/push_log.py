"""The durable log of pushed events, which training sets read together with a push source's batch data.

Each writing process appends to a newline-delimited JSON file of its own per push source, and
flushes it to disk before a push is acknowledged, so several server workers push without locks and
an acknowledged event is never lost. Every event carries the time its push arrived
(``__fs_pushed_at``): that is when it became available, for training sets as for serving.

Values are written as text (timestamps as ISO-8601 in UTC, floats in their shortest exact form)
and cast back to the batch source's column types when read, so a pushed value reads back exactly.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from feature_store.errors import PushStalledError
from feature_store.query import PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT

# A push takes its availability time immediately before its lines are written; materialization stays
# this far behind the clock, so it never passes an event that is about to land in the log.
SETTLE_SECONDS = 5.0
BUCKET_SECONDS = 60.0


class PushLog:
    """The push log files under one directory: ``<dir>/<push source>/<host>-<pid>-<start>.jsonl``."""

    def __init__(self, directory: Path, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self.settle_seconds = SETTLE_SECONDS  # tests that push and materialize in one thread may set 0
        # Online values keep what was pushed per bucket of this many seconds of arrival time, so that
        # materialization (which ends on a bucket boundary) knows which pushes it has not seen.
        self.bucket_seconds = BUCKET_SECONDS
        self._lock = threading.Lock()
        self._files: dict[tuple[int, str], IO[bytes]] = {}  # (pid, source): after a fork, a new file
        self._last = 0
        self._sync_lock = threading.Lock()
        self._written: dict[str, int] = {}  # appends per source, and how many of them are on disk
        self._synced: dict[str, int] = {}

    @property
    def bucket_us(self) -> int:
        return max(1, int(self.bucket_seconds * 1_000_000))

    def materialize_end(self, end_us: int, now_us: int) -> int:
        """The end a materialization of a push source's view uses: settled, on a bucket boundary."""
        end_us = min(end_us, now_us - int(self.settle_seconds * 1_000_000))
        return end_us - end_us % self.bucket_us

    def append(self, source: str, lines: Callable[[int], bytes], pushed_at: int | None = None,
               deadline_us: int | None = None) -> int:
        """Write ``lines(pushed_at)`` and make them durable; returns pushed_at (epoch us, increasing).

        Concurrent pushes share their disk flushes (group commit): a writer whose lines an earlier
        writer's ``fdatasync`` already covered returns without one of its own.

        A push with an idempotency key gives the ``pushed_at`` its key reserved (online/push/idempotency.py) and
        the time by which its lines must be written: later, a retry may already have taken over the key.
        """
        with self._lock:
            handle = self._handle(source)
            if deadline_us is not None and time.time_ns() // 1000 > deadline_us:
                raise PushStalledError(
                    f"push to {source!r} reached the push log after its key's lease ended; nothing was logged: "
                    "retry it with the same push id.", push_source=source)
            if pushed_at is None:
                pushed_at = self._last = max(self._last + 1, time.time_ns() // 1000)
            handle.write(lines(pushed_at))
            handle.flush()
            written = self._written[source] = self._written.get(source, 0) + 1
        if self.fsync:
            with self._sync_lock:
                if self._synced.get(source, 0) < written:
                    with self._lock:
                        covered = self._written[source]
                    os.fdatasync(handle.fileno())
                    self._synced[source] = covered
        return pushed_at

    def _handle(self, source: str) -> IO[bytes]:
        key = (os.getpid(), source)
        handle = self._files.get(key)
        if handle is None:
            folder = self.directory / source
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns() // 1000}.jsonl"
            handle = open(folder / name, "ab")  # noqa: SIM115 - kept open for the process's lifetime
            self._files[key] = handle
        return handle

    def files(self, source: str) -> list[str]:
        return sorted(glob.glob(str(self.directory / glob.escape(source) / "*.jsonl")))

    def has_copy(self, source: str, push_id: str, pushed_at: int, rows: int) -> bool:
        """Whether a complete copy of the push with this id, logged at ``pushed_at``, is in the log: a whole line
        for every row. Only files written to since ``pushed_at`` are read. Readers count a copy only when it is
        complete too (offline/duckdb/push_log.py), so this answers whether training sets count the push."""
        needle = json.dumps({PUSH_ID: push_id}, separators=(",", ":"))[1:-1].encode()
        since = pushed_at / 1e6 - 2.0  # mtime resolution and clock steps
        seen: set[int] = set()
        for name in self.files(source):
            with contextlib.suppress(FileNotFoundError):
                if os.path.getmtime(name) < since:
                    continue
                with open(name, "rb") as handle:
                    for line in handle:
                        if needle in line and (row := _row_of(line, push_id, pushed_at, rows)) is not None:
                            seen.add(row)
        return len(seen) == rows

    def remove(self, sources: Iterable[str]) -> int:
        """Delete the log files of these push sources (teardown); return how many. Each file goes whole: a run
        killed midway leaves whole files, which a rerun deletes."""
        self.close()
        removed = 0
        for source in sources:
            for name in self.files(source):
                os.unlink(name)
                removed += 1
            with contextlib.suppress(OSError):  # not empty: another process just wrote to it
                (self.directory / source).rmdir()
        return removed

    def sources(self) -> list[str]:
        """The push sources that have a folder of log files."""
        if not self.directory.is_dir():
            return []
        return sorted(entry.name for entry in self.directory.iterdir() if entry.is_dir())

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()


def _row_of(line: bytes, push_id: str, pushed_at: int, rows: int) -> int | None:
    """The row index of a whole log line of this copy of the push, else None."""
    if not line.endswith(b"\n"):
        return None
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if row.get(PUSH_ID) != push_id or row.get(PUSHED_AT) != pushed_at or row.get(PUSH_ROWS) != rows:
        return None
    index = row.get(PUSH_ROW)
    return index if isinstance(index, int) else None
