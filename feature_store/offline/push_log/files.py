"""The embedded push log: JSON-lines files on the local disk, one per writing process and push source, folded into
parquet by compaction.

Each writing process appends to a file of its own per push source, and flushes it to disk before a push is
acknowledged, so several server workers push without locks and an acknowledged event is never lost. A process
starts a new file every ``rotate_seconds``; a file older than that (and a margin) is *sealed*: nobody writes to it
again, and compaction folds it into parquet (offline/push_log/compaction.py).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from feature_store.errors import PushStalledError
from feature_store.offline.push_log import compaction
from feature_store.offline.push_log.base import Availability, CompactResult, LogSnapshot
from feature_store.query import PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT

ROTATE_SECONDS = 60.0
# A file is sealed this long after its writer would have rotated it: room for a write that had started (a writer
# stalled longer than this, e.g. stopped by a debugger, could still append to a sealed file: see docs/push.md).
SEAL_MARGIN_SECONDS = 30.0
DELETE_GRACE_SECONDS = 900.0
COMPACT_BATCH_BYTES = 256 << 20  # tail bytes folded per manifest commit: bounds compaction's memory


class FilePushLog(Availability):
    """The push log files under one directory: ``<dir>/<push source>/<host>-<pid>-<start>.jsonl``, and compacted
    parts under ``<dir>/<push source>/compacted/day=<YYYY-MM-DD>/``."""

    def __init__(self, directory: Path, fsync: bool = True, rotate_seconds: float = ROTATE_SECONDS,
                 delete_grace_seconds: float = DELETE_GRACE_SECONDS) -> None:
        super().__init__()
        self.directory = directory
        self.fsync = fsync
        self.rotate_seconds = rotate_seconds
        self.seal_margin_seconds = SEAL_MARGIN_SECONDS
        self.delete_grace_seconds = delete_grace_seconds
        self._lock = threading.Lock()
        self._files: dict[tuple[int, str], tuple[IO[bytes], float]] = {}  # (pid, source): after a fork, a new file
        self._last = 0
        self._sync_lock = threading.Lock()
        self._written: dict[str, int] = {}  # appends per source, and how many of them are on disk
        self._synced: dict[str, int] = {}

    # --- appending ---------------------------------------------------------------------------------------------

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
                    with contextlib.suppress(ValueError):  # closed: rotation flushed it to disk before closing
                        os.fdatasync(handle.fileno())
                    self._synced[source] = covered
        return pushed_at

    def _handle(self, source: str) -> IO[bytes]:
        key = (os.getpid(), source)
        handle, opened = self._files.get(key, (None, 0.0))
        if handle is not None and time.time() - opened > self.rotate_seconds:
            if self.fsync:  # the old file is sealed soon: what the last appends wrote must be on disk first
                os.fdatasync(handle.fileno())
            handle.close()
            handle = None
        if handle is None:
            folder = self.directory / source
            folder.mkdir(parents=True, exist_ok=True)
            opened = time.time()
            name = f"{socket.gethostname()}-{os.getpid()}-{int(opened * 1e6)}.jsonl"
            handle = open(folder / name, "ab")  # noqa: SIM115 - kept open until rotated
            self._files[key] = (handle, opened)
        return handle

    # --- reading -----------------------------------------------------------------------------------------------

    def files(self, source: str) -> list[str]:
        """The source's tail files, compacted or not."""
        return sorted(glob.glob(str(self.directory / glob.escape(source) / "*.jsonl")))

    def _compacted(self, source: str) -> tuple[Path, compaction.FileManifest]:
        folder = self.directory / source / "compacted"
        return folder, compaction.FileManifest(folder)

    def snapshot(self, source: str) -> LogSnapshot:
        # Files are listed before the manifest is read: a tail file deleted in between was folded in by a manifest
        # committed at least the grace earlier, which this reader then sees.
        tail = self.files(source)
        folder, store = self._compacted(source)
        manifest = store.load()
        return LogSnapshot(parquet=tuple(str(folder / r) for r in sorted(manifest.parts)),
                           jsonl=tuple(f for f in tail if os.path.basename(f) not in manifest.compacted))

    def has_copy(self, source: str, push_id: str, pushed_at: int, rows: int) -> bool:
        """Whether a complete copy of the push with this id, logged at ``pushed_at``, is in the log: a whole line
        for every row. Only tail files written to since ``pushed_at`` are read, and the compacted parts of its day.
        Readers count a copy only when it is complete too (offline/duckdb/push_log.py), so this answers whether
        training sets count the push."""
        needle = json.dumps({PUSH_ID: push_id}, separators=(",", ":"))[1:-1].encode()
        since = pushed_at / 1e6 - 2.0  # mtime resolution and clock steps
        folder, store = self._compacted(source)
        seen = compaction.has_rows_of(folder, store.load(), push_id, pushed_at, rows)
        for name in self.files(source):
            with contextlib.suppress(FileNotFoundError):
                if os.path.getmtime(name) < since:
                    continue
                with open(name, "rb") as handle:
                    for line in handle:
                        if needle in line and (row := _row_of(line, push_id, pushed_at, rows)) is not None:
                            seen.add(row)
        return len(seen) == rows

    def last_push(self, source: str) -> int | None:
        times = []
        for path in self.files(source):
            with contextlib.suppress(OSError):  # removed meanwhile (compaction, teardown)
                times.append(int(os.stat(path).st_mtime * 1e6))
        last = self._compacted(source)[1].load().last_pushed_at()
        return max([*times, *([last] if last else [])], default=None)

    # --- compaction --------------------------------------------------------------------------------------------

    def sealed(self, source: str, manifest: compaction.Manifest) -> list[str]:
        """Tail files nobody writes to any more and no manifest folded in yet."""
        limit = time.time() - self.rotate_seconds - self.seal_margin_seconds
        return [f for f in self.files(source)
                if os.path.basename(f) not in manifest.compacted and _opened(f) < limit]

    def compact(self, source: str) -> CompactResult:
        """Fold the source's sealed tail files into parquet parts; delete what earlier runs folded in once the grace
        passed. Safe to kill at any point and to run from several processes (they take turns)."""
        folder, store = self._compacted(source)
        grace_us = int(self.delete_grace_seconds * 1e6)
        rows = written = removed = 0
        with store.locked():
            loaded = store.load()
            manifest, doomed = self._retire_tail(source, compaction.delete_unlisted(folder, loaded, grace_us), grace_us)
            if manifest != loaded:
                store.commit(manifest)  # before any file goes: a killed run leaves them marked, and the next deletes
            removed = _unlink(doomed)
            for batch in _batches(self.sealed(source, manifest)):
                table = compaction.concat([compaction.parse_lines(_read(f)) for f in batch])
                parts = compaction.write_parts(folder, table)
                at = compaction.now_us()
                manifest = compaction.Manifest({**manifest.parts, **parts},
                                               {**manifest.compacted, **{os.path.basename(f): at for f in batch}},
                                               manifest.upto, manifest.retired)
                store.commit(manifest)
                rows, written = rows + table.num_rows, written + len(parts)
            merged = compaction.merge_days(folder, manifest)
            if merged is not None:
                store.commit(merged)
                manifest = merged
        return CompactResult(source, rows, written, removed, len(manifest.parts))

    def _retire_tail(self, source: str, manifest: compaction.Manifest,
                     grace_us: int) -> tuple[compaction.Manifest, list[str]]:
        """The manifest with the tail files to delete now marked deleted, and those files. A folded-in file goes a
        grace after it was folded in (a reader that listed it just before still reads it); its entry, marked by
        the negative time of its deletion, goes a grace after that (a reader that listed the file before it went
        still finds it named), so the manifest does not grow with every file ever folded in."""
        present = {os.path.basename(f): f for f in self.files(source)}
        now = compaction.now_us()
        compacted: dict[str, int] = {}
        doomed: list[str] = []
        for name, at in manifest.compacted.items():
            if name in present and (at < 0 or now - at >= grace_us):
                compacted[name] = at if at < 0 else -now
                doomed.append(present[name])
            elif name in present or (at > 0 and now - at < grace_us):
                compacted[name] = at
            elif at > 0:  # gone without being marked (removed by hand): marked now, forgotten a grace later
                compacted[name] = -now
            elif now + at < grace_us:
                compacted[name] = at
        if compacted == manifest.compacted:
            return manifest, doomed
        return compaction.Manifest(manifest.parts, compacted, manifest.upto, manifest.retired), doomed

    # --- housekeeping ------------------------------------------------------------------------------------------

    def remove(self, sources: Iterable[str]) -> int:
        """Delete the log files of these push sources (teardown); return how many. Each file goes whole: a run
        killed midway leaves whole files, which a rerun deletes."""
        self.close()
        removed = 0
        for source in sources:
            for name in self.files(source):
                os.unlink(name)
                removed += 1
            folder = self.directory / source / "compacted"
            removed += len(list(folder.glob(compaction.PART_GLOB)))
            shutil.rmtree(folder, ignore_errors=True)
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
            for handle, _ in self._files.values():
                handle.close()
            self._files.clear()


def _opened(path: str) -> float:
    """When a tail file's writer opened it (its name ends in that time, in us), else its modification time."""
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1].removesuffix(".jsonl")) / 1e6
    except (IndexError, ValueError):
        return os.path.getmtime(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _batches(paths: list[str]) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    size = 0
    for path in paths:
        length = os.path.getsize(path)
        if batches[-1] and size + length > COMPACT_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(path)
        size += length
    return [b for b in batches if b]


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


def _unlink(paths: list[str]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed
