"""A seeded generator of realistic example data for the example repo (transactions, profiles, labels)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = np.array([
    "groceries", "restaurants", "fuel", "travel", "electronics", "clothing", "pharmacy", "entertainment",
    "utilities", "home", "online_services", "gaming",
])
SEGMENTS = np.array(["student", "young_professional", "family", "retired", "business"])


@dataclass(frozen=True)
class ExampleData:
    transactions: Path
    profiles: Path
    entity_rows: Path
    n_transactions: int
    n_customers: int
    start: datetime  # the data covers [start, end)
    end: datetime


def default_end() -> datetime:
    """The current hour (UTC, rounded down): the data is as fresh as a real export, so that the features of
    windows ending now (online, ``verify``) hold values, and the same within the hour."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def generate(data_dir: Path, customers: int = 2_000, days: int = 180, seed: int = 7,
             end: datetime | None = None) -> ExampleData:
    """Write transactions.parquet, profiles.parquet and entity_rows.parquet into data_dir.

    The data covers the ``days`` before ``end`` (default: ``default_end()``, the current hour), as exported
    at ``end``: every event happened, and every row landed (its ``created`` time), before it. A naive ``end``
    is UTC. Every timestamp is relative to ``end``: the same seed and end give the same files, and the same
    seed with another end gives the same data shifted in time.
    """
    rng = np.random.default_rng(seed)
    end = end or default_end()
    end = (end if end.tzinfo else end.replace(tzinfo=UTC)).astimezone(UTC)
    span_us = days * 86_400_000_000
    end_us = (end - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)  # exact: no float seconds
    start_us = end_us - span_us
    # One generator drawn in a fixed order (transactions, then profiles, then rows): the same seed, the same data.
    segment = rng.integers(0, len(SEGMENTS), customers)
    transactions = _transactions(rng, segment, days, start_us, end_us)
    profiles = _profiles(rng, segment, start_us, span_us)
    entity_rows = _entity_rows(rng, customers, start_us, span_us)

    data_dir.mkdir(parents=True, exist_ok=True)
    paths = ExampleData(data_dir / "transactions.parquet", data_dir / "profiles.parquet",
                        data_dir / "entity_rows.parquet", len(transactions), customers, end - timedelta(days=days), end)
    transactions.to_parquet(paths.transactions, index=False)
    profiles.to_parquet(paths.profiles, index=False)
    entity_rows.to_parquet(paths.entity_rows, index=False)
    return paths


def _transactions(rng: np.random.Generator, segment: np.ndarray, days: int, start_us: int,
                  end_us: int) -> pd.DataFrame:
    customers, span_us = len(segment), end_us - start_us
    activity = rng.gamma(shape=1.5, scale=0.8, size=customers) * days / 10  # transactions per customer
    counts = rng.poisson(np.maximum(activity, 0.2)) + 1
    customer_id = np.repeat(np.arange(1, customers + 1, dtype=np.int64), counts)
    n = len(customer_id)
    # Spend grows with the segment's means; a few customers are heavy spenders.
    base_spend = np.array([15.0, 45.0, 60.0, 30.0, 120.0])[segment] * rng.lognormal(0, 0.4, customers)
    amount = np.round(rng.lognormal(np.log(np.repeat(base_spend, counts)), 0.6), 2)
    amount[rng.random(n) < 0.01] = np.nan  # declined or unknown amounts
    ts_us = start_us + rng.integers(0, span_us, n)
    delay_us = rng.exponential(90, n).astype(np.int64) * 1_000_000  # seconds until the row lands
    favourite = rng.integers(0, len(CATEGORIES), customers)
    category = np.where(rng.random(n) < 0.5, np.repeat(favourite, counts), rng.integers(0, len(CATEGORIES), n))
    landed = ts_us + delay_us < end_us  # an export at `end` holds only the rows that had landed by then
    return pd.DataFrame({
        "transaction_id": np.arange(1, int(landed.sum()) + 1, dtype=np.int64),
        "customer_id": customer_id[landed],
        "event_timestamp": pd.to_datetime(ts_us[landed], unit="us", utc=True),
        "created": pd.to_datetime((ts_us + delay_us)[landed], unit="us", utc=True),
        "amount": amount[landed],
        "category": CATEGORIES[category[landed]],
    }).sort_values("event_timestamp", ignore_index=True)


def _profiles(rng: np.random.Generator, segment: np.ndarray, start_us: int, span_us: int) -> pd.DataFrame:
    """Profiles change now and then: each customer has one to three versions."""
    customers = len(segment)
    versions = rng.integers(1, 4, customers)
    pid = np.repeat(np.arange(1, customers + 1, dtype=np.int64), versions)
    age0 = rng.integers(18, 85, customers)
    updated_us = start_us + rng.integers(0, span_us, len(pid))
    first = np.concatenate([[0], np.cumsum(versions)[:-1]])  # every customer signed up before the data starts
    updated_us[first] = start_us - rng.integers(1, 120 * 86_400_000_000, customers)
    return pd.DataFrame({
        "customer_id": pid,
        "updated_at": pd.to_datetime(updated_us, unit="us", utc=True),
        "age": np.repeat(age0, versions).astype(np.int64),
        "segment": SEGMENTS[np.repeat(segment, versions)],
    })


def _entity_rows(rng: np.random.Generator, customers: int, start_us: int, span_us: int) -> pd.DataFrame:
    """Training rows: the moments we want predictions for, with a label to learn (a few unknown ids)."""
    rows = max(1_000, customers * 2)
    return pd.DataFrame({
        "customer_id": rng.integers(1, int(customers * 1.02) + 2, rows).astype(np.int64),
        "event_timestamp": pd.to_datetime(start_us + rng.integers(span_us // 4, span_us, rows), unit="us", utc=True),
        "is_fraud": rng.random(rows) < 0.03,
    })
