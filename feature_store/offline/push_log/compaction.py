"""Compacted push log: parquet files partitioned by day, and the manifest that says which of them count.

A compaction writes its parquet files first (each under a temporary name, then renamed), and only then commits a new
manifest naming them together with the tail it folded in (a tail file's name, or a PostgreSQL row id). Readers take
the parts the manifest names and skip the tail it names, so a compaction killed at any point leaves either the old
manifest (its parts are orphans, deleted by the next run) or the new one: nothing is lost or counted twice.

Files a manifest stops naming (tail files folded in, parts merged into a bigger one) are deleted only
``delete_grace_seconds`` later, so a reader that listed them just before stays able to read them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from feature_store.query import PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT

if TYPE_CHECKING:  # pyarrow is imported when compaction runs: pushing to the file log needs none of it
    import pyarrow as pa

META_NAMES = (PUSHED_AT, PUSH_ID, PUSH_ROW, PUSH_ROWS)
MAX_PARTS_PER_DAY = 8  # more parts than this in one day are merged into one
PART_GLOB = "day=*/*.parquet"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Manifest:
    """Which parquet parts count, and which tail is folded into them."""

    parts: dict[str, dict[str, int]] = field(default_factory=dict)  # relative path: {"rows", "max_pushed_at"}
    # tail file name: when it was folded in (us), or minus when it was deleted (files.py: _retire_tail)
    compacted: dict[str, int] = field(default_factory=dict)
    upto: int = 0  # PostgreSQL log: rows with an id up to this are folded in
    retired: dict[str, int] = field(default_factory=dict)  # parts merged away: when (us)

    def to_json(self) -> str:
        return json.dumps({"parts": self.parts, "compacted": self.compacted, "upto": self.upto,
                           "retired": self.retired}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(dict(data.get("parts", {})), dict(data.get("compacted", {})), int(data.get("upto", 0)),
                   dict(data.get("retired", {})))

    def last_pushed_at(self) -> int | None:
        return max((p["max_pushed_at"] for p in self.parts.values()), default=None)


class ManifestStore(Protocol):
    """Where a source's manifest lives (a file beside the parts, or a PostgreSQL row) and its writers' lock."""

    def load(self) -> Manifest: ...

    def commit(self, manifest: Manifest) -> None: ...

    def locked(self) -> contextlib.AbstractContextManager[None]: ...


class FileManifest:
    """A manifest as a JSON file, replaced atomically; compactions of one source take turns by ``flock``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self) -> Manifest:
        try:
            return Manifest.from_json((self.folder / "manifest.json").read_text())
        except FileNotFoundError:
            return Manifest()

    def commit(self, manifest: Manifest) -> None:
        write_atomic(self.folder / "manifest.json", manifest.to_json().encode())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "ab") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, also by a killed process
            yield


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name, flush it to disk, then rename it into place (and flush the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def meta() -> dict[str, pa.DataType]:
    """The push metadata columns' types (every other column is text)."""
    import pyarrow as pa

    return {PUSHED_AT: pa.int64(), PUSH_ID: pa.string(), PUSH_ROW: pa.int64(), PUSH_ROWS: pa.int64()}


def parse_lines(data: bytes) -> pa.Table:
    """Logged JSON lines as a table: every value column as text, the push metadata typed (``meta()``). A line that is
    not a JSON object is skipped, as engines skip it when they read the tail (a line torn by a crash)."""
    import pyarrow as pa
    import pyarrow.json as pa_json

    if not data.strip():
        return _typed(pa.table({}))
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
        # A first pass finds the columns; the second reads every value column as text, as logged (pyarrow would
        # otherwise infer timestamps from ISO strings and lose their text)
        options = pa_json.ParseOptions(explicit_schema=pa.schema(meta()), unexpected_field_behavior="infer")
        names = pa_json.read_json(io.BytesIO(data), parse_options=options).column_names
        schema = pa.schema({**{n: pa.string() for n in names}, **meta()})
        table = pa_json.read_json(io.BytesIO(data), parse_options=pa_json.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="error"))
        return _typed(table)
    return _typed(_parse_slowly(data))


def _parse_slowly(data: bytes) -> pa.Table:
    """Line by line, for a log holding a torn line (rare: the fast reader rejects the whole block)."""
    import pyarrow as pa

    types = meta()
    rows: list[dict[str, Any]] = []
    for line in data.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and all(isinstance(row.get(m), int | None) for m in (PUSHED_AT, PUSH_ROW, PUSH_ROWS)):
            rows.append({k: v if k in types or v is None or isinstance(v, str) else json.dumps(v)
                         for k, v in row.items()})
    names = list(dict.fromkeys(k for r in rows for k in r))
    return pa.table({n: pa.array([r.get(n) for r in rows], types.get(n, pa.string())) for n in names})


def _typed(table: pa.Table) -> pa.Table:
    """Every metadata column there and typed, value columns as text, sorted by name; lines without a push time
    (not written by a push) dropped, as readers of the tail drop them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = meta()
    for name, kind in types.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    table = table.filter(pc.is_valid(table[PUSHED_AT]))
    return table.select(sorted(table.column_names)).cast(pa.schema(
        [pa.field(n, types.get(n, pa.string())) for n in sorted(table.column_names)]))


def concat(tables: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    return pa.concat_tables(tables, promote_options="permissive") if tables else _typed(pa.table({}))


def write_parts(folder: Path, table: pa.Table) -> dict[str, dict[str, int]]:
    """Write the rows as one parquet file per day of arrival; return the parts (relative path: stats)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if table.num_rows == 0:
        return {}
    at = pc.fill_null(table[PUSHED_AT], 0)
    days = pc.strftime(pc.cast(at, pa.timestamp("us", tz="UTC")), format="%Y-%m-%d")
    table = table.append_column("__day", days)
    parts: dict[str, dict[str, int]] = {}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for day in sorted(pc.unique(days).to_pylist()):
        rows = table.filter(pc.equal(table["__day"], day)).drop_columns(["__day"])
        relative = f"day={day}/{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, compression="zstd")
        write_atomic(folder / relative, buffer.getvalue())
        parts[relative] = {"rows": rows.num_rows, "max_pushed_at": int(pc.max(rows[PUSHED_AT]).as_py() or 0)}
    return parts


def read_parts(folder: Path, relatives: list[str]) -> pa.Table:
    import pyarrow.parquet as pq

    return concat([pq.read_table(folder / r) for r in relatives])


def merge_days(folder: Path, manifest: Manifest) -> Manifest | None:
    """A manifest in which every day holding more than MAX_PARTS_PER_DAY parts has them merged into one; None when
    no day needs it."""
    by_day: dict[str, list[str]] = {}
    for relative in manifest.parts:
        by_day.setdefault(relative.split("/", 1)[0], []).append(relative)
    crowded = [parts for parts in by_day.values() if len(parts) > MAX_PARTS_PER_DAY]
    if not crowded:
        return None
    merged = Manifest(dict(manifest.parts), dict(manifest.compacted), manifest.upto, dict(manifest.retired))
    for parts in crowded:
        written = write_parts(folder, read_parts(folder, sorted(parts)))
        for relative in parts:
            del merged.parts[relative]
            merged.retired[relative] = now_us()
        merged.parts.update(written)
    return merged


def delete_unlisted(folder: Path, manifest: Manifest, grace_us: int) -> Manifest:
    """Delete parts no manifest names (left by a killed run: only a compaction holding the lock writes parts) and
    retired parts older than the grace; return the manifest without the retired parts deleted."""
    now = now_us()
    kept = {r: t for r, t in manifest.retired.items() if now - t < grace_us}
    for path in folder.glob(PART_GLOB):
        relative = path.relative_to(folder).as_posix()
        if relative not in manifest.parts and relative not in kept:
            path.unlink(missing_ok=True)
    for tmp in folder.glob("day=*/.*.tmp"):
        tmp.unlink(missing_ok=True)
    return Manifest(manifest.parts, manifest.compacted, manifest.upto, kept)


def has_rows_of(folder: Path, manifest: Manifest, push_id: str, pushed_at: int, count: int) -> set[int]:
    """The row indexes of the push with this id, time and row count that the compacted parts of its day hold."""
    import pyarrow.parquet as pq

    day = datetime.fromtimestamp(pushed_at / 1e6, UTC).strftime("%Y-%m-%d")
    seen: set[int] = set()
    for relative in manifest.parts:
        if relative.startswith(f"day={day}/"):
            with contextlib.suppress(FileNotFoundError):
                rows = pq.read_table(folder / relative, columns=[PUSH_ID, PUSHED_AT, PUSH_ROW, PUSH_ROWS],
                                     filters=[(PUSH_ID, "=", push_id), (PUSHED_AT, "=", pushed_at),
                                              (PUSH_ROWS, "=", count)])
                seen.update(r for r in rows[PUSH_ROW].to_pylist() if r is not None)
    return seen
