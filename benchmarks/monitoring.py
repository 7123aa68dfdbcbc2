#!/usr/bin/env python
"""Monitoring benchmark: the served-value log's cost on online reads, and profiling a large feature table.

``logging``: one copy of the example repo (SQLite online store, or Redis with ``--redis URL``), materialized, and
two FeatureStore objects on it in this process: A without logging, B with ``monitoring.log_served`` at a 100 %
sample rate. Rounds alternate A and B (A first in even rounds, B first in odd ones); each round times
``--reads`` calls of ``get_online_features`` (1 entity x 10 features from 3 views, and 100 entities x the same
10) per store. B's writer thread runs as in production (it appends the queued JSON lines to a compressed spool
file every 0.2 s and renames it every 5 s), competing with the reads for the CPUs; after each B round the rest
is written, outside the timed reads. Quoted: the median over rounds of each round's p50 and p99, the overhead
B/A - 1, and the writer thread's CPU time per logged read.

``server``: the same A/B over HTTP against two ``feature-store serve`` processes (one worker each), 1x10
requests sent one at a time, alternating servers by round.

``profile``: a table of ``--rows`` rows x 10 features (7 float, 1 integer, 2 string columns of 20 values; a
tenth of one float column null), built in a worker process, then ``profile_table`` timed on it; peak RSS
(VmHWM) of the worker before and after profiling.

    python benchmarks/monitoring.py                         # all three, 10M rows
    python benchmarks/monitoring.py --only server           # the A/B over HTTP, two server processes
    python benchmarks/monitoring.py --only logging --rounds 15 --reads 2000
    python benchmarks/monitoring.py --only profile --rows 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from common import FEATURES_1X10, loadavg, peak_rss_bytes, print_command_and_machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def make_repo(base: Path, redis: str | None, logging: bool) -> Path:
    repo = base / ("b" if logging else "a")
    repo.mkdir()
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    config = repo / "feature_store.yaml"
    text = config.read_text().replace("registry: data/registry.db", f"registry: {base / 'registry.db'}")
    text = text.replace("offline_store: {type: duckdb, path: data/offline.duckdb}",
                        f"offline_store: {{type: duckdb, path: {base / 'data' / 'offline.duckdb'}}}")
    if redis:
        prefix = f"fsbench-monitoring-{uuid.uuid4().hex[:8]}"
        text = text.replace("online_store: {type: sqlite, path: data/online.db}",
                            f'online_store: {{type: redis, url: "{redis}", key_prefix: {prefix}}}')
    else:
        text = text.replace("online_store: {type: sqlite, path: data/online.db}",
                            f"online_store: {{type: sqlite, path: {base / 'data' / 'online.db'}}}")
    if logging:
        text += "monitoring: {log_served: true, sample_rate: 1.0}\n"  # the defaults: queue 10,000, files every 5 s
    config.write_text(text)
    (repo / "data").symlink_to(base / "data")
    return repo


def bench_logging(args: argparse.Namespace) -> dict[str, Any]:
    from feature_store import FeatureStore, example

    base = Path(tempfile.mkdtemp(prefix="fs_bench_monitoring_"))
    try:
        example.generate(base / "data", customers=args.customers, days=60, seed=7)
        plain, logged = make_repo(base, args.redis, False), make_repo(base, args.redis, True)
        with FeatureStore(plain) as store:
            store.apply()
            store.materialize()
        stores = {"A (no logging)": FeatureStore(plain), "B (logging 100 %)": FeatureStore(logged)}
        cases = {"1x10": [[1 + i % args.customers] for i in range(args.reads)],
                 "100x10": [[1 + (i + j) % args.customers for j in range(100)] for i in range(args.reads // 10)]}
        results: dict[str, Any] = {}
        for case, requests in cases.items():
            rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in stores}
            writer_us: list[float] = []
            for store in stores.values():  # warm-up: plans compiled, connections open
                for ids in requests[:200]:
                    store.get_online_features(FEATURES_1X10, {"customer_id": ids})
            for number in range(args.rounds):
                order = list(stores) if number % 2 == 0 else list(reversed(stores))
                for name in order:
                    store = stores[name]
                    times = []
                    for ids in requests:
                        started = time.perf_counter()
                        store.get_online_features(FEATURES_1X10, {"customer_id": ids})
                        times.append(time.perf_counter() - started)
                    rounds[name].append((percentile(times, 50), percentile(times, 99)))
                    log = store.served_log
                    if log is not None:  # the rest written now (not in the next A round), its CPU counted
                        started = time.thread_time()
                        log.flush()
                        cpu = log.writer_seconds + time.thread_time() - started  # the thread's, then this one's
                        log.writer_seconds = 0.0
                        writer_us.append(cpu / len(requests) * 1e6)
            summary = {name: {"p50_us": statistics.median(r[0] for r in rs) * 1e6,
                              "p99_us": statistics.median(r[1] for r in rs) * 1e6} for name, rs in rounds.items()}
            a, b = summary["A (no logging)"], summary["B (logging 100 %)"]
            results[case] = {**summary, "overhead_p50": b["p50_us"] / a["p50_us"] - 1,
                             "overhead_p99": b["p99_us"] / a["p99_us"] - 1,
                             "writer_us_per_read": statistics.median(writer_us)}
        stores["A (no logging)"].teardown()  # one project for both: its Redis keys go (only them)
        for store in stores.values():
            store.close()
        return results
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bench_server(args: argparse.Namespace) -> dict[str, Any]:
    """The same A/B over HTTP: two `feature-store serve` processes (one worker each) on the same data, one
    logging; a client sends 1x10 requests one at a time (keep-alive), alternating servers by round."""
    import os
    import socket

    import httpx

    from feature_store import FeatureStore, example

    base = Path(tempfile.mkdtemp(prefix="fs_bench_monitoring_server_"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        example.generate(base / "data", customers=args.customers, days=60, seed=7)
        repos = {"A (no logging)": make_repo(base, args.redis, False), "B (logging 100 %)": make_repo(base, args.redis,
                                                                                                        True)}
        with FeatureStore(repos["A (no logging)"]) as store:
            store.apply()
            store.materialize()
        urls = {}
        for name, repo in repos.items():
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            procs.append(subprocess.Popen([sys.executable, "-m", "feature_store", "--repo", str(repo), "serve",
                                           "--port", str(port), "--log-level", "warning"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls[name] = f"http://127.0.0.1:{port}"
        clients = {name: httpx.Client(base_url=url, timeout=10) for name, url in urls.items()}
        for client in clients.values():
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("a server did not become ready")
                time.sleep(0.2)
        bodies = [json.dumps({"features": FEATURES_1X10, "entities": {"customer_id": [1 + i % args.customers]}})
                  for i in range(args.reads)]
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for client in clients.values():
            for body in bodies[:300]:
                client.post("/get-online-features", content=body)
        for number in range(args.rounds):
            for name in (list(clients) if number % 2 == 0 else list(reversed(clients))):
                times = []
                for body in bodies:
                    started = time.perf_counter()
                    answer = client_post(clients[name], body)
                    times.append(time.perf_counter() - started)
                    assert answer == 200
                rounds[name].append((percentile(times, 50), percentile(times, 99)))
        summary = {name: {"p50_us": statistics.median(r[0] for r in rs) * 1e6,
                          "p99_us": statistics.median(r[1] for r in rs) * 1e6} for name, rs in rounds.items()}
        a, b = summary["A (no logging)"], summary["B (logging 100 %)"]
        for client in clients.values():
            client.close()
        return {"1x10 HTTP": {**summary, "overhead_p50": b["p50_us"] / a["p50_us"] - 1,
                              "overhead_p99": b["p99_us"] / a["p99_us"] - 1, "writer_us_per_read": float("nan")}}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        with contextlib.suppress(Exception), FeatureStore(base / "a") as store:
            store.teardown()
        shutil.rmtree(base, ignore_errors=True)


def client_post(client: Any, body: str) -> int:
    return int(client.post("/get-online-features", content=body).status_code)


def profile_worker(rows: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from feature_store.monitoring.profiles import profile_table

    rng = np.random.default_rng(0)
    columns: dict[str, Any] = {}
    for i in range(7):
        values = rng.normal(100 * (i + 1), 10 * (i + 1), rows)
        columns[f"float_{i}"] = pa.array(values, mask=(np.arange(rows) % 10 == 0) if i == 0 else None)
    columns["count"] = pa.array(rng.integers(0, 50, rows))
    words = pa.array([f"category_{i:02d}" for i in range(20)])
    for name in ("segment", "merchant"):
        columns[name] = pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 20, rows), pa.int32()),
                                                       words).cast(pa.string())
    table = pa.table(columns)
    rss_before = peak_rss_bytes()
    started = time.perf_counter()
    profile = profile_table(table)
    seconds = time.perf_counter() - started
    return {"rows": rows, "features": len(profile["features"]), "seconds": seconds,
            "table_bytes": table.nbytes, "peak_rss_before": rss_before, "peak_rss_after": peak_rss_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["logging", "server", "profile"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reads", type=int, default=2000, help="1x10 reads per round (100x10: a tenth)")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--redis", help="a Redis URL (default: the SQLite online store)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--_profile_worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._profile_worker:
        print(json.dumps(profile_worker(args._profile_worker)))
        return
    import numpy
    import pyarrow

    print_command_and_machine(f"numpy {numpy.__version__}, pyarrow {pyarrow.__version__}")
    print(f"load average before: {loadavg()}")
    if args.only in (None, "logging"):
        store = "redis " + args.redis if args.redis else "sqlite"
        print(f"\nServed-value log overhead ({store}; {args.rounds} rounds of {args.reads} reads, medians of the "
              "rounds' percentiles)")
        for case, r in bench_logging(args).items():
            a, b = r["A (no logging)"], r["B (logging 100 %)"]
            print(f"  {case:7} p50 {a['p50_us']:8.1f} us -> {b['p50_us']:8.1f} us ({r['overhead_p50']:+.1%})   "
                  f"p99 {a['p99_us']:8.1f} us -> {b['p99_us']:8.1f} us ({r['overhead_p99']:+.1%})   "
                  f"writer {r['writer_us_per_read']:.1f} us/read")
    if args.only in (None, "server"):
        print(f"\nServed-value log overhead over HTTP (one server process each; {args.rounds} rounds of "
              f"{args.reads} requests)")
        for case, r in bench_server(args).items():
            a, b = r["A (no logging)"], r["B (logging 100 %)"]
            print(f"  {case:9} p50 {a['p50_us']:8.1f} us -> {b['p50_us']:8.1f} us ({r['overhead_p50']:+.1%})   "
                  f"p99 {a['p99_us']:8.1f} us -> {b['p99_us']:8.1f} us ({r['overhead_p99']:+.1%})")
    if args.only in (None, "profile"):
        done = subprocess.run([sys.executable, __file__, "--_profile_worker", str(args.rows)], capture_output=True,
                              text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        mb = 1024 * 1024
        print(f"\nProfile of {r['rows']:,} rows x {r['features']} features: {r['seconds']:.2f} s; table "
              f"{r['table_bytes'] / mb:,.0f} MB; peak RSS {r['peak_rss_before'] / mb:,.0f} MB after building it, "
              f"{r['peak_rss_after'] / mb:,.0f} MB after profiling")
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
