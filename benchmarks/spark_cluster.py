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
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def wait_for(path: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} x{count} not in {path} within {timeout} s")


def environment(logs: Path) -> dict[str, str]:
    return {**os.environ, "SPARK_HOME": str(spark_class().parent.parent), "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(logs),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@contextmanager
def cluster(workers: int, logs: Path, memory: str) -> Iterator[str]:
    """spark://127.0.0.1:<port> with ``workers`` registered workers of one core each; stopped on exit."""
    env, port = environment(logs), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    master_log = logs / "master.log"
    try:
        with open(master_log, "wb") as log:
            procs.append(subprocess.Popen(
                [str(spark_class()), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                 str(port), "--webui-port", str(free_port())], stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_for(master_log, "I have been elected leader", 1, 90)
        for n in range(workers):
            with open(logs / f"worker{n}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [str(spark_class()), "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                     "--host", "127.0.0.1", "--cores", "1", "--memory", memory, "--webui-port", str(free_port()),
                     "--work-dir", str(logs / f"work{n}")], stdout=log, stderr=subprocess.STDOUT, env=env))
        wait_for(master_log, "Registering worker", workers, 90)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(workers: int, args: argparse.Namespace, logs: Path) -> tuple[str, Path]:
    """offline.py's spark-raw on a cluster of ``workers``: its summary line and the saved training set."""
    with cluster(workers, logs, args.worker_memory) as master:
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
