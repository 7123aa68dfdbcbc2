"""What every push log backend shares: the protocol engines and the push path use, the snapshot an engine reads, and
the availability rules (settle time, buckets) that tie materialization to the log.

A push log holds each pushed row as text (timestamps ISO-8601 in UTC, floats in their shortest exact form), with the
time its push arrived (``__fs_pushed_at``) and, for a push with an id, the id, the row's index and the row count.
Engines cast the text back to the batch source's column types, so a pushed value reads back exactly.

Logged rows live in two forms: the *tail*, appended by pushes (JSON-lines files, or PostgreSQL rows), and *compacted*
parquet files partitioned by day, which compaction folds the tail into. Both hold the same text columns, and a
reader unions them and counts each (push id, row) once (offline/duckdb/push_log.py), so a row that is in both for a
moment, as while compaction commits, still counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

# A push takes its availability time immediately before its lines are written; materialization stays
# this far behind the clock, so it never passes an event that is about to land in the log.
SETTLE_SECONDS = 5.0
BUCKET_SECONDS = 60.0


@dataclass(frozen=True)
class LogSnapshot:
    """A push source's logged rows as an engine reads them: parquet files (compacted, and a backend's tail written
    out) and JSON-lines files, each holding the text columns described in this module. A file listed here stays
    readable for ``delete_grace_seconds`` after a compaction replaced it."""

    parquet: tuple[str, ...] = ()
    jsonl: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.parquet or self.jsonl)


@dataclass(frozen=True)
class CompactResult:
    source: str
    rows: int  # rows folded into parquet by this run
    parts_written: int
    tail_removed: int  # tail files (or row batches) removed, that earlier runs had compacted
    parts: int  # compacted parquet files of the source after the run


class PushLog(Protocol):
    """The durable log of pushed rows, which training sets read together with a push source's batch data."""

    settle_seconds: float
    bucket_seconds: float
    fsync: bool

    @property
    def bucket_us(self) -> int: ...

    def materialize_end(self, end_us: int, now_us: int) -> int: ...

    def append(self, source: str, lines: Callable[[int], bytes], pushed_at: int | None = None,
               deadline_us: int | None = None) -> int:
        """Write ``lines(pushed_at)`` (JSON lines) durably and return pushed_at (epoch us, increasing)."""
        ...

    def has_copy(self, source: str, push_id: str, pushed_at: int, rows: int) -> bool:
        """Whether the log holds a complete copy (every row) of the push with this id logged at ``pushed_at``."""
        ...

    def snapshot(self, source: str) -> LogSnapshot: ...

    def compact(self, source: str) -> CompactResult: ...

    def last_push(self, source: str) -> int | None:
        """When a push to the source was last logged (epoch us), or None."""
        ...

    def sources(self) -> list[str]: ...

    def remove(self, sources: Iterable[str]) -> int: ...

    def close(self) -> None: ...


class Availability:
    """The settle time and bucket size every backend applies the same way."""

    def __init__(self) -> None:
        self.settle_seconds = SETTLE_SECONDS  # tests that push and materialize in one thread may set 0
        # Online values keep what was pushed per bucket of this many seconds of arrival time, so that
        # materialization (which ends on a bucket boundary) knows which pushes it has not seen.
        self.bucket_seconds = BUCKET_SECONDS

    @property
    def bucket_us(self) -> int:
        return max(1, int(self.bucket_seconds * 1_000_000))

    def materialize_end(self, end_us: int, now_us: int) -> int:
        """The end a materialization of a push source's view uses: settled, on a bucket boundary."""
        end_us = min(end_us, now_us - int(self.settle_seconds * 1_000_000))
        return end_us - end_us % self.bucket_us
