"""Online bytes per entity of each aggregation function: one view per function over the example transactions,
materialized into a fresh SQLite online store, then the mean size of each view's stored value per entity.

    python benchmarks/function_bytes.py --customers 2000 --days 180
    python benchmarks/function_bytes.py --customers 2000 --days 60 --events-per-day 10

Every view uses a 30-day
window with hop 1 day, so each value holds 30-31 tiles of its partials (plus the current, partial hop).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from statistics import mean, median

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import FeatureStore
from feature_store.example import generate

FUNCTIONS = {
    "sum": 'Sum("amount", window="30d")',
    "count_distinct": 'CountDistinct("category", window="30d")',
    "last": 'Last("category", window="30d")',
    "last_k_5": 'LastK("category", k=5, window="30d")',
    "approx_count_distinct": 'ApproxCountDistinct("category", window="30d")',
    "approx_count_distinct_amount": 'ApproxCountDistinct("amount", window="30d")',
    "approx_percentile_p90": 'ApproxPercentile("amount", q=0.9, window="30d")',
}

REPO = '''
from feature_store import *

customer = Entity(name="customer", join_keys=["customer_id"])
transactions = FileSource(name="transactions", path="data/transactions.parquet",
                          timestamp_field="event_timestamp", created_timestamp_field="created")
'''


def write_repo(repo: Path) -> None:
    views = "".join(
        f'\nv_{name} = FeatureView(name="v_{name}", entities=[customer], source=transactions, '
        f'hop="1d", features=[{expression}])\n'
        for name, expression in FUNCTIONS.items()
    )
    (repo / "features.py").write_text(REPO + views)
    (repo / "feature_store.yaml").write_text(
        "project: bytes\nregistry: data/registry.db\noffline_store: {type: duckdb, path: data/offline.duckdb}\n"
        "online_store: {type: sqlite, path: data/online.db}\n")


def dense(path: Path, customers: int, days: int, per_day: float, end: datetime) -> None:
    """Replace the example's transactions by uniform ones: per_day events per customer per day."""
    rng = np.random.default_rng(1)
    rows = int(customers * days * per_day)
    span_us = days * 86_400_000_000
    end_us = int(end.timestamp() * 1_000_000)
    ts = end_us - rng.integers(1, span_us, rows)
    table = pa.table({
        "customer_id": rng.integers(0, customers, rows),
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "created": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "amount": np.round(rng.lognormal(3.5, 1.0, rows), 2),
        "category": pa.array([f"cat_{i}" for i in rng.integers(0, 40, rows)]),
    })
    pq.write_table(table, path)


def sizes_per_view(database: Path) -> dict[str, list[int]]:
    sizes: dict[str, list[int]] = {}
    with sqlite3.connect(database) as con:
        for field, size in con.execute("SELECT field, length(value) FROM fs_online_by_entity"):
            view = bytes(field).split(b":")[0].decode()
            sizes.setdefault(view, []).append(int(size))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--events-per-day", type=float, default=0.0,
                        help="uniform synthetic transactions instead of the example's (per customer per day)")
    args = parser.parse_args()
    print("command: python benchmarks/function_bytes.py " + " ".join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        data = generate(repo / "data", customers=args.customers, days=args.days)
        if args.events_per_day:
            dense(data.transactions, args.customers, args.days, args.events_per_day, data.end)
        write_repo(repo)
        store = FeatureStore(repo)
        store.apply()
        store.materialize(end=data.end - timedelta(hours=1))
        sizes = sizes_per_view(repo / "data" / "online.db")
        store.close()
        events = pq.read_table(repo / "data" / "transactions.parquet", columns=["customer_id", "event_timestamp"])
    per_30d = events.num_rows / args.customers / args.days * 30
    print(f"{events.num_rows:,} transactions, {per_30d:.1f} per customer per 30 days on average")
    print(f"{'function':32} {'entities':>9} {'mean B':>8} {'median B':>9} {'max B':>7}")
    for name in FUNCTIONS:
        values = sizes.get(f"v_{name}", [])
        if values:
            print(f"{name:32} {len(values):>9} {mean(values):>8.0f} {median(values):>9.0f} {max(values):>7}")


if __name__ == "__main__":
    main()
