"""The served-value log: what online reads answered (entity keys, request time, each feature's value and status),
as parquet files partitioned by day, readable back as a feature table.

A read only appends a reference to its already-built response to a deque (and draws the sample): no copy, no
conversion, no lock, no I/O. A writer thread turns what has queued into Arrow columns and writes one file per day
every ``flush_seconds``. The queue is bounded: when the writer falls behind, reads are dropped from the log (and
counted), never delayed. Files are written under a temporary name and renamed, so a killed process leaves whole
files only (it loses at most what was queued).

Layout: ``<dir>/date=YYYY-MM-DD/<host>-<pid>-<seq>.parquet``; columns ``request_time`` (UTC), the entity keys,
``<view>__<feature>`` and ``<view>__<feature>__status`` for each feature read, and internal columns (``_fs_``:
the read's number, each view's online watermark then) that skew uses.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from itertools import chain, count, repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_store.definitions import FeatureService

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from feature_store.config import MonitoringConfig
    from feature_store.online.read.reader import OnlineResponse
    from feature_store.online.service import State

REQUEST_TIME = "request_time"
REQUEST_ID = "_fs_request"
WATERMARK_PREFIX = "_fs_watermark__"  # + view: the view's online watermark (epoch us) when the read was served
STATUS_SUFFIX = "__status"
INTERNAL_PREFIX = "_fs_"
CONVERT_SECONDS = 0.2
CONVERT_CHUNK = 64  # reads converted into one Arrow table: each C call (pa.array) holds the GIL briefly
SWITCH_SECONDS = 0.00002

Item = tuple[float, Any, bool, "OnlineResponse", "datetime | None", "State | None"]


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
        self._queue: deque[Item] = deque()
        self._pid = -1  # the writer thread belongs to this process (a forked worker starts its own)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._seq = count()
        self._ids = count()
        self._pending: dict[date, list[pa.Table]] = {}  # converted, not yet written
        self.writer_seconds = 0.0  # CPU time of the writer thread (benchmarks/monitoring.py)

    @classmethod
    def from_config(cls, config: MonitoringConfig, directory: Path) -> ServedLog:
        return cls(directory, config.sample_rate, config.queue_size, config.flush_seconds)

    # --- the read path: keep it this small -------------------------------------------------------

    def record(self, features: Any, full_feature_names: bool, response: OnlineResponse, now: datetime | None,
               state: State | None) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
            return
        self._queue.append((time.time(), features, full_feature_names, response, now, state))
        if self._pid != os.getpid():
            self._start()

    # --- the writer ------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._write_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._pending = {}  # a forked child does not write its parent's pending rows
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="served-log-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Queued responses are Python containers, which the garbage collector traverses again and again while
        # they live (p99 of reads rose 30-50 % with seconds of them queued): they become Arrow columns, which it
        # does not see, every CONVERT_SECONDS; files are written every flush_seconds.
        interval = min(CONVERT_SECONDS, self.flush_seconds)
        last_write = time.monotonic()
        while not self._stop.wait(interval):
            started = time.thread_time()
            if time.monotonic() - last_write >= self.flush_seconds:
                self.flush()
                last_write = time.monotonic()
            else:
                self.convert()
            self.writer_seconds += time.thread_time() - started

    def convert(self) -> int:
        """Turn what is queued into Arrow tables (kept until the next write); returns the rows.

        Conversion holds the GIL; a read that wants it back (after a store round trip) would wait for the
        interpreter's switch interval (5 ms), which put a read in every hundred 2 ms behind. While converting,
        the interval is lowered so that a waiting read gets the GIL within SWITCH_SECONDS."""

        rows = 0
        with _short_switches():
            while self._queue:
                with self._write_lock:
                    items: list[Item] = []
                    while self._queue and len(items) < CONVERT_CHUNK:
                        items.append(self._queue.popleft())
                    for day, tables in _tables(items, self._ids).items():
                        self._pending.setdefault(day, []).extend(tables)
                        rows += sum(t.num_rows for t in tables)
        return rows

    def flush(self) -> int:
        """Write what is queued or converted now, one file per day; returns the rows written."""
        import pyarrow as pa

        self.convert()
        with self._write_lock:
            pending, self._pending = self._pending, {}
            written = 0
            for day, tables in pending.items():
                written += self._write(day, pa.concat_tables(tables, promote_options="permissive"))
            self.logged_rows += written
            if written and self.on_write is not None:
                self.on_write(written)
            return written

    def _write(self, day: date, table: pa.Table) -> int:
        import pyarrow.parquet as pq

        folder = self.directory / f"date={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{int(time.time() * 1e6)}-{next(self._seq)}.parquet"
        temporary = folder / f".{name}.tmp"
        pq.write_table(table, temporary)
        os.replace(temporary, folder / name)  # readers see a whole file or none
        return int(table.num_rows)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            self._thread.join(timeout=10)
        self.flush()

    # --- reading ---------------------------------------------------------------------------------

    def files(self, start: datetime, end: datetime) -> Iterator[Path]:
        """The files of the days from ``start`` to ``end`` (their rows may still lie outside the range)."""
        day = start.astimezone(UTC).date()
        while day <= end.astimezone(UTC).date():
            folder = self.directory / f"date={day.isoformat()}"
            if folder.is_dir():
                yield from sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))
            day += timedelta(days=1)

    def read(self, start: datetime, end: datetime, internal: bool = False) -> pd.DataFrame:
        """The reads served in [start, end), one row per entity row, in request-time order."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = [pq.read_table(path) for path in self.files(start, end)]
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


_switch_lock = threading.Lock()
_switch_state = {"depth": 0, "saved": 0.0}  # converters running (of every log in the process), the interval before


@contextmanager
def _short_switches() -> Iterator[None]:
    """The interpreter's switch interval at most SWITCH_SECONDS while any converter runs, then as it was (the
    interval is the process's: nested and concurrent converters restore it once, when the last ends)."""
    with _switch_lock:
        if _switch_state["depth"] == 0:
            _switch_state["saved"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_state["saved"], SWITCH_SECONDS))
        _switch_state["depth"] += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_state["depth"] -= 1
            if _switch_state["depth"] == 0:
                sys.setswitchinterval(_switch_state["saved"])


def feature_pairs(features: Any) -> list[tuple[str, str]]:
    """(view, feature) of each requested feature, as the read resolved them (references were checked)."""
    if isinstance(features, FeatureService):
        return [(p.view, f) for p in features.projections for f in p.features]
    refs = [features] if isinstance(features, str) else list(features)
    return [(ref.split(":", 1)[0], ref.split(":", 1)[1]) for ref in refs]


def _tables(items: list[Item], ids: Iterator[int]) -> dict[date, list[pa.Table]]:
    """The queued reads as Arrow tables by day of their request time: one table per request shape (the same
    features and entity columns), built a column at a time (chain runs in C: ~4 us a read of 10 features)."""
    import pyarrow as pa

    groups: dict[tuple[Any, ...], list[Item]] = {}
    for item in items:
        arrived, features, full, response, now, _ = item
        request_time = now.astimezone(UTC) if now is not None else datetime.fromtimestamp(arrived, UTC)
        shape = (features.name if isinstance(features, FeatureService) else
                 (features,) if isinstance(features, str) else tuple(features), full, tuple(response.entity_columns))
        groups.setdefault((request_time.date(), shape), []).append(
            (request_time.timestamp(), features, full, response, request_time, item[5]))
    out: dict[date, list[pa.Table]] = {}
    for (day, _), group in groups.items():
        columns = _columns(group, ids)
        out.setdefault(day, []).append(pa.table({name: _array(name, values) for name, values in columns.items()}))
    return out


def _columns(group: list[Item], ids: Iterator[int]) -> dict[str, list[Any]]:
    _, features, full, first, _, _ = group[0]
    responses = [item[3] for item in group]
    sizes = [len(next(iter(r.entity_columns.values()), [])) for r in responses]
    columns: dict[str, list[Any]] = {
        REQUEST_TIME: list(chain.from_iterable(repeat(item[4], n) for item, n in zip(group, sizes, strict=True))),
        REQUEST_ID: list(chain.from_iterable(repeat(next(ids), n) for n in sizes)),
    }
    # map/itemgetter/chain: the loops over reads run in C, not in Python frames
    entities, values, statuses = ([getattr(r, part) for r in responses]
                                  for part in ("entity_columns", "values", "statuses"))
    for key in first.entity_columns:
        columns[key] = list(chain.from_iterable(map(itemgetter(key), entities)))
    views: set[str] = set()
    for view, feature in feature_pairs(features):
        output = f"{view}__{feature}" if full else feature
        if output not in first.values:
            continue
        columns[f"{view}__{feature}"] = list(chain.from_iterable(map(itemgetter(output), values)))
        columns[f"{view}__{feature}{STATUS_SUFFIX}"] = list(chain.from_iterable(map(itemgetter(output), statuses)))
        views.add(view)
    for view in sorted(views):
        marks = [_watermark(item[5], view) for item in group]
        columns[f"{WATERMARK_PREFIX}{view}"] = list(chain.from_iterable(repeat(m, n)
                                                                        for m, n in zip(marks, sizes, strict=True)))
    return columns


def _watermark(state: State | None, view: str) -> int | None:
    generation = state.live.get(view) if state is not None else None
    return generation.watermark if generation is not None else None


def _array(name: str, values: list[Any]) -> pa.Array:
    import pyarrow as pa

    if name == REQUEST_TIME:
        return pa.array(values, pa.timestamp("us", tz="UTC"))
    if name.startswith(WATERMARK_PREFIX) or name == REQUEST_ID:
        return pa.array(values, pa.int64())
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds in one column (a key sent as int and as text)
        return pa.array([None if v is None else str(v) for v in values], pa.string())
