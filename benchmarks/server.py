#!/usr/bin/env python
"""HTTP feature server benchmark: latency and throughput of ``feature-store serve`` on loopback.

Copies the example repo (``feature_repo/``, plus a push source over its transactions) to a temp dir, fills
it with the seeded example data (``feature_store.example.generate(..., customers=N, days=90)``), applies
and materializes it into a real Redis under a key prefix unique to the run, then, per number of server
worker processes, starts ``python -m feature_store --repo REPO serve --workers W`` and measures with
keep-alive clients in a separate process:

  * ``POST /get-online-features``, 1 entity x 10 features from 3 views (``customer_spend`` 6,
    ``customer_habits`` 2, ``customer_profile`` 2) and 100 entities x the same 10 features, random
    existing customers, with 1, 4 and 8 concurrent connections: p50/p95/p99/max latency and requests/s
  * ``POST /push`` (``--push``): single events, and batches of 1,000 events, to online and offline

The client is ``wrk`` (C, one thread, Lua-generated bodies) when it is on PATH, else Python processes with
one ``http.client`` keep-alive connection each. Each case is bounded in time (``--duration``) and in
requests (``--max-requests``). Before the timed cases, one response is compared with the SDK's
``get_online_features`` for the same request. With ``--profile``, py-spy samples the server's processes
during the 8-client 1 x 10 case and the top functions by own time are printed.

Client and server share the machine: on 2 cores, wrk, Redis and the server workers compete, so
throughput figures are a floor of what the server does on its own cores. Only keys under the run's
prefix are deleted at the end, never the database.

Run ``python benchmarks/server.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import FEATURES_1X10, delete_cluster_prefix, latency_stats, loadavg, percentile, scan_prefix

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_REPO = ROOT / "feature_repo"
TARGET_P99_MS_1_CLIENT = 1.5
TARGET_RPS_8_CLIENTS = 4_000


# --------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "feature_store"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return commit + (" (feature_store/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "n/a"


def make_repo(repo: Path, customers: int, redis_url: str, prefix: str, cluster: bool = False) -> None:
    """The example repo as users get it; pushes go to its transactions_push, which feeds two views."""
    from feature_store import FeatureStore, example

    repo.mkdir(parents=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(EXAMPLE_REPO / name, repo / name)
    section: dict[str, Any] = {"type": "redis", "url": redis_url, "key_prefix": prefix}
    online = json.dumps({**section, "cluster": True} if cluster else section)
    config = repo / "feature_store.yaml"
    config.write_text(re.sub(r"(?m)^online_store:.*$", f"online_store: {online}", config.read_text()))
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    started = time.perf_counter()
    example.generate(repo / "data", customers=customers, days=90, seed=7, end=end)
    with FeatureStore(repo) as store:
        store.apply()
        store.materialize()
    print(f"repo: {customers:,} customers generated, applied and materialized into Redis in "
          f"{time.perf_counter() - started:.1f} s", flush=True)


def expected_response(repo: Path, body: dict[str, Any]) -> Any:
    """The SDK's answer to a request, encoded as the server encodes it (online reads leave the offline database
    closed, so this runs next to the server)."""
    from feature_store import FeatureStore
    from feature_store.server.encode import online_body

    with FeatureStore(repo) as store:
        now = datetime.fromisoformat(body["now"])
        return json.loads(online_body(store.get_online_features(body["features"], body["entities"], False, now)))


def delete_keys(redis_url: str, prefix: str, cluster: bool = False) -> int:
    import redis

    if cluster:
        return delete_cluster_prefix(redis_url, prefix + ":")
    return scan_prefix(redis.Redis.from_url(redis_url), prefix + ":", delete=True)  # never another prefix


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, repo: Path, workers: int, log: Path, threadpool: bool) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if threadpool:  # server.threadpool through the config file would need a second repo
            config = repo / "feature_store.yaml"
            text = re.sub(r"(?m)^server:.*\n", "", config.read_text())
            config.write_text(text + "server: {threadpool: true}\n")
        command = [sys.executable, "-m", "feature_store", "--repo", str(repo), "serve", "--port", str(self.port),
                   "--workers", str(workers), "--log-level", "warning"]
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [self.proc.pid, *(int(c) for c in children)]

    def wait_idle(self, seconds: float = 60.0) -> None:
        """Until the server's processes use under 5% of a core over half a second (at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = self.cpu_seconds()
            time.sleep(0.5)
            if self.cpu_seconds() - before < 0.025:
                return

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's processes so far (Linux /proc)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------
# Load: wrk, or Python keep-alive connections
# --------------------------------------------------------------------------


def wrk_script(path: str, body_template: str, count: int, customers: int, max_requests: int, threads: int) -> str:
    """Lua for wrk: a body per request (``count`` random customers replace the CUSTOMERS placeholder), a
    request cap, and the figures as one JSON line."""
    per_thread = max(1, max_requests // threads)
    before, _, after = body_template.partition("CUSTOMERS")
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local before, after = {json.dumps(before)}, {json.dumps(after)}
local count = {count}
local done_requests = 0
local bad = {{}}
bad_summary = ""  -- read by done() through the thread: "status:count" of every non-2xx answer
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
request = function()
  local ids = {{}}
  for i = 1, count do ids[i] = math.random(1, {customers}) end
  return wrk.format(nil, "{path}", nil, before .. table.concat(ids, ",") .. after)
end
response = function(status, headers, body)
  done_requests = done_requests + 1
  if status >= 300 then
    bad[status] = (bad[status] or 0) + 1
    local parts = {{}}
    for code, n in pairs(bad) do table.insert(parts, code .. ":" .. n) end
    bad_summary = table.concat(parts, ",")
  end
  if done_requests >= {per_thread} then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  local statuses = {{}}
  for _, thread in ipairs(threads) do table.insert(statuses, thread:get("bad_summary")) end
  io.write(string.format('{{"requests": %d, "seconds": %.6f, "p50": %d, "p95": %d, "p99": %d, "max": %d, ' ..
    '"errors": %d, "non2xx": %d, "statuses": "%s"}}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, summary.errors.connect +
    summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status,
    table.concat(statuses, ",")))
end
"""


def run_wrk(port: int, path: str, body_template: str, count: int, customers: int, clients: int, seconds: float,
            max_requests: int, workdir: Path) -> dict[str, Any]:
    threads = 1  # one event-loop thread drives every connection: the least CPU taken from the server
    script = workdir / "case.lua"
    script.write_text(wrk_script(path, body_template, count, customers, max_requests, threads))
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s",
               str(script), f"http://127.0.0.1:{port}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line)
    return {"client": "wrk", "requests": raw["requests"], "seconds": raw["seconds"],
            "rps": raw["requests"] / raw["seconds"], "p50_ms": raw["p50"] / 1e3, "p95_ms": raw["p95"] / 1e3,
            "p99_ms": raw["p99"] / 1e3, "max_ms": raw["max"] / 1e3, "errors": raw["errors"] + raw["non2xx"],
            "statuses": raw["statuses"]}


def _python_client(args: tuple[int, str, str, int, int, float, int, int]) -> tuple[list[float], int, float]:
    port, path, template, count, customers, seconds, max_requests, seed = args
    rng = random.Random(seed)
    before, _, after = template.partition("CUSTOMERS")
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}
    latencies, errors = [], 0
    start = time.perf_counter()
    deadline = start + seconds
    pc = time.perf_counter
    while len(latencies) < max_requests and pc() < deadline:
        body = (before + ",".join(str(rng.randint(1, customers)) for _ in range(count)) + after).encode()
        t = pc()
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        response.read()
        latencies.append(pc() - t)
        errors += response.status != 200
    return latencies, errors, pc() - start


def run_python(port: int, path: str, body_template: str, count: int, customers: int, clients: int, seconds: float,
               max_requests: int) -> dict[str, Any]:
    jobs = [(port, path, body_template, count, customers, seconds, max(1, max_requests // clients), i)
            for i in range(clients)]
    with multiprocessing.get_context("spawn").Pool(clients) as pool:
        results = pool.map(_python_client, jobs)
    latencies = sorted(seconds * 1e3 for r in results for seconds in r[0])
    requests = len(latencies)
    elapsed = max(r[2] for r in results)
    return {"client": "python", "requests": requests, "seconds": elapsed, "rps": requests / elapsed, "statuses": "",
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1], "errors": sum(r[1] for r in results)}


# --------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------


def start_profile(pids: list[int], seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print("  (py-spy not found: pip install py-spy)")
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([spy, "record", "--pid", str(pids[0]), "--subprocesses", "--duration",
                             str(max(1, round(seconds))), "--rate", "200", "--format", "raw", "--nonblocking",
                             "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_profile(out: Path, top: int = 25) -> None:
    """Own time per function and per package, from py-spy's collapsed stacks."""
    if not out.exists():
        print("  (no profile written)")
        return
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frame = stack.split(";")[-1]
        samples = int(count)
        total += samples
        own[frame] += samples
        where = re.search(r"\((.*?):\d+\)", frame)
        file = where.group(1) if where else frame
        package = re.search(r"site-packages/([^/]+)", file)
        packages[package.group(1) if package else ("feature_store" if "feature_store" in file else
                                                   Path(file).name or "?")] += samples
    if not total:
        print("  (no samples)")
        return
    print(f"  own time by package ({total:,} samples):")
    for name, samples in packages.most_common(12):
        print(f"    {100 * samples / total:5.1f}%  {name}")
    print("  own time by function:")
    for frame, samples in own.most_common(top):
        print(f"    {100 * samples / total:5.1f}%  {frame[:150]}")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def cases(push: bool) -> list[tuple[str, str, str, int]]:
    """(name, path, body template, ids per request): CUSTOMERS becomes that many random customer ids."""
    features = json.dumps(FEATURES_1X10)
    body = '{"features": ' + features + ', "entities": {"customer_id": [CUSTOMERS]}}'
    out = [
        ("get-online-features 1 entity x 10 features", "/get-online-features", body, 1),
        ("get-online-features 100 entities x 10 features", "/get-online-features", body, 100),
    ]
    if push:
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
        row = (f'"event_timestamp": ["{stamp}"], "created": ["{stamp}"], "amount": [12.5], "category": ["grocery"], '
               '"transaction_id": [null]')
        out.append(("push 1 event (online and offline)", "/push",
                    '{"push_source_name": "transactions_push", "df": {"customer_id": [CUSTOMERS], ' + row + "}}", 1))
        columns = (("event_timestamp", f'"{stamp}"'), ("created", f'"{stamp}"'), ("amount", "12.5"),
                   ("category", '"grocery"'), ("transaction_id", "null"))
        many = ", ".join(f'"{k}": [{", ".join([v] * 1000)}]' for k, v in columns)
        out.append(("push 1,000 events (online and offline)", "/push",
                    '{"push_source_name": "transactions_push", "df": {"customer_id": [CUSTOMERS], ' + many + "}}",
                    1000))
    return out


def push_visibility(port: int, customers: int, count: int) -> dict[str, Any]:
    """From sending a one-event push to reading it back online: push, then read the customer's sum at once.

    Every read must already count the pushed event (the server acknowledges after the online write); the
    figure is the time from the push being sent to the read's answer, over ``count`` events, each for a new
    customer (so that no other push can change the sum meanwhile), run once the server is idle.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Content-Type": "application/json"}

    def call(path: str, body: dict[str, Any]) -> Any:
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {data}")
        return data

    def lifetime_spend(customer: int) -> float:  # unbounded: nothing leaves its window between two reads
        body = {"features": ["customer_spend:lifetime_spend"], "entities": {"customer_id": [customer]}}
        return float(call("/get-online-features", body)["results"][1]["values"][0])

    samples, stale = [], 0
    for i in range(count):
        customer = 10**9 + customers + i  # keys no load client pushes to
        before = lifetime_spend(customer)
        started = time.perf_counter()
        call("/push", {"push_source_name": "transactions_push", "df": {
            "customer_id": [customer], "event_timestamp": [datetime.now(UTC).isoformat()],
            "amount": [1.0], "category": ["grocery"], "transaction_id": [None]}})
        seen = lifetime_spend(customer)
        samples.append(time.perf_counter() - started)
        stale += abs(seen - (before + 1.0)) > 1e-6 * max(1.0, abs(before))
    conn.close()
    return {**latency_stats(samples), "stale_reads": stale}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--cluster", action="store_true", help="--redis-url names nodes of a Redis Cluster")
    parser.add_argument("--workers", default="1,2", help="comma-separated server worker counts (default 1,2)")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated concurrent connections (default 1,4,8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per case (default 5)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="requests per case at most")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--push", action="store_true", help="also POST /push, single events and batches of 1,000")
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the 8-client 1 x 10 case")
    parser.add_argument("--threadpool", action="store_true", help="server.threadpool: reads in worker threads")
    parser.add_argument("--out-dir", help="work dir (default: a temp dir, deleted at exit)")
    args = parser.parse_args(argv)

    print("command:", shlex.join([sys.executable, *sys.argv]))
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average {loadavg() or 'n/a'}; commit {git_commit()}; client {client}", flush=True)
    workdir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="fs_server_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"fsbench-server-{uuid.uuid4().hex[:8]}"
    summary: list[tuple[int, str, int, dict[str, Any]]] = []
    try:
        repo = workdir / "repo"
        make_repo(repo, args.customers, args.redis_url, prefix, args.cluster)
        check = {"features": FEATURES_1X10, "entities": {"customer_id": [1, 2, 3, 10**9]},
                 "now": datetime.now(UTC).replace(microsecond=0).isoformat()}
        for workers in (int(w) for w in args.workers.split(",")):
            server = Server(repo, workers, workdir / f"server-{workers}.log", args.threadpool)
            try:
                expected = expected_response(repo, check)  # now: earlier pushes changed values
                conn = http.client.HTTPConnection("127.0.0.1", server.port)
                conn.request("POST", "/get-online-features", json.dumps(check), {"Content-Type": "application/json"})
                same = json.loads(conn.getresponse().read()) == expected
                print(f"\n--workers {workers}: response equals the SDK's get_online_features: "
                      f"{'yes' if same else 'NO (!!! MISMATCH)'}", flush=True)
                for name, path, template, count in cases(args.push):
                    run_case(args, client, server, workers, (name, path, template, count), workdir, summary)
                if args.push:
                    server.wait_idle()  # load clients stop at the deadline; the server may still work on their pushes
                    seen = push_visibility(server.port, args.customers, 500)
                    print(f"  push 1 event, then read it online (1 client, 500 events): p50 {seen['p50'] * 1e3:.3f}"
                          f"  p95 {seen['p95'] * 1e3:.3f}  p99 {seen['p99'] * 1e3:.3f} ms from sending the push to "
                          f"the read's answer; reads that missed the event: {seen['stale_reads']}", flush=True)
            finally:
                server.stop()
        print_summary(summary)
    finally:
        deleted = delete_keys(args.redis_url, prefix, args.cluster)
        print(f"\ndeleted {deleted:,} Redis keys under {prefix}:")
        if not args.out_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_case(args: argparse.Namespace, client: str, server: Server, workers: int, case: tuple[str, str, str, int],
             workdir: Path, summary: list[tuple[int, str, int, dict[str, Any]]]) -> None:
    name, path, template, count = case
    heavy = count > 1
    for clients in (int(c) for c in args.clients.split(",")):
        run = run_wrk if client == "wrk" else run_python
        extra = (workdir,) if client == "wrk" else ()
        run(server.port, path, template, count, args.customers, clients, 1.0, 2_000, *extra)  # warm-up
        profile = None
        if args.profile and clients == 8 and name.endswith("1 entity x 10 features"):
            profile = start_profile(server.pids(), args.duration, workdir / f"profile-{workers}.txt")
        load, cpu = loadavg() or "n/a", server.cpu_seconds()
        figures = run(server.port, path, template, count, args.customers, clients, args.duration,
                      args.max_requests // (10 if heavy else 1), *extra)
        figures["load"] = load
        # Server CPU per request: what the server costs whatever else the machine runs (10 ms clock ticks).
        figures["cpu_us"] = (server.cpu_seconds() - cpu) / max(1, figures["requests"]) * 1e6
        summary.append((workers, name, clients, figures))
        print(f"  {name:48s} {clients} clients: {figures['rps']:8,.0f} req/s  p50 {figures['p50_ms']:6.3f}  "
              f"p95 {figures['p95_ms']:6.3f}  p99 {figures['p99_ms']:6.3f}  max {figures['max_ms']:7.2f} ms  "
              f"server CPU {figures['cpu_us']:,.0f} us/request ({figures['requests']:,} requests, "
              f"{figures['errors']} errors{_statuses(figures)}, load {load})", flush=True)
        if profile is not None:
            profile.wait(timeout=args.duration + 60)
            print_profile(workdir / f"profile-{workers}.txt")


def _statuses(figures: dict[str, Any]) -> str:
    return f" [non-2xx status:count {figures['statuses']}]" if figures.get("statuses") else ""


def print_summary(summary: list[tuple[int, str, int, dict[str, Any]]]) -> None:
    print("\n| workers | case | clients | req/s | p50 ms | p95 ms | p99 ms | server CPU us/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workers, name, clients, f in summary:
        print(f"| {workers} | {name} | {clients} | {f['rps']:,.0f} | {f['p50_ms']:.3f} | {f['p95_ms']:.3f} | "
              f"{f['p99_ms']:.3f} | {f['cpu_us']:,.0f} | {f['errors']} |")
    one = [f for w, n, c, f in summary if c == 1 and n.endswith("1 entity x 10 features")]
    eight = [f for w, n, c, f in summary if w == 2 and c == 8 and n.endswith("1 entity x 10 features")]
    if one:
        best = min(f["p99_ms"] for f in one)
        print(f"\ntarget 1 client p99 <= {TARGET_P99_MS_1_CLIENT} ms: {best:.3f} ms "
              f"({'met' if best <= TARGET_P99_MS_1_CLIENT else 'NOT met'})")
    if eight:
        rps = eight[0]["rps"]
        print(f"target >= {TARGET_RPS_8_CLIENTS:,} req/s with 8 clients, --workers 2: {rps:,.0f} req/s "
              f"({'met' if rps >= TARGET_RPS_8_CLIENTS else 'NOT met'})")


if __name__ == "__main__":
    sys.exit(main())
