"""Feast side by side, for ``benchmarks/online.py --feast-venv PATH``: runs and reports the Feast half.

online.py measures our stores and exports, per view, the values our store serves (its ``export`` worker, with
the columns and types of ``FEAST_VIEWS``); this module then runs ``benchmarks/feast_side.py`` with
``PATH/bin/python`` (Feast is never imported into our venv) on those values, prints Feast's figures, and builds
the ``ours vs Feast`` summary table. Imported by online.py, never run on its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from common import fmt_bytes, fmt_int, fmt_ms, fmt_secs, print_table, print_worker_header

# Every feature of the example repo's three views with the parquet/Feast type of the value our store serves,
# exported per view for Feast (which serves precomputed values only).
FEAST_VIEWS: dict[str, dict[str, str]] = {
    "customer_spend": {
        "avg_spend_90d": "float64",
        "spend_7d": "float64",
        "txn_count_30d": "int64",
        "max_spend_30d": "float64",
        "last_category": "string",
        "lifetime_spend": "float64",
    },
    "customer_habits": {"spend_stddev_30d": "float64", "categories_30d": "int64", "txn_count_1h": "int64"},
    "customer_profile": {"age": "int64", "segment": "string"},
}
FEAST_SIDE = Path(__file__).resolve().parent / "feast_side.py"
FEAST_REDIS_DB = 12  # Feast's keys go to their own db of the same Redis server


def check_feast(venv: str) -> tuple[str | None, str]:
    """(feast version or None, note): checked up front so that a broken venv is known before the long run."""
    py = Path(venv) / "bin" / "python"
    if not py.exists():
        return None, f"not available ({py} does not exist); no Feast comparison"
    try:
        out = subprocess.run(
            [str(py), "-c", "import feast; print(feast.__version__)"], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"not available ({e}); no Feast comparison"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"not available (feast is not importable with {py}: {last}); no Feast comparison"
    version = out.stdout.strip()
    return version, f"feast {version} with {py}: measured in this run on the same data ({FEAST_SIDE.name})"


def feast_redis(url: str, db: int) -> dict[str, Any]:
    """Host, port and password of our Redis URL, for Feast's connection string, with Feast's own db."""
    from urllib.parse import unquote, urlsplit

    u = urlsplit(url)
    return {
        "redis_host": u.hostname or "127.0.0.1",
        "redis_port": u.port or 6379,
        "redis_password": unquote(u.password) if u.password else None,
        "redis_db": db,
    }


def run_feast(
    size: str,
    export: dict[str, Any],
    customers: int,
    size_dir: Path,
    run_prefix: str,
    args,
    cases: dict[str, tuple[list[str], int]],
) -> dict:
    """feast_side.py with the Feast venv's python on our exported values and the read ``cases`` (name: (features,
    entities per call)); its JSON answer on stdout, Feast's output in a log file."""
    project = re.sub(r"\W", "_", f"{run_prefix}_{size}")  # Feast project names: letters, digits, underscores
    work_dir = size_dir / "feast"
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "work_dir": str(work_dir),
        "project": project,
        **feast_redis(args.redis_url, args.feast_redis_db),
        "views": export["views"],
        "event_time": export["event_time"],
        "customers": customers,
        "seed": args.seed,
        "calls": args.calls,
        "max_seconds": args.max_seconds,
        "warmup": args.warmup,
        "entity_format": args.entity_format,
        "cases": cases,
        "check_entities": args.check_entities,
        "keep_keys": args.keep_keys,
    }
    spec_path, log_path = work_dir / "spec.json", work_dir / "feast.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    py = Path(args.feast_venv) / "bin" / "python"
    print(
        f"\n  running {size}/feast: {py} {FEAST_SIDE.name} (Redis db {args.feast_redis_db}, project {project!r}; "
        f"Feast's output: {log_path}) ...",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        with log_path.open("w") as log:
            proc = subprocess.run(
                [str(py), str(FEAST_SIDE), str(spec_path)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=args.worker_timeout,
            )
        lines = proc.stdout.strip().splitlines()
        r: dict[str, Any] = json.loads(lines[-1]) if lines else {"error": f"no JSON answer (exit {proc.returncode})"}
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        r = {"error": f"{type(e).__name__}: {e}"}
    r["process_seconds"] = time.perf_counter() - t0
    r["project"], r["redis_db"] = project, args.feast_redis_db
    if r.get("error"):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:] if log_path.exists() else []
        r["error"] = r["error"].rstrip() + ("\nlast lines of Feast's output:\n" + "\n".join(tail) if tail else "")
    return r


def report_feast(size: str, r: dict[str, Any], customers: int) -> None:
    print_worker_header(f"{size}/feast {r.get('feast_version', '?')}", r)
    if r.get("cleanup_error"):
        print(f"    !!! cleanup of Feast's redis keys failed: {r['cleanup_error']}")
    if r.get("materialize_seconds") is None:
        return
    ents = r["entities_written"]
    rate = ents / r["materialize_seconds"] if r["materialize_seconds"] else None
    print(
        f"    feast apply (CLI): {fmt_secs(r.get('apply_seconds'))}; materialize: {fmt_secs(r['materialize_seconds'])}"
        f" for {ents:,} entity rows ({r['entities_by_view']}): {fmt_int(rate)} entity rows/s"
    )
    delta = r["redis_used_memory_after"] - r["redis_used_memory_before"]
    s = r.get("redis_memory_usage_sample") or {}
    mu = s.get("memory_usage_mean")
    print(
        f"    redis db {r.get('redis_db', FEAST_REDIS_DB)}: used_memory delta {fmt_bytes(delta)} "
        f"({fmt_int(delta / customers)} B/customer); {fmt_int(r.get('redis_keys'))} keys (one hash per customer, "
        f"all views); MEMORY USAGE sample: {s.get('keys_found')}/{s.get('keys_sampled')} keys found, mean "
        f"{fmt_int(mu)} B/key"
    )
    for case, c in (r.get("cases") or {}).items():
        for kind, label in (("to_dict", "get_online_features(...).to_dict()"), ("call_only", "call only")):
            st = c[kind]
            if st.get("calls"):
                print(
                    f"    {case}, {label}: {st['calls']:,} calls; ms p50 {fmt_ms(st['p50'])} p95 {fmt_ms(st['p95'])} "
                    f"p99 {fmt_ms(st['p99'])} mean {fmt_ms(st['mean'])} max {fmt_ms(st['max'])}"
                )
    c = r.get("check")
    if c:
        if c["mismatches"]:
            print(f"    !!! MISMATCH Feast vs the exported values: {c['mismatches']} of {c['values']}; examples:")
            for ex in c["examples"]:
                print(f"        {ex}")
        else:
            print(
                f"    check Feast serves exactly our exported values: OK ({c['entities']} customers incl. one "
                f"unknown, {c['values']} values)"
            )
    print(f"    deleted {fmt_int(r.get('redis_keys_deleted'))} Feast keys of project {r.get('project', '')!r}".rstrip())


def ratio(ours: float | None, feast: float | None) -> str:
    return "n/a" if not ours or not feast else f"{ours / feast:.2f}"


def feast_comparison_rows(size: str, r: dict[str, Any], mat_rows: list, lat_rows: list) -> list[dict[str, str]]:
    """One row per figure and per store of ours: ours, Feast, ours/Feast. For latencies Feast's figure is
    get_online_features(...).to_dict() (our response holds decoded values already), the call alone next to it.
    Latency rows: the cases Feast ran (``r["cases"]``, the read cases of online.py)."""
    rows: list[dict[str, str]] = []
    if r.get("materialize_seconds") is None:
        return rows

    def add(store: str, figure: str, ours: float | None, feast: float | None, fmt, **extra: str) -> None:
        rows.append(
            {
                "size": size,
                "ours": store,
                "figure": figure,
                "ours value": fmt(ours),
                "Feast": fmt(feast),
                "ours/Feast": ratio(ours, feast),
                **extra,
            }
        )

    f_rate = r["entities_written"] / r["materialize_seconds"]
    s = r.get("redis_memory_usage_sample") or {}
    f_b = (s["memory_usage_mean"] * s["keys_found"] / s["keys_sampled"]) if s.get("memory_usage_mean") else None
    for m in mat_rows:
        if m.get("size") != size or m.get("_rate") is None:
            continue
        st = m["store"]
        add(st, "materialize, entity rows/s (ours: online part)", m["_rate"], f_rate, fmt_int)
        add(st, "materialize, entity rows/s (ours: total, incl. tiles)", m["_total_rate"], f_rate, fmt_int)
        if m.get("_b_customer"):
            add(st, "Redis bytes/customer (MEMORY USAGE sample)", m["_b_customer"], f_b, fmt_int)
    for lat in lat_rows:
        if lat.get("size") != size or "_stats" not in lat:
            continue
        fc = (r.get("cases") or {}).get(lat["case"])
        if not fc:
            continue
        for q in ("p50", "p95", "p99"):
            ours, fd, fo = lat["_stats"][q], fc["to_dict"].get(q), fc["call_only"].get(q)
            add(
                lat["store"],
                f"{lat['case']}, {q} ms",
                ours,
                fd,
                fmt_ms,
                **{"Feast call only": fmt_ms(fo), "ours/Feast call only": ratio(ours, fo)},
            )
    return rows


def print_feast_summary(feast_redis_db: int, feast_rows: list[dict[str, str]]) -> None:
    """The ``ours vs Feast`` table of the summary, with what its figures are."""
    print(
        "\nours vs Feast, measured in this run on the same customers and values (Feast: Redis db "
        f"{feast_redis_db} of the same server; ratio ours/Feast: for rows/s higher is better for ours, "
        "for bytes and latencies lower is)"
    )
    if feast_rows:
        print_table(
            feast_rows,
            [
                "size",
                "ours",
                "figure",
                "ours value",
                "Feast",
                "ours/Feast",
                "Feast call only",
                "ours/Feast call only",
            ],
        )
    else:
        print("    no Feast figures (see the errors above)")
    print(
        "Feast latency: get_online_features(...).to_dict(), since our response already holds decoded Python "
        "values; 'call only' leaves Feast's values in protobuf. Feast materializes precomputed values (one row "
        "per customer and view); ours computes windowed tiles: its online part is the comparable write path."
    )
