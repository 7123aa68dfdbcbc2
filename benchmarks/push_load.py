#!/usr/bin/env python
"""Pushes through the feature server on each push log backend, and reads while others push.

    python benchmarks/push_load.py --customers 2000 --duration 5 --rounds 3

Builds the example repo (benchmarks/server.py's ``make_repo``: seeded data, applied, materialized into Redis under a
key prefix of its own), then per push log backend (``file``: JSON-lines files with fdatasync; ``postgres``: one table
with group commit, on 127.0.0.1:5432 database ``test``) starts ``feature-store serve --workers 2`` and measures, each
round in turn:

  * pushes/s: 8 keep-alive clients each POSTing one event per request (online and offline) for ``--duration``;
  * reads alone: 1 client reading 1 entity x 10 features, p50/p99;
  * reads while 4 clients push: the same reads with 4 pushing clients beside them.

Medians over the rounds are printed. Client processes share the machine with the server, Redis and PostgreSQL: on
2 cores the figures are a floor. Only the run's own Redis keys and PostgreSQL table are deleted at the end.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_command_and_machine
from server import Server, cases, delete_keys, make_repo, run_python

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def use_log(repo: Path, backend: str, table: str) -> None:
    if backend == "current":  # the config as it is: for runs against older commits (PYTHONPATH=old checkout)
        return
    log = "{type: file}" if backend == "file" else f'{{type: postgres, url: "{PG_URL}", table: {table}}}'
    config = repo / "feature_store.yaml"
    text = re.sub(r"(?m)^offline_store:.*$", f"offline_store: {{type: duckdb, path: data/offline.duckdb, "
                                              f"push_log: {log}}}", config.read_text())
    config.write_text(text)


def one_round(port: int, customers: int, seconds: float) -> dict[str, float]:
    read, push = cases(True)[0], cases(True)[2]
    pushes = run_python(port, push[1], push[2], push[3], customers, 8, seconds, 10**9)
    alone = run_python(port, read[1], read[2], read[3], customers, 1, seconds, 10**9)
    beside: dict[str, Any] = {}
    pusher = threading.Thread(target=lambda: beside.update(
        run_python(port, push[1], push[2], push[3], customers, 4, seconds, 10**9)))
    pusher.start()
    loaded = run_python(port, read[1], read[2], read[3], customers, 1, seconds, 10**9)
    pusher.join()
    return {"pushes/s (8 clients)": pushes["rps"], "push p50 ms": pushes["p50_ms"], "push p99 ms": pushes["p99_ms"],
            "push errors": pushes["errors"], "read p50 ms alone": alone["p50_ms"], "read p99 ms alone": alone["p99_ms"],
            "read p50 ms, 4 pushing": loaded["p50_ms"], "read p99 ms, 4 pushing": loaded["p99_ms"],
            "pushes/s beside reads": beside.get("rps", 0.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--backends", default="file,postgres",
                        help="push logs to compare: file, postgres, or current (the repo's config untouched)")
    args = parser.parse_args()
    print_command_and_machine("")
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = f"fsbench-push-{uuid.uuid4().hex[:8]}"
        base = Path(tmp) / "repo"
        make_repo(base, args.customers, args.redis_url, prefix)
        table = f"fs_bench_log_{uuid.uuid4().hex[:8]}"
        try:
            for backend in args.backends.split(","):
                use_log(base, backend, table)
                server = Server(base, 2, Path(tmp) / f"{backend}.log", threadpool=False)
                try:
                    for _ in range(args.rounds):
                        results.setdefault(backend, []).append(one_round(server.port, args.customers, args.duration))
                        server.wait_idle()
                finally:
                    server.stop()
        finally:
            delete_keys(args.redis_url, prefix)
            if "postgres" in args.backends:
                import psycopg

                with psycopg.connect(PG_URL, autocommit=True) as con:
                    con.execute(f"DROP TABLE IF EXISTS {table}")
                    con.execute(f"DROP TABLE IF EXISTS {table}_manifest")
    names = list(next(iter(results.values()))[0])
    print(f"\nmedians of {args.rounds} rounds, {args.duration:g} s each")
    print(f"{'':28}" + "".join(f"{b:>12}" for b in results))
    for name in names:
        print(f"{name:28}" + "".join(f"{statistics.median(r[name] for r in rows):12.2f}" for rows in results.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
