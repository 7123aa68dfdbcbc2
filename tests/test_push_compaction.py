"""Compaction of the push log (offline/push_log/compaction.py) changes where logged rows live, never which rows a
reader counts: checked against a twin log that received the same appends and is never compacted, read the same way
(offline/duckdb/push_log.py), after random appends, retried and torn copies of pushes with ids, and compactions; and
after compactions killed with SIGKILL at random points. On the local file log and on the PostgreSQL log."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.offline.duckdb.push_log import pushed_sql
from feature_store.offline.duckdb.scratch import scratch_cursor
from feature_store.offline.push_log.base import PushLog
from feature_store.offline.push_log.files import FilePushLog

COLUMNS = {"customer_id": "int64", "event_timestamp": "timestamp_tz", "amount": "float64"}
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent


def lines_of(rows: list[tuple[int, float]], push_id: str | None = None, only: int | None = None) -> Any:
    """The JSON lines of a push, as push_rows.py writes them; ``only``: the first rows of it (an attempt killed
    midway)."""
    def render(pushed_at: int) -> bytes:
        out = []
        for i, (key, amount) in enumerate(rows[:only]):
            row: dict[str, Any] = {"customer_id": str(key), "event_timestamp": "2026-12-01T10:00:00+00:00",
                                   "amount": repr(amount), "__fs_pushed_at": pushed_at}
            if push_id is not None:
                row.update({"__fs_push_id": push_id, "__fs_push_row": i, "__fs_push_rows": len(rows)})
            out.append(json.dumps(row, separators=(",", ":")))
        return ("\n".join(out) + "\n").encode()
    return render


def read(log: PushLog, source: str) -> list[tuple[Any, ...]]:
    sql = pushed_sql(log, source, COLUMNS)
    if sql is None:
        return []
    con = scratch_cursor()  # not a database of its own per read: opening one takes 12-15 ms
    try:
        return sorted(con.execute(f"SELECT customer_id, amount, __fs_created FROM ({sql})").fetchall())
    finally:
        con.close()


def file_log(folder: Path) -> FilePushLog:
    """Every append in a file of its own, sealed at once, deleted as soon as it is folded in: compaction takes all."""
    log = FilePushLog(folder, fsync=False, rotate_seconds=0.0, delete_grace_seconds=0.0)
    log.seal_margin_seconds = 0.0
    return log


@pytest.fixture(params=["file", "postgres"])
def log_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PushLog, FilePushLog]]:
    """The log under test and its never-compacted twin (a file log)."""
    twin = file_log(tmp_path / "twin")
    if request.param == "file":
        log: PushLog = file_log(tmp_path / "log")
        yield log, twin
        log.close()
        return
    request.getfixturevalue("postgres_url")  # skips without a PostgreSQL
    from feature_store.offline.push_log.postgres import PostgresPushLog

    table = f"fs_test_log_{uuid.uuid4().hex[:10]}"
    pg = PostgresPushLog(PG_URL, table, tmp_path / "parts", delete_grace_seconds=0.0)
    yield pg, twin
    pg.close()
    with pg.connect() as con:
        con.execute(f"DROP TABLE IF EXISTS {table}")
        con.execute(f"DROP TABLE IF EXISTS {table}_manifest")


pushes = st.lists(st.tuples(st.integers(1, 4), st.sampled_from([1.5, 0.1, 2.0, -3.25, 1e-7])), min_size=1, max_size=3)
ops = st.lists(st.one_of(
    st.tuples(st.just("plain"), pushes),
    st.tuples(st.just("ided"), pushes),
    st.tuples(st.just("retry"), pushes),  # a retry of the last push with an id: a second complete copy
    st.tuples(st.just("torn"), pushes),  # an attempt killed midway: the first rows of a push with an id
    st.tuples(st.just("compact"), st.just([])),
), min_size=1, max_size=12)


@settings(max_examples=int(os.environ.get("COMPACTION_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
def test_compaction_never_changes_what_readers_count(log_pair: tuple[PushLog, FilePushLog], steps: list[Any]) -> None:
    log, twin = log_pair
    source = f"src_{uuid.uuid4().hex[:8]}"
    last: tuple[str, list[tuple[int, float]], int, bool] | None = None  # the last push with an id; complete?
    for kind, rows in steps:
        if kind == "compact":
            log.compact(source)
        elif kind == "retry" and last is not None:
            push_id, rows, at, _ = last
            log.append(source, lines_of(rows, push_id), at)
            twin.append(source, lines_of(rows, push_id), at)
            last = (push_id, rows, at, True)
        elif kind != "retry":
            push_id = None if kind == "plain" else uuid.uuid4().hex
            torn = kind == "torn" and len(rows) > 1
            render = lines_of(rows, push_id, only=len(rows) - 1 if torn else None)
            at = log.append(source, render)
            twin.append(source, render, at)
            if push_id is not None:
                last = (push_id, rows, at, not torn)
        assert read(log, source) == read(twin, source), f"after {kind} in {steps}"
    log.compact(source)
    log.compact(source)  # the grace is 0: this run deletes what the first folded in
    assert read(log, source) == read(twin, source)
    if isinstance(log, FilePushLog):
        assert not log.snapshot(source).jsonl and not log.files(source), "every sealed file is folded in and gone"
    if last is not None:
        push_id, rows, at, complete = last
        # a retry finds a complete copy that compaction moved into parquet, and no copy where only a part is logged
        assert log.has_copy(source, push_id, at, len(rows)) == complete


def test_a_torn_line_reads_the_same_compacted(tmp_path: Path) -> None:
    """A process killed while writing a line leaves a fragment: skipped in the tail, skipped when compacted."""
    log, twin = file_log(tmp_path / "log"), file_log(tmp_path / "twin")
    for target in (log, twin):
        target.append("src", lines_of([(1, 1.5), (2, 2.0)]), 100)
        target.append("src", lambda at: b'{"customer_id":"3","amount":"1.', 101)
        target.append("src", lines_of([(4, 0.1)]), 102)
    log.compact("src")
    assert [r[0] for r in read(log, "src")] == [1, 2, 4]
    assert read(log, "src") == read(twin, "src")


def test_a_file_written_lately_is_not_sealed(tmp_path: Path) -> None:
    """A writer's current file is left alone until it rotated and the margin passed: an append after the compaction
    still counts."""
    log = FilePushLog(tmp_path / "log", fsync=False, rotate_seconds=60.0)
    log.append("src", lines_of([(1, 1.5)]))
    assert log.compact("src").rows == 0
    log.append("src", lines_of([(2, 2.0)]))
    assert [r[0] for r in read(log, "src")] == [1, 2]


def test_a_column_the_source_gained_later_reads_as_null_from_old_parts(tmp_path: Path) -> None:
    log = file_log(tmp_path / "log")
    log.append("src", lines_of([(1, 1.5)]))
    log.compact("src")
    sql = pushed_sql(log, "src", {**COLUMNS, "channel": "string"})
    assert sql is not None
    assert scratch_cursor().execute(f"SELECT customer_id, channel FROM ({sql})").fetchall() == [(1, None)]


# --- killed compactions --------------------------------------------------------------------------------------------

KILLED_FILE = """
import sys
from pathlib import Path
from feature_store.offline.push_log import files
files.COMPACT_BATCH_BYTES = 20_000  # many manifest commits, and days crowded enough to merge
log = files.FilePushLog(Path(sys.argv[1]), fsync=False, rotate_seconds=0.0, delete_grace_seconds=0.0)
log.seal_margin_seconds = 0.0
log.compact("src")
"""
KILLED_PG = """
import sys
from pathlib import Path
from feature_store.offline.push_log.postgres import PostgresPushLog
PostgresPushLog(sys.argv[2], sys.argv[3], Path(sys.argv[1]), delete_grace_seconds=0.0).compact("src")
"""


def fill(logs: list[PushLog], appends: int, rng: random.Random) -> None:
    """Appends over several days of arrival (parts are per day), a third of them with push ids and some twice."""
    day = 86_400_000_000
    for n in range(appends):
        rows = [(rng.randint(1, 50), rng.choice([1.5, 0.25, 3.0])) for _ in range(rng.randint(1, 30))]
        push_id = uuid.uuid4().hex if n % 3 == 0 else None
        at = 1_764_000_000_000_000 + (n % 4) * day + n
        for log in logs:
            log.append("src", lines_of(rows, push_id), at)
            if push_id is not None and n % 6 == 0:
                log.append("src", lines_of(rows, push_id), at)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "postgres"])
def test_compaction_killed_at_random_points_loses_and_doubles_nothing(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    rng = random.Random(11)
    twin = file_log(tmp_path / "twin")
    if backend == "file":
        log: PushLog = file_log(tmp_path / "log")
        script, args = KILLED_FILE, [str(tmp_path / "log")]
    else:
        request.getfixturevalue("postgres_url")
        from feature_store.offline.push_log.postgres import PostgresPushLog

        table = f"fs_test_log_{uuid.uuid4().hex[:10]}"
        log = PostgresPushLog(PG_URL, table, tmp_path / "parts", delete_grace_seconds=0.0)
        script, args = KILLED_PG, [str(tmp_path / "parts"), PG_URL, table]
    try:
        fill([log, twin], 600, rng)
        expected = read(twin, "src")
        killed = 0
        for _ in range(8):
            proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT)
            time.sleep(rng.uniform(0.2, 1.5))  # the interpreter's start-up is ~0.3 s of it
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            assert read(log, "src") == expected, "a reader between killed compactions counts every row once"
            fill([log, twin], 20, rng)  # pushes keep arriving between runs
            expected = read(twin, "src")
        assert killed >= 2, "the compactions were too fast to be killed: make the log bigger"
        subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, check=True)
        assert read(log, "src") == expected
        snapshot = log.snapshot("src")
        assert not snapshot.jsonl, "everything is folded into parquet"
        assert len(snapshot.parquet) <= 4 * 9, "crowded days were merged"
        assert len(list((tmp_path / ("log/src/compacted" if backend == "file" else "parts/src")).glob(
            "day=*/*.parquet"))) == len(snapshot.parquet), "parts of killed runs are deleted"
    finally:
        if backend == "postgres":
            with log.connect() as con:  # type: ignore[attr-defined]
                con.execute(f"DROP TABLE IF EXISTS {table}")
                con.execute(f"DROP TABLE IF EXISTS {table}_manifest")
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_config_without_types_keeps_the_defaults() -> None:
    from feature_store.config import DuckDBOfflineConfig, FilePushLogConfig, RepoConfig

    config = RepoConfig.model_validate({"project": "p", "offline_store": {"push_log": {"rotate_seconds": 5}}})
    assert isinstance(config.offline_store, DuckDBOfflineConfig)
    assert isinstance(config.offline_store.push_log, FilePushLogConfig)
    assert config.offline_store.push_log.rotate_seconds == 5


def test_the_manifest_forgets_deleted_tail_files_a_grace_after_their_deletion(tmp_path: Path) -> None:
    """It does not grow with every file ever folded in, and never drops a name a reader may still need."""
    log = FilePushLog(tmp_path / "log", fsync=False, rotate_seconds=0.0, delete_grace_seconds=0.5)
    log.seal_margin_seconds = 0.0
    for n in range(3):
        log.append("src", lines_of([(n, 1.5)]))
    named = lambda: json.loads((tmp_path / "log/src/compacted/manifest.json").read_text())["compacted"]  # noqa: E731
    log.compact("src")
    assert len(named()) == 3 and len(log.files("src")) == 3  # folded in, kept for readers that listed them
    time.sleep(0.6)
    log.compact("src")
    assert len(named()) == 3 and not log.files("src")  # deleted, still named
    time.sleep(0.6)
    log.compact("src")
    assert named() == {} and [r[0] for r in read(log, "src")] == [0, 1, 2]
