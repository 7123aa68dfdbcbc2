"""Reading the push log as training sets and materialization do (offline/duckdb/push_log.py: ``pushed_sql``): a
log of N lines without push ids, and one whose lines all carry push ids (pushes of 4 rows), median of 5 reads; then
the same log compacted into parquet (offline/push_log/compaction.py), the time compaction took, and its reads.

    python benchmarks/push_log.py --lines 1000000

Lines without a push id skip the dedupe by (push id, row); the figure to compare them with is a plain read of the
same file (printed too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, print_command_and_machine

from feature_store.offline.duckdb.push_log import pushed_sql
from feature_store.offline.push_log.files import FilePushLog

COLUMNS = {"customer_id": "int64", "event_timestamp": "timestamp_tz", "amount": "float64"}


def write_log(folder: Path, lines: int, with_ids: bool) -> None:
    folder.mkdir(parents=True)
    with open(folder / "host-1-1.jsonl", "w") as out:
        for i in range(lines):
            row: dict[str, object] = {"customer_id": str(i % 10_000), "event_timestamp": "2026-11-27T10:00:00+00:00",
                                      "amount": "1.5", "__fs_pushed_at": 1_700_000_000_000_000 + i // 4}
            if with_ids:
                row.update({"__fs_push_id": f"push-{i // 4}", "__fs_push_row": i % 4, "__fs_push_rows": 4})
            out.write(json.dumps(row, separators=(",", ":")) + "\n")


def median_ms(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, tuple[object, ...]]:
    times, result = [], ()
    for _ in range(5):
        started = time.perf_counter()
        result = con.execute(f"SELECT count(*), sum(amount) FROM ({sql})").fetchone() or ()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    print_command_and_machine(f"duckdb {duckdb.__version__}")
    con = duckdb.connect()
    with tempfile.TemporaryDirectory() as tmp:
        for with_ids in (False, True):
            base = Path(tmp) / ("ids" if with_ids else "plain")
            write_log(base / "src", args.lines, with_ids)
            sql = pushed_sql(FilePushLog(base), "src", COLUMNS)
            assert sql is not None
            plain = (f"SELECT CAST(amount AS DOUBLE) AS amount FROM read_json('{base}/src/*.jsonl', "
                     "format = 'newline_delimited', columns = {'amount': 'VARCHAR'})")
            ms, rows = median_ms(con, sql)
            raw_ms, _ = median_ms(con, plain)
            print(f"{args.lines:,} lines, push ids: {'yes' if with_ids else 'no '}  pushed_sql {ms:7.1f} ms  "
                  f"(plain read {raw_ms:6.1f} ms)  rows, sum: {rows}")
            log = FilePushLog(base, rotate_seconds=0.0, delete_grace_seconds=0.0)
            log.seal_margin_seconds = 0.0
            started = time.perf_counter()
            log.compact("src")
            compact_s = time.perf_counter() - started
            log.compact("src")  # deletes the folded-in tail (grace 0)
            sql = pushed_sql(log, "src", COLUMNS)
            assert sql is not None
            ms_after, after = median_ms(con, sql)
            size = sum(f.stat().st_size for f in (base / "src").rglob("*.parquet"))
            print(f"  compacted in {compact_s:.2f} s into {size / 1e6:.1f} MB of parquet; pushed_sql then "
                  f"{ms_after:7.1f} ms  rows, sum: {after}")
            assert after == rows, "compaction changed what readers count"
    print(f"load average: {loadavg()}")


if __name__ == "__main__":
    main()
