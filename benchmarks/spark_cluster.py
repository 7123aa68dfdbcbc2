#!/usr/bin/env python
"""The Spark engine on a standalone cluster of 1 worker, then of 2 workers (one core each), on the same data.

Starts a master and N workers with the pyspark distribution's own ``bin/spark-class`` on loopback (as
tests/test_spark_cluster.py does), and runs ``benchmarks/offline.py --engine spark --methods spark-raw
--spark-master spark://...`` against it, for N = 1 and N = 2; the training sets of both runs are compared. The
median seconds of each are printed with the exact commands.

    python benchmarks/spark_cluster.py --size small --repeat 3 --out-dir /tmp/fs_bench_spark
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.spark_standalone import environment, standalone  # noqa: E402 - the tests' cluster launcher

HERE = Path(__file__).resolve().parent


def run(workers: int, args: argparse.Namespace, logs: Path) -> tuple[str, Path]:
    """offline.py's spark-raw on a cluster of ``workers``: its summary line and the saved training set."""
    with standalone(workers, logs, args.worker_memory) as master:
        cmd = [sys.executable, str(HERE / "offline.py"), "--size", args.size, "--engine", "spark", "--methods",
               "spark-raw", "--repeat", str(args.repeat), "--out-dir", args.out_dir, "--spark-master", master]
        print("$", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, env=environment(logs), capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if re.match(rf"{args.size}\s+\|\s+spark-raw", line)]
    if done.returncode or not lines:
        raise SystemExit(f"offline.py failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    saved = logs / "training.parquet"
    produced = sorted(Path(args.out_dir).rglob("spark-raw.parquet"), key=lambda p: p.stat().st_mtime)
    if produced:
        saved.write_bytes(produced[-1].read_bytes())
    return lines[-1], saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=["small", "large"], default="small")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out-dir", default=None, help="offline.py's data directory (kept and reused; default: temp)")
    p.add_argument("--worker-memory", default="2g")
    args = p.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]), flush=True)
    with tempfile.TemporaryDirectory(prefix="fs_spark_cluster_") as tmp:
        args.out_dir = args.out_dir or str(Path(tmp) / "data")
        results = {}
        for workers in (1, 2):
            logs = Path(tmp) / f"w{workers}"
            logs.mkdir()
            results[workers] = run(workers, args, logs)
        first, second = (pd.read_parquet(results[n][1]) for n in (1, 2))
        pd.testing.assert_frame_equal(first, second, check_exact=False, rtol=1e-9)
        print("\nworkers | offline.py summary (size | method | median | runs | rows/s | driver peak RSS | ...)")
        for workers, (line, _) in results.items():
            print(f"{workers:7} | {line}")
        print("the training sets of both runs are equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
