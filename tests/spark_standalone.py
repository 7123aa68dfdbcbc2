"""A standalone Spark cluster on loopback, from the pyspark distribution's own ``bin/spark-class``: a master and N
workers of one core each. Used by tests/test_spark_cluster.py and benchmarks/spark_cluster.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def wait_for(path: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} x{count} not in {path} within {timeout} s:\n{path.read_text(errors='replace')}")


def environment(logs: Path) -> dict[str, str]:
    """What the cluster's processes (and a driver using it) need: Spark's home, loopback, this interpreter for the
    Python workers, and feature_store importable."""
    return {**os.environ, "SPARK_HOME": str(spark_class().parent.parent), "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(logs),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@contextmanager
def standalone(workers: int, logs: Path, memory: str = "1g") -> Iterator[str]:
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
