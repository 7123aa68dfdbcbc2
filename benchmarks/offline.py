#!/usr/bin/env python
"""Offline (training-set) benchmark for the feature store.

Generates seeded synthetic transactions, then computes the same six
aggregation features for every entity row three ways and times them:

  * ``engine-raw``    - ``FeatureStore.get_historical_features(...).to_df()``
                        straight from the raw parquet events (no materialization)
  * ``engine-tiles``  - the same call after ``store.materialize()`` (per-hop tiles);
                        the materialization itself is timed as ``engine-materialize``
  * ``spark-raw``     - (``--engine spark``) the same call on the Spark engine (``local[2]``),
                        from raw events; the driver JVM's peak RSS is printed too
  * ``duckdb``        - one hand-written DuckDB range-join query
  * ``pandas``        - a plain per-row pandas/numpy implementation, run on a
                        sample of the query rows and extrapolated

Every method runs in its own subprocess (this script re-invoked with the
internal ``--_worker`` flag) so that peak RSS figures never mix. Results are
cross-checked: engine and DuckDB against pandas on the sampled rows, and
engine against DuckDB on all rows.

Feature semantics (the contract): for a query row (customer k, time t), a
feature with window W and hop H aggregates the events e of k with
``start(t) <= e.ts < t`` and ``e.created < t``, where
``start(t) = floor_H(t - W)`` (rounded down to a multiple of H since the Unix
epoch; no lower bound when W is None). Count counts rows (0 if none); Sum sums
non-null values (0 if none); Mean is null if there is no non-null value; Max is
null if none; Last is the value of the latest event by (ts, created) with a
non-null value, null if none.

Run ``python benchmarks/offline.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from common import (
    error_text,
    finish_result,
    fmt_bytes,
    fmt_secs,
    loadavg,
    out_dir_or_temp,
    print_command_and_machine,
    print_table,
    run_worker_process,
    source_fingerprint,
)

if TYPE_CHECKING:
    import pandas as pd

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

US = 1
SEC_US = 1_000_000
HOUR_US = 3600 * SEC_US
DAY_US = 24 * HOUR_US
HOP_US = HOUR_US

YEAR_START_US = 1_704_067_200 * SEC_US  # 2024-01-01T00:00:00Z
YEAR_END_US = 1_735_689_600 * SEC_US  # 2025-01-01T00:00:00Z

SIZES = {
    # name: (events, customers, query rows, pandas sample rows)
    "small": (1_000_000, 10_000, 100_000, 2_000),
    "large": (10_000_000, 100_000, 1_000_000, 5_000),
}

# Targets printed next to the figures.
TARGETS: dict[str, dict[str, Any]] = {
    "small": {"seconds": 1.0, "vs_duckdb": 0.5, "rss_gib": None},
    "large": {"seconds": 15.0, "vs_duckdb": None, "rss_gib": 4.0},
}

N_CATEGORIES = 20
GENERATOR_VERSION = 1  # bump when the data generator changes (invalidates cache)

# (name, kind, column, window in microseconds or None)
FEATURES = [
    ("avg_spend_90d", "mean", "amount", 90 * DAY_US),
    ("spend_7d", "sum", "amount", 7 * DAY_US),
    ("txn_count_30d", "count", None, 30 * DAY_US),
    ("max_spend_30d", "max", "amount", 30 * DAY_US),
    ("last_category", "last", "category", 30 * DAY_US),
    ("lifetime_spend", "sum", "amount", None),
]
FEATURE_NAMES = [f[0] for f in FEATURES]
FLOAT_FEATURES = [f[0] for f in FEATURES if f[1] != "last"]
STRING_FEATURES = [f[0] for f in FEATURES if f[1] == "last"]
VIEW_NAME = "customer_spend"
FEATURE_REFS = [f"{VIEW_NAME}:{n}" for n in FEATURE_NAMES]

METHODS = ["engine-raw", "engine-materialize", "engine-tiles", "spark-raw", "duckdb", "pandas"]
SPARK_YAML = ('offline_store: {{type: spark, master: "{master}", conf: {{spark.driver.memory: 2g, '
              'spark.sql.shuffle.partitions: "8"}}}}\n')


def floor_hop(x_us: int | np.ndarray, hop_us: int = HOP_US):
    """Round down to a multiple of the hop since the Unix epoch (floor, also for negatives)."""
    return (x_us // hop_us) * hop_us


# --------------------------------------------------------------------------
# Data generation
# --------------------------------------------------------------------------


def generate(size: str, seed: int, data_dir: Path) -> dict:
    """Write events.parquet, entity.parquet and entity_sample.parquet to data_dir.

    Reuses existing files when a matching meta.json is present.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    n_events, n_customers, n_query, n_sample = SIZES[size]
    meta = {
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "n_events": n_events,
        "n_customers": n_customers,
        "n_query": n_query,
        "n_sample": n_sample,
    }
    meta_path = data_dir / "meta.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
            if {k: old.get(k) for k in meta} == meta and all(
                (data_dir / f).exists() for f in ("events.parquet", "entity.parquet", "entity_sample.parquet")
            ):
                old["reused"] = True
                return old
        except (ValueError, OSError):
            pass
    data_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, n_events])

    # ---- customers: sparse int64 ids, skewed activity (exponential weights)
    customer_ids = rng.choice(np.arange(1, 10 * n_customers + 1, dtype=np.int64), n_customers, replace=False)
    weights = rng.gamma(1.0, 1.0, n_customers)
    weights /= weights.sum()

    # ---- events
    cust_idx = rng.choice(n_customers, n_events, p=weights)
    customer_id = customer_ids[cust_idx]
    ts = rng.integers(YEAR_START_US, YEAR_END_US, n_events, dtype=np.int64)
    # ~0.2% of events land exactly on an hour boundary (exercise the window lower bound)
    aligned = rng.random(n_events) < 0.002
    ts[aligned] = floor_hop(ts[aligned])
    # ~0.1% of events share (customer, ts) with another event (exercise the (ts, created) tie-break of Last)
    n_ties = n_events // 1000
    dst = rng.choice(n_events, n_ties, replace=False)
    src = rng.choice(n_events, n_ties, replace=False)
    customer_id[dst] = customer_id[src]
    ts[dst] = ts[src]
    created = ts + rng.integers(0, 600 * SEC_US + 1, n_events, dtype=np.int64)

    amount = np.round(rng.lognormal(3.0, 1.0, n_events), 2)
    amount_null = rng.random(n_events) < 0.01
    cat_p = 1.0 / np.arange(1, N_CATEGORIES + 1)
    cat_p /= cat_p.sum()
    cat_idx = rng.choice(N_CATEGORIES, n_events, p=cat_p).astype(np.int32)
    cat_null = rng.random(n_events) < 0.005
    cat_names = pa.array([f"cat_{i:02d}" for i in range(N_CATEGORIES)], pa.string())

    tz_ts = pa.timestamp("us", tz="UTC")
    events = pa.table(
        {
            "customer_id": pa.array(customer_id, pa.int64()),
            "event_timestamp": pa.array(ts, pa.int64()).cast(tz_ts),
            "created": pa.array(created, pa.int64()).cast(tz_ts),
            "amount": pa.array(amount, pa.float64(), mask=amount_null),
            "category": pa.DictionaryArray.from_arrays(pa.array(cat_idx, mask=cat_null), cat_names).dictionary_decode(),
        }
    )
    pq.write_table(events, data_dir / "events.parquet")
    del events

    # ---- entity rows (query rows)
    q_cust = customer_ids[rng.integers(0, n_customers, n_query)]
    q_ts = rng.integers(YEAR_START_US, YEAR_END_US, n_query, dtype=np.int64)
    perm = rng.permutation(n_query)
    pos = 0

    def take(frac: float) -> np.ndarray:
        nonlocal pos
        k = round(n_query * frac)
        out = perm[pos : pos + k]
        pos += k
        return out

    # 2% unknown customer ids (ids never used by any event)
    idx = take(0.02)
    q_cust[idx] = rng.integers(10 * n_customers + 1, 20 * n_customers, idx.size, dtype=np.int64)
    # 1%: t == ts of one of the customer's events (that event must be excluded: ts < t is strict)
    idx = take(0.01)
    ev = rng.integers(0, n_events, idx.size)
    q_cust[idx], q_ts[idx] = customer_id[ev], ts[ev]
    # 1%: t == created of one of the customer's events (excluded: created < t is strict)
    idx = take(0.01)
    ev = rng.integers(0, n_events, idx.size)
    q_cust[idx], q_ts[idx] = customer_id[ev], created[ev]
    # 1%: window lower bound - an hour-aligned event e and t = e.ts + W + [0, 2h), so that
    #     floor_H(t - W) is exactly e.ts (included) or e.ts + 1h (excluded)
    idx = take(0.01)
    aligned_idx = np.flatnonzero(aligned)
    ev = aligned_idx[rng.integers(0, aligned_idx.size, idx.size)]
    w = np.array([7, 30, 90], dtype=np.int64)[rng.integers(0, 3, idx.size)] * DAY_US
    q_cust[idx] = customer_id[ev]
    q_ts[idx] = ts[ev] + w + rng.integers(0, 2 * HOP_US, idx.size, dtype=np.int64)
    # 2% exact duplicates of other rows
    idx = take(0.02)
    src = rng.integers(0, n_query, idx.size)
    q_cust[idx], q_ts[idx] = q_cust[src], q_ts[src]

    entity = pa.table(
        {
            "customer_id": pa.array(q_cust, pa.int64()),
            "event_timestamp": pa.array(q_ts, pa.int64()).cast(tz_ts),
        }
    )
    pq.write_table(entity, data_dir / "entity.parquet")
    sample_idx = np.sort(rng.choice(n_query, n_sample, replace=False))
    pq.write_table(entity.take(pa.array(sample_idx)), data_dir / "entity_sample.parquet")

    meta["seconds"] = round(time.perf_counter() - t0, 2)
    meta["events_bytes"] = (data_dir / "events.parquet").stat().st_size
    meta_path.write_text(json.dumps(meta, indent=2))
    meta["reused"] = False
    return meta


# --------------------------------------------------------------------------
# Output normalization / comparison
# --------------------------------------------------------------------------


def normalize(df):
    """Return a pandas DataFrame with customer_id int64, ts_us int64, float64 numeric
    features (NaN = null) and object string features (None = null)."""
    import pandas as pd

    out = pd.DataFrame()
    out["customer_id"] = pd.to_numeric(df["customer_id"]).astype("int64").to_numpy()
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    out["ts_us"] = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "us")).astype("int64").to_numpy()
    for name in FLOAT_FEATURES:
        out[name] = pd.to_numeric(df[name]).astype("float64").to_numpy(na_value=np.nan)
    for name in STRING_FEATURES:
        vals = df[name].astype(object).to_numpy()
        out[name] = np.array(
            [None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else str(v) for v in vals],
            dtype=object,
        )
    return out


def compare(expected: pd.DataFrame, actual: pd.DataFrame, label: str, max_show: int = 5) -> dict[str, Any]:
    """Compare normalized frames. ``expected`` must have unique (customer_id, ts_us)
    keys; every expected key must be present in ``actual`` and all actual rows with
    that key must carry the expected values."""
    import pandas as pd

    exp = expected.drop_duplicates(["customer_id", "ts_us"])
    act = actual[actual.set_index(["customer_id", "ts_us"]).index.isin(exp.set_index(["customer_id", "ts_us"]).index)]
    merged = exp.merge(act, on=["customer_id", "ts_us"], how="left", suffixes=("_exp", "_act"), indicator=True)
    missing = int((merged["_merge"] == "left_only").sum())
    bad_rows = np.zeros(len(merged), dtype=bool)
    per_feature = {}
    for name in FLOAT_FEATURES:
        a = merged[f"{name}_exp"].to_numpy(np.float64)
        b = merged[f"{name}_act"].to_numpy(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        close = np.abs(a - b) <= 1e-9 * np.maximum(np.abs(a), np.abs(b))
        bad = ~(both_nan | close)
        per_feature[name] = int(bad.sum())
        bad_rows |= bad
    for name in STRING_FEATURES:
        sa, sb = merged[f"{name}_exp"], merged[f"{name}_act"]
        a_null, b_null = sa.isna().to_numpy(), sb.isna().to_numpy()
        same = (sa.astype(object).to_numpy() == sb.astype(object).to_numpy()) & ~a_null & ~b_null
        bad = ~((a_null & b_null) | same)
        per_feature[name] = int(bad.sum())
        bad_rows |= bad
    n_bad = int(bad_rows.sum())
    examples = []
    if n_bad:
        cols = ["customer_id", "ts_us"] + [f"{n}_{s}" for n in FEATURE_NAMES for s in ("exp", "act")]
        sub = merged.loc[bad_rows, cols].head(max_show)
        for rec in sub.to_dict("records"):
            rec["event_timestamp"] = str(pd.Timestamp(rec["ts_us"], unit="us", tz="UTC"))
            examples.append(rec)
    return {
        "label": label,
        "keys_checked": len(exp),
        "rows_checked": len(merged),
        "missing_keys": missing,
        "mismatched_rows": n_bad,
        "per_feature": per_feature,
        "examples": examples,
        "ok": missing == 0 and n_bad == 0,
    }


# --------------------------------------------------------------------------
# Method implementations (run inside worker subprocesses)
# --------------------------------------------------------------------------


def duckdb_sql(events_path: str, entity_path: str) -> str:
    """One range-join query: entity rows x events of the same customer before t
    (the widest window is unbounded), conditional aggregates per feature."""
    s = {name: w for name, _, _, w in FEATURES}
    return f"""
WITH q AS (
    SELECT file_row_number AS qid, customer_id, event_timestamp,
           epoch_us(event_timestamp) AS t
    FROM read_parquet('{entity_path}', file_row_number = true)
), qb AS (
    -- window starts floor_H(t - W); all values are positive so // is a floor
    SELECT *,
           ((t - {s["avg_spend_90d"]}) // {HOP_US}) * {HOP_US} AS s_90d,
           ((t - {s["spend_7d"]}) // {HOP_US}) * {HOP_US} AS s_7d,
           ((t - {s["txn_count_30d"]}) // {HOP_US}) * {HOP_US} AS s_30d
    FROM q
), e AS (
    SELECT customer_id, epoch_us(event_timestamp) AS ts, epoch_us(created) AS cr, amount, category
    FROM read_parquet('{events_path}')
)
SELECT qb.customer_id,
       any_value(qb.event_timestamp) AS event_timestamp,
       avg(e.amount) FILTER (WHERE e.ts >= qb.s_90d) AS avg_spend_90d,
       coalesce(sum(e.amount) FILTER (WHERE e.ts >= qb.s_7d), 0.0) AS spend_7d,
       count(e.ts) FILTER (WHERE e.ts >= qb.s_30d) AS txn_count_30d,
       max(e.amount) FILTER (WHERE e.ts >= qb.s_30d) AS max_spend_30d,
       arg_max(e.category, struct_pack(ts := e.ts, cr := e.cr))
           FILTER (WHERE e.ts >= qb.s_30d AND e.category IS NOT NULL) AS last_category,
       coalesce(sum(e.amount), 0.0) AS lifetime_spend
FROM qb
LEFT JOIN e ON e.customer_id = qb.customer_id AND e.ts < qb.t AND e.cr < qb.t
GROUP BY qb.qid, qb.customer_id
"""


def pandas_prepare(events_path: str):
    """Load events, sort by (customer, ts, created), index customers."""
    import pandas as pd

    ev = pd.read_parquet(events_path)
    epoch = pd.Timestamp(0, tz="UTC")
    one_us = pd.Timedelta(1, "us")
    cust = ev["customer_id"].to_numpy(np.int64)
    ts = ((ev["event_timestamp"] - epoch) // one_us).to_numpy(np.int64)
    cr = ((ev["created"] - epoch) // one_us).to_numpy(np.int64)
    order = np.lexsort((cr, ts, cust))  # sort by customer, then ts, then created
    cat_codes, cat_values = pd.factorize(ev["category"])  # code -1 = null
    cust, ts, cr = cust[order], ts[order], cr[order]
    amount = ev["amount"].to_numpy(np.float64, na_value=np.nan)[order]
    cat_codes = cat_codes[order]
    ucust, first = np.unique(cust, return_index=True)
    last = np.append(first[1:], len(cust))
    bounds = {int(c): (int(a), int(b)) for c, a, b in zip(ucust, first, last, strict=False)}
    return {
        "ts": ts,
        "cr": cr,
        "amount": amount,
        "cat_codes": cat_codes,
        "cat_values": np.asarray(cat_values, dtype=object),
        "bounds": bounds,
    }


def pandas_features(prep: dict[str, Any], entity: pd.DataFrame) -> pd.DataFrame:
    """Plain per-row evaluation of the contract."""
    import pandas as pd

    epoch = pd.Timestamp(0, tz="UTC")
    q_cust = entity["customer_id"].to_numpy(np.int64)
    q_t = ((entity["event_timestamp"] - epoch) // pd.Timedelta(1, "us")).to_numpy(np.int64)
    rows = []
    for k, t in zip(q_cust, q_t, strict=False):
        row: dict[str, Any] = {}
        a, b = prep["bounds"].get(int(k), (0, 0))
        ts = prep["ts"][a:b]
        hi = np.searchsorted(ts, t, side="left")  # events with ts < t
        for name, kind, _col, window in FEATURES:
            lo = 0 if window is None else np.searchsorted(ts, floor_hop(t - window), side="left")
            sl = slice(a + lo, a + hi)
            keep = prep["cr"][sl] < t  # only events already created at t
            if kind == "count":
                row[name] = float(keep.sum())
                continue
            if kind == "last":
                codes = prep["cat_codes"][sl][keep & (prep["cat_codes"][sl] >= 0)]  # sorted by (ts, created)
                row[name] = prep["cat_values"][codes[-1]] if codes.size else None
                continue
            vals = prep["amount"][sl][keep]
            vals = vals[~np.isnan(vals)]
            if kind == "sum":
                row[name] = float(vals.sum()) if vals.size else 0.0
            elif kind == "mean":
                row[name] = float(vals.mean()) if vals.size else np.nan
            elif kind == "max":
                row[name] = float(vals.max()) if vals.size else np.nan
        rows.append(row)
    out = pd.DataFrame(rows, columns=FEATURE_NAMES)
    out.insert(0, "event_timestamp", entity["event_timestamp"].to_numpy())
    out.insert(0, "customer_id", q_cust)
    return out


def engine_objects(events_path: str):
    from datetime import timedelta

    from feature_store import Count, Entity, FeatureView, FileSource, Last, Max, Mean, Sum

    customer = Entity(name="customer", join_keys=["customer_id"])
    tx = FileSource(
        name="transactions",
        path=events_path,
        timestamp_field="event_timestamp",
        created_timestamp_field="created",
    )
    view = FeatureView(
        name=VIEW_NAME,
        entities=[customer],
        source=tx,
        features=[
            Mean("amount", window=timedelta(days=90), name="avg_spend_90d"),
            Sum("amount", window=timedelta(days=7), name="spend_7d"),
            Count(window=timedelta(days=30), name="txn_count_30d"),
            Max("amount", window=timedelta(days=30), name="max_spend_30d"),
            Last("category", window=timedelta(days=30), name="last_category"),
            Sum("amount", window=None, name="lifetime_spend"),
        ],
        hop=timedelta(hours=1),
    )
    return [customer, tx, view]


def make_repo(repo: Path, spark: str | None = None) -> None:
    """spark: the Spark master of the engine, or None for DuckDB."""
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text("project: bench\n" + (SPARK_YAML.format(master=spark) if spark else ""))


def jvm_peak_bytes() -> int | None:
    """Peak RSS (VmHWM) of this process's java child: Spark's driver JVM (in local mode also its executors)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if f"PPid:\t{os.getpid()}\n" in status and "Name:\tjava" in status:
                return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024
        except (OSError, StopIteration, ValueError):
            continue
    return None


def run_worker(args) -> int:
    """Executed in a child process: run one method, write a JSON result."""
    data_dir = Path(args._data_dir)
    work_dir = Path(args._work_dir)
    events_path = str((data_dir / "events.parquet").resolve())
    entity_path = str((data_dir / "entity.parquet").resolve())
    sample_path = str((data_dir / "entity_sample.parquet").resolve())
    method = args._worker
    df: Any = None
    entity: Any = None
    result: dict[str, Any] = {"method": method, "runs": [], "error": None, "loadavg_start": loadavg()}
    out_path = work_dir / f"{method}.parquet"
    try:
        import pandas as pd

        if method == "duckdb":
            import duckdb

            con = duckdb.connect()
            result["threads"] = con.sql("SELECT current_setting('threads')").fetchall()[0][0]
            sql = duckdb_sql(events_path, entity_path)
            df = None
            for _ in range(args.repeat):
                del df
                t0 = time.perf_counter()
                df = con.sql(sql).df()
                result["runs"].append(time.perf_counter() - t0)
            result["rows_out"] = len(df)
            normalize(df).to_parquet(out_path)

        elif method == "pandas":
            t0 = time.perf_counter()
            prep = pandas_prepare(events_path)
            result["setup_seconds"] = time.perf_counter() - t0
            entity = pd.read_parquet(sample_path)
            t0 = time.perf_counter()
            df = pandas_features(prep, entity)
            result["runs"].append(time.perf_counter() - t0)
            result["rows_in"] = len(entity)
            result["rows_out"] = len(df)
            normalize(df).to_parquet(out_path)

        elif method in ("engine-raw", "engine-materialize", "engine-tiles", "spark-raw"):
            import feature_store
            from feature_store import FeatureStore

            result["engine_version"] = getattr(feature_store, "__version__", None)
            result["engine_fingerprint"] = source_fingerprint(Path(feature_store.__file__).parent)
            repo = work_dir.parent / {"engine-raw": "repo_raw", "spark-raw": "repo_spark"}.get(method, "repo_tiles")
            if method in ("engine-raw", "engine-materialize", "spark-raw"):
                make_repo(repo, spark=args.spark_master if method == "spark-raw" else None)
                t0 = time.perf_counter()
                store = FeatureStore(str(repo))
                store.apply(engine_objects(events_path))
                result["apply_seconds"] = time.perf_counter() - t0
            else:
                store = FeatureStore(str(repo))
            if method == "engine-materialize":
                t0 = time.perf_counter()
                mat = store.materialize()
                result["runs"].append(time.perf_counter() - t0)
                result["materialize_result"] = repr(mat)[:2000]
                result["repo_data_bytes"] = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
            else:
                entity = pd.read_parquet(entity_path) if args.entity_input == "dataframe" else entity_path
                df = None
                for _ in range(args.repeat):
                    del df
                    t0 = time.perf_counter()
                    df = store.get_historical_features(entity, features=FEATURE_REFS).to_df()
                    result["runs"].append(time.perf_counter() - t0)
                result["rows_out"] = len(df)
                if method == "spark-raw":
                    result["jvm_hwm_bytes"] = jvm_peak_bytes()
                result["columns_out"] = [str(c) for c in df.columns]
                result["dtypes_out"] = {str(c): str(t) for c, t in df.dtypes.items()}
                try:
                    normalize(df).to_parquet(out_path)
                except Exception as e:
                    result["error"] = f"could not normalize engine output: {e!r}\n{traceback.format_exc()}"
            if hasattr(store, "close"):
                store.close()
        else:
            raise ValueError(f"unknown method {method}")
    except BaseException as e:
        result["error"] = error_text(e)
    Path(args._result).write_text(json.dumps(finish_result(result), indent=2, default=str))
    return 0


# --------------------------------------------------------------------------
# Parent: orchestration and reporting
# --------------------------------------------------------------------------


def spawn_worker(
    method: str, args: argparse.Namespace, data_dir: Path, work_dir: Path, timeout: float
) -> dict[str, Any]:
    result_path = work_dir / f"{method}.json"
    for stale in (result_path, work_dir / f"{method}.parquet"):
        if stale.exists():
            stale.unlink()
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        method,
        "--_data-dir",
        str(data_dir),
        "--_work-dir",
        str(work_dir),
        "--_result",
        str(result_path),
        "--repeat",
        str(args.repeat),
        "--entity-input",
        args.entity_input,
        "--spark-master",
        args.spark_master,
    ]
    return run_worker_process(cmd, result_path, timeout, {"method": method, "runs": []})


def load_norm(path: Path):
    import pandas as pd

    return pd.read_parquet(path) if path.exists() else None


def print_check(c: dict) -> None:
    if c["ok"]:
        print(f"    check {c['label']}: OK ({c['keys_checked']} keys, {c['rows_checked']} rows compared)")
        return
    print(
        f"    !!! MISMATCH {c['label']}: {c['mismatched_rows']} mismatched rows, {c['missing_keys']} missing keys "
        f"out of {c['keys_checked']} keys; per feature: {c['per_feature']}"
    )
    for ex in c["examples"]:
        print(f"        {ex}")


def bench_size(size: str, args, base_dir: Path, table: list) -> None:
    import pandas as pd

    n_events, n_customers, n_query, n_sample = SIZES[size]
    data_dir = base_dir / size
    print(
        f"\n=== size={size}: {n_events:,} events / {n_customers:,} customers / {n_query:,} query rows "
        f"(pandas sample {n_sample:,}) ===",
        flush=True,
    )
    meta = generate(size, args.seed, data_dir)
    print(
        f"  data: {data_dir} ({'reused' if meta.get('reused') else 'generated'} in {meta.get('seconds')} s, "
        f"events.parquet {fmt_bytes(meta.get('events_bytes'), kib=False)})",
        flush=True,
    )
    work_dir = data_dir / "results"
    work_dir.mkdir(exist_ok=True)

    methods = [m for m in METHODS if m in args.methods]
    if "engine-tiles" in methods and "engine-materialize" not in methods:
        methods.insert(methods.index("engine-tiles"), "engine-materialize")
    results: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m == "engine-tiles" and results.get("engine-materialize", {}).get("error"):
            results[m] = {"method": m, "runs": [], "error": "skipped: materialize failed"}
            continue
        print(f"  running {m} ...", flush=True)
        results[m] = spawn_worker(m, args, data_dir, work_dir, args.worker_timeout)

    # --- correctness
    pandas_out = (
        load_norm(work_dir / "pandas.parquet") if "pandas" in results and not results["pandas"]["error"] else None
    )
    duck_out = (
        load_norm(work_dir / "duckdb.parquet") if "duckdb" in results and not results["duckdb"]["error"] else None
    )
    checks: dict[str, list] = {m: [] for m in results}
    for m in ("engine-raw", "engine-tiles", "spark-raw", "duckdb"):
        if m not in results or results[m]["error"]:
            continue
        out = load_norm(work_dir / f"{m}.parquet")
        if out is None:
            continue
        if len(out) != n_query:
            checks[m].append(
                {
                    "label": f"{m} row count",
                    "ok": False,
                    "keys_checked": n_query,
                    "rows_checked": len(out),
                    "missing_keys": 0,
                    "mismatched_rows": abs(len(out) - n_query),
                    "per_feature": {"rows_out": len(out), "rows_expected": n_query},
                    "examples": [],
                }
            )
        if m != "duckdb" and len(out) == n_query:
            ent = normalize(pd.read_parquet(data_dir / "entity.parquet").assign(**{n: np.nan for n in FEATURE_NAMES}))
            same = (ent["customer_id"].to_numpy() == out["customer_id"].to_numpy()) & (
                ent["ts_us"].to_numpy() == out["ts_us"].to_numpy()
            )
            results[m]["order_preserved"] = bool(same.all())
        if pandas_out is not None:
            checks[m].append(compare(pandas_out, out, f"{m} vs pandas (sample)"))
        if m != "duckdb" and duck_out is not None:
            checks[m].append(compare(duck_out, out, f"{m} vs duckdb (all rows)"))

    # --- report
    duck_median = None
    if "duckdb" in results and results["duckdb"]["runs"]:
        duck_median = statistics.median(results["duckdb"]["runs"])
    tgt = TARGETS[size]
    for m, r in results.items():
        runs = r.get("runs") or []
        med = statistics.median(runs) if runs else None
        rss = r.get("vm_hwm_bytes") or r.get("ru_maxrss_bytes")
        print(f"\n  [{size}] {m}")
        if r.get("error"):
            print(f"    ERROR: {r['error'].rstrip()}".replace("\n", "\n    "))
        note = ""
        rows_per_s = None
        extrap = None
        if m == "pandas" and med:
            rows_per_s = r["rows_in"] / med
            extrap = r.get("setup_seconds", 0) + n_query / rows_per_s
            note = (
                f"sample of {r['rows_in']:,} rows; setup (load+sort) {fmt_secs(r.get('setup_seconds'))}; "
                f"EXTRAPOLATED full {n_query:,} rows: {fmt_secs(extrap)}"
            )
        elif m == "engine-materialize":
            note = "materialize() time, not a query"
        elif med:
            rows_per_s = n_query / med
        if runs:
            print(f"    wall: median {fmt_secs(med)}; runs: " + ", ".join(f"{x:.3f}" for x in runs))
        if rows_per_s:
            print(f"    query rows/s: {rows_per_s:,.0f}" + (" (extrapolated from sample)" if m == "pandas" else ""))
        if note:
            print(f"    note: {note}")
        if r.get("loadavg_start"):
            print(f"    load average (1/5/15 min) at start: {r['loadavg_start']}, at end: {r.get('loadavg_end')}")
        if r.get("engine_fingerprint"):
            print(f"    engine: feature_store {r.get('engine_version')}, source sha256 {r['engine_fingerprint']}")
        if r.get("apply_seconds") is not None:
            print(f"    apply(): {fmt_secs(r['apply_seconds'])}")
        print(
            f"    peak RSS: {fmt_bytes(r.get('vm_hwm_bytes'), kib=False)} (VmHWM), "
            f"{fmt_bytes(r.get('ru_maxrss_bytes'), kib=False)} (wait4 ru_maxrss)"
        )
        if r.get("jvm_hwm_bytes") is not None:
            jvm = fmt_bytes(r["jvm_hwm_bytes"], kib=False)
            print(f"    Spark driver JVM peak RSS: {jvm} (local mode: the executors run in it too)")
        if r.get("rows_out") is not None:
            print(f"    rows out: {r['rows_out']:,}")
        if r.get("order_preserved") is not None:
            print(f"    output rows in entity_df order: {'yes' if r['order_preserved'] else 'no'} (informational)")
        if r.get("dtypes_out"):
            print(f"    output dtypes: {r['dtypes_out']}")
            count_dtype = r["dtypes_out"].get("txn_count_30d", "")
            if not count_dtype.lower().startswith(("int", "uint")):
                print(
                    f"    !!! DTYPE: txn_count_30d is {count_dtype!r}, expected an integer dtype "
                    "(values still compared)"
                )
        if r.get("repo_data_bytes") is not None:
            print(f"    repo size after materialize: {fmt_bytes(r['repo_data_bytes'], kib=False)}")
        for c in checks.get(m, []):
            print_check(c)

        verdict = ""
        if m in ("engine-raw", "engine-tiles") and med:
            parts = []
            ok_t = med < tgt["seconds"]
            parts.append(f"<{tgt['seconds']:g}s {'PASS' if ok_t else 'FAIL'}")
            if tgt["vs_duckdb"] and duck_median:
                ratio = med / duck_median
                parts.append(
                    f"{ratio:.2f}x duckdb (<= {tgt['vs_duckdb']:g}) {'PASS' if ratio <= tgt['vs_duckdb'] else 'FAIL'}"
                )
            if tgt["rss_gib"] and rss:
                parts.append(f"RSS<{tgt['rss_gib']:g}GiB {'PASS' if rss < tgt['rss_gib'] * 2**30 else 'FAIL'}")
            verdict = "; ".join(parts)
            print(f"    target: {verdict}")
        cks = checks.get(m, [])
        check_str = (
            "-"
            if not cks
            else (
                "OK"
                if all(c["ok"] for c in cks)
                else "MISMATCH(" + ",".join(str(c["mismatched_rows"] + c["missing_keys"]) for c in cks) + ")"
            )
        )
        if r.get("error"):
            check_str = "ERROR"
        table.append(
            {
                "size": size,
                "method": m,
                "median": fmt_secs(med) if m != "pandas" else f"~{fmt_secs(extrap)}*",
                "runs": ", ".join(f"{x:.2f}" for x in runs) if runs else "-",
                "rows/s": f"{rows_per_s:,.0f}" + ("*" if m == "pandas" else "") if rows_per_s else "-",
                "peak RSS": fmt_bytes(rss, kib=False),
                "check": check_str,
                "target": verdict or "-",
            }
        )
    sys.stdout.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=["small", "large", "both"], default="small")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--out-dir",
        default=None,
        help="directory for the generated parquet and results (default: a temp dir, deleted at exit; "
        "an explicit dir is kept and its data reused when size/seed match)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method (median reported)")
    p.add_argument(
        "--methods",
        default=",".join(m for m in METHODS if m not in ("engine-materialize", "spark-raw")),
        help="comma-separated subset of: " + ",".join(METHODS) + " (engine-tiles implies engine-materialize)",
    )
    p.add_argument(
        "--entity-input",
        choices=["path", "dataframe"],
        default="path",
        help="pass the entity rows to the engine as the parquet path (default) or a pandas DataFrame "
        "(loaded outside the timed region)",
    )
    p.add_argument(
        "--worker-timeout", type=float, default=3600.0, help="seconds before a method's subprocess is killed"
    )
    p.add_argument("--engine", choices=["duckdb", "spark"], default="duckdb",
                   help="spark: also time the Spark engine (spark-raw, local[2]) beside DuckDB's (engine-raw) and the "
                   "hand-written DuckDB query, on the same data")
    p.add_argument("--spark-master", default="local[2]",
                   help="the Spark engine's master for spark-raw (e.g. spark://127.0.0.1:7077: "
                   "benchmarks/spark_cluster.py starts a standalone cluster and passes it)")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    p.add_argument("--_data-dir", help=argparse.SUPPRESS)
    p.add_argument("--_work-dir", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        return run_worker(args)

    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.engine == "spark" and "spark-raw" not in args.methods:
        args.methods.append("spark-raw")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods: {sorted(unknown)}")

    try:
        import duckdb
        import pandas
        import pyarrow

        versions = (
            f"duckdb {duckdb.__version__}, pandas {pandas.__version__}, "
            f"pyarrow {pyarrow.__version__}, numpy {np.__version__}"
        )
    except ImportError as e:
        versions = str(e)
    print_command_and_machine(versions)
    print(f"seed={args.seed} repeat={args.repeat} entity-input={args.entity_input} methods={','.join(args.methods)}")

    base_dir, tmp = out_dir_or_temp(args.out_dir, "fs_bench_")
    print(f"out-dir: {base_dir}")

    table: list = []
    try:
        for size in ["small", "large"] if args.size == "both" else [args.size]:
            bench_size(size, args, base_dir, table)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print("\n=== summary ===")
    print_table(table, ["size", "method", "median", "runs", "rows/s", "peak RSS", "check", "target"])
    print(
        "* pandas: timed on a sample of query rows; 'median' is the extrapolated full-run time "
        "(setup + rows/sample-rate), rows/s is the per-row loop rate."
    )
    print(
        "Targets: small < 1 s and <= 0.5x hand-written DuckDB; large < 15 s with peak RSS < 4 GiB "
        "(engine rows). Peak RSS = VmHWM of the method's own subprocess."
    )
    if any(r["check"].startswith("MISMATCH") for r in table):
        print("!!! MISMATCH: at least one method disagrees with the reference; see details above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
