"""Harness pieces shared by the benchmark scripts (offline.py, online.py, feast_compare.py, server.py, feast_side.py).

Standard library only: ``feast_side.py`` imports this module under the Feast virtualenv's Python, which has
neither this project's package nor its pinned dependencies. The scripts import it as ``common`` (a script's
own folder is the first entry of ``sys.path``, for its worker subprocesses too).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# The example repo's 10 features from 3 views (customer_spend 6, customer_habits 2, customer_profile 2):
# the "1 entity x 10 features" and "100 entities x 10 features" requests of online.py and server.py.
FEATURES_1X10 = [
    "customer_spend:avg_spend_90d",
    "customer_spend:spend_7d",
    "customer_spend:txn_count_30d",
    "customer_spend:max_spend_30d",
    "customer_spend:last_category",
    "customer_spend:lifetime_spend",
    "customer_habits:spend_stddev_30d",
    "customer_habits:txn_count_1h",
    "customer_profile:age",
    "customer_profile:segment",
]


# --------------------------------------------------------------------------
# The machine and the process
# --------------------------------------------------------------------------


def loadavg() -> str | None:
    """The 1/5/15-minute load averages, as /proc/loadavg writes them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def peak_rss_bytes() -> int | None:
    """This process's peak resident set size (VmHWM)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def source_fingerprint(package_dir: Path) -> str:
    """Short hash of a package's *.py files, to tie figures to the code that produced them."""
    h = hashlib.sha256()
    for f in sorted(package_dir.rglob("*.py")):
        h.update(str(f.relative_to(package_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def print_command_and_machine(versions: str) -> None:
    """The first two lines of a run: the exact command, then the machine and the given library versions."""
    print("command: " + shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; {versions}")


def out_dir_or_temp(out_dir: str | None, prefix: str) -> tuple[Path, str | None]:
    """(base dir, temp dir to delete at exit or None): ``--out-dir`` when given (kept), else a new temp dir."""
    if out_dir:
        base_dir = Path(out_dir).resolve()
        base_dir.mkdir(parents=True, exist_ok=True)
        return base_dir, None
    tmp = tempfile.mkdtemp(prefix=prefix)
    return Path(tmp), tmp


# --------------------------------------------------------------------------
# Worker subprocesses: one per step, so that peak RSS figures never mix
# --------------------------------------------------------------------------


def error_text(e: BaseException) -> str:
    """A worker's "error" field: the exception and its traceback (call inside the except block)."""
    return f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def finish_result(result: dict[str, Any]) -> dict[str, Any]:
    """Adds what every worker reports last: its peak RSS and the load average at its end."""
    result["vm_hwm_bytes"] = peak_rss_bytes()
    result["loadavg_end"] = loadavg()
    return result


def run_worker_process(cmd: list[str], result_path: Path, timeout: float, missing: dict[str, Any]) -> dict[str, Any]:
    """Runs ``cmd`` (a worker that writes its JSON result to ``result_path``), killed after ``timeout`` seconds,
    and returns that result plus ``ru_maxrss_bytes`` and ``process_seconds``; ``missing`` and an error when the
    worker wrote none."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    # os.wait4 gives this child's own rusage (ru_maxrss), unlike RUSAGE_CHILDREN which
    # is the max over every child waited for so far.
    status = ru = None
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            _, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - t0
    try:
        res: dict[str, Any] = json.loads(result_path.read_text())
    except (OSError, ValueError):
        res = {
            **missing,
            "error": f"worker exited with code {code} and no result"
            + (f" (killed after {timeout:.0f}s timeout)" if elapsed > timeout else ""),
        }
    res["ru_maxrss_bytes"] = ru.ru_maxrss * 1024 if ru is not None else None
    res["process_seconds"] = elapsed
    return res


# --------------------------------------------------------------------------
# Timing and latency figures
# --------------------------------------------------------------------------


def time_calls(fn: Callable[[Any], Any], args_list: Sequence[Any], max_calls: int, max_seconds: float) -> list[float]:
    """Seconds of each ``fn(args_list[i % len(args_list)])``: at most ``max_calls`` calls, and none started after
    the first one that started past ``max_seconds``."""
    out: list[float] = []
    deadline = time.perf_counter() + max_seconds
    pc = time.perf_counter
    for i in range(max_calls):
        a = args_list[i % len(args_list)]
        t = pc()
        fn(a)
        out.append(pc() - t)
        if t > deadline:
            break
    return out


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of ascending values, by numpy.percentile's default (linear) method and with
    its arithmetic, so that the figures are those numpy gives."""
    n = len(sorted_values)
    index = (n - 1) * (p / 100)
    if index >= n - 1:
        return float(sorted_values[-1])
    lo = math.floor(index)
    a, b = sorted_values[lo], sorted_values[lo + 1]
    t = index - lo
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def latency_stats(samples: Iterable[float]) -> dict[str, Any]:
    """Call count, total, mean, p50/p95/p99 and max of per-call seconds ({"calls": 0} without samples)."""
    a = sorted(float(x) for x in samples)
    if not a:
        return {"calls": 0}
    total = math.fsum(a)
    return {
        "calls": len(a),
        "total_s": total,
        "mean": total / len(a),
        "p50": percentile(a, 50),
        "p95": percentile(a, 95),
        "p99": percentile(a, 99),
        "max": a[-1],
    }


def entity_rows(ids: Iterable[Any], fmt: str) -> Any:
    """``entity_rows`` of a request for these customer ids: ``{"customer_id": [...]}`` ("columns") or
    ``[{"customer_id": id}, ...]`` ("rows")."""
    if fmt == "columns":
        return {"customer_id": [int(i) for i in ids]}
    return [{"customer_id": int(i)} for i in ids]


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


def fmt_bytes(n: float | None, kib: bool = True) -> str:
    """GiB, MiB, or (with ``kib``) KiB below 1 MiB."""
    if n is None:
        return "n/a"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if abs(n) >= 2**20 or not kib:
        return f"{n / 2**20:.0f} MiB"
    return f"{n / 2**10:.0f} KiB"


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.3f} s" if s < 100 else f"{s:.1f} s"


def fmt_ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.3f}"


def fmt_int(n: float | None) -> str:
    return "n/a" if n is None else f"{n:,.0f}"


def print_table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Left-aligned text columns (a missing cell prints empty)."""
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(widths[c]) for c in cols))
    print("-+-".join("-" * widths[c] for c in cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))


FINGERPRINTS: dict[str, list[str]] = {}  # feature_store source hash -> labels of the workers that imported it


def print_worker_header(label: str, r: dict[str, Any]) -> None:
    """A worker's block header (online.py, feast_compare.py): its error, load average, peak RSS and source hash."""
    if r.get("engine_fingerprint"):
        FINGERPRINTS.setdefault(r["engine_fingerprint"], []).append(label)
    print(f"\n  [{label}]")
    if r.get("error"):
        print(f"    ERROR: {r['error'].rstrip()}".replace("\n", "\n    "))
    print(f"    load average (1/5/15 min) at start: {r.get('loadavg_start')}, at end: {r.get('loadavg_end')}")
    print(
        f"    peak RSS: {fmt_bytes(r.get('vm_hwm_bytes'))} (VmHWM), "
        f"{fmt_bytes(r.get('ru_maxrss_bytes'))} (wait4 ru_maxrss); process {fmt_secs(r.get('process_seconds'))}"
    )
    if r.get("engine_fingerprint"):
        print(f"    engine: feature_store source sha256 {r['engine_fingerprint']}")


# --------------------------------------------------------------------------
# Redis: only the run's own keys (SCAN + UNLINK, never FLUSHDB)
# --------------------------------------------------------------------------


def scan_keys(client: Any, match: str | bytes, keep: Callable[[bytes], bool], delete: bool) -> int:
    """Count (and optionally UNLINK) the keys that SCAN MATCH ``match`` returns and ``keep`` accepts (belt and
    braces: never another run's keys). When deleting, the count is what UNLINK removed: SCAN may return a key
    twice while the db is rehashing (1M keys deleted read as 1,000,018)."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=match, count=1000):
        if not keep(key):
            continue
        if not delete:
            n += 1
            continue
        batch.append(key)
        if len(batch) >= 1000:
            n += int(client.unlink(*batch))
            batch = []
    if delete and batch:
        n += int(client.unlink(*batch))
    return n


def delete_cluster_prefix(url: str, prefix: str) -> int:
    """UNLINK the keys under ``prefix`` on every master of the Redis Cluster at ``url`` (nodes comma-separated),
    one key per command: a cluster refuses one command over keys of several slots."""
    import redis
    from redis.cluster import RedisCluster

    deleted = 0
    with RedisCluster.from_url(url.split(",")[0]) as nodes:
        for node in nodes.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as client:
                pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
                for key in client.scan_iter(match=pattern, count=1000):
                    if key.startswith(prefix.encode()):
                        deleted += int(client.unlink(key))
    return deleted


def scan_prefix(client: Any, prefix: str, delete: bool) -> int:
    """``scan_keys`` for the keys under ``prefix`` only (glob characters of the prefix escaped)."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    return scan_keys(client, pattern, lambda key: key.startswith(prefix.encode()), delete)
