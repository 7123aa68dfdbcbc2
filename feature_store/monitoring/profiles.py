"""Profiles: statistics per feature of a feature table, as plain JSON-ready dicts.

A profile is what drift needs of a table, so a saved one can stand in for the table later (on another host:
profiles are saved in the registry). Numbers get count, null share, min/max/mean/std, 101 percentiles (from
which drift reads the reference's bin edges and, when the table itself is gone, the share of rows in any bin)
and a histogram for the plots; strings and booleans get their value frequencies (the most frequent
``MAX_CATEGORIES``, the rest summed as ``other_count``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.errors import MonitoringError, ProfileNotFoundError, closest
from feature_store.identifiers import validate_identifier

if TYPE_CHECKING:
    from feature_store.store import FeatureStore

PROFILE_VERSION = 1
PERCENTILES = np.linspace(0.0, 1.0, 101)
PSI_QUANTILES = np.linspace(0.1, 0.9, 9)  # the reference's deciles bound the bins PSI compares
HISTOGRAM_BINS = 30
MAX_CATEGORIES = 1000

Profile = dict[str, Any]


def as_arrow(table: Any) -> pa.Table:
    """A pandas or polars DataFrame, an Arrow table or a parquet path as an Arrow table."""
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, str) or hasattr(table, "__fspath__"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(table)
        except (OSError, pa.ArrowException) as exc:
            raise MonitoringError(f"cannot read the parquet file {str(table)!r}: {exc}", path=str(table)) from exc
    if hasattr(table, "to_arrow"):  # polars
        return table.to_arrow()
    if hasattr(table, "to_df"):  # a RetrievalJob
        table = table.to_df()
    try:
        return pa.Table.from_pandas(table, preserve_index=False)
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise MonitoringError(f"cannot profile a {type(table).__name__}: pass a pandas or polars DataFrame, an "
                              "Arrow table or a parquet path.") from exc


def kind_of(dtype: pa.DataType) -> str | None:
    """numeric, categorical, or None for what is not profiled (timestamps, lists, binary)."""
    if pa.types.is_boolean(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype) \
            or pa.types.is_dictionary(dtype):
        return "categorical"
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "numeric"
    return None


def profile_table(table: Any, exclude: tuple[str, ...] = ()) -> Profile:
    """The profile of every profiled column of ``table`` but ``exclude`` (entity keys, say)."""
    arrow = as_arrow(table)
    features: dict[str, Any] = {}
    for name in arrow.column_names:
        kind = kind_of(arrow.schema.field(name).type)
        if kind is None or name in exclude:
            continue
        column = arrow.column(name)
        features[name] = numeric_profile(column) if kind == "numeric" else categorical_profile(column)
    return {"version": PROFILE_VERSION, "rows": arrow.num_rows, "created_at": datetime.now(UTC).isoformat(),
            "features": features}


def numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The column's non-null, finite values as float64."""
    values = pc.drop_null(column.cast(pa.float64())).to_numpy()
    return values[np.isfinite(values)] if values.size else values


def numeric_profile(column: pa.ChunkedArray) -> dict[str, Any]:
    values = numeric_values(column)
    rows = len(column)
    nulls = rows - int(values.size)  # NaN and infinities count as missing: no statistic can use them
    base: dict[str, Any] = {"kind": "numeric", "rows": rows, "count": int(values.size), "nulls": nulls,
                            "null_share": nulls / rows if rows else 0.0}
    if not values.size:
        return {**base, "min": None, "max": None, "mean": None, "std": None, "percentiles": [],
                "histogram": {"edges": [], "counts": []}}
    percentiles = np.quantile(values, PERCENTILES)  # one sort for all 101
    low, high = float(percentiles[0]), float(percentiles[-1])
    span = (low, high) if high > low else (low - 0.5, low + 0.5)  # one value: one bin around it
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=span)
    return {**base, "min": low, "max": high, "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "percentiles": [float(p) for p in percentiles],
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def categorical_profile(column: pa.ChunkedArray) -> dict[str, Any]:
    rows = len(column)
    nulls = column.null_count
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    counts = pc.value_counts(pc.drop_null(column).combine_chunks() if column.num_chunks != 1
                             else pc.drop_null(column.chunk(0)))
    pairs = sorted(((category_key(v), int(c)) for v, c in zip(counts.field("values").to_pylist(),
                                                               counts.field("counts").to_pylist(), strict=True)),
                   key=lambda p: (-p[1], p[0]))
    kept, rest = pairs[:MAX_CATEGORIES], pairs[MAX_CATEGORIES:]
    return {"kind": "categorical", "rows": rows, "count": rows - nulls, "nulls": nulls,
            "null_share": nulls / rows if rows else 0.0, "frequencies": dict(kept),
            "other_count": sum(c for _, c in rest), "distinct": len(pairs)}


def category_key(value: Any) -> str:
    """Categories are JSON object keys: booleans as 'true'/'false', the rest as their text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_profile(profile: Any, what: str) -> Profile:
    """A profile read from the registry or a file: the shape drift relies on, or a MonitoringError."""
    if not isinstance(profile, dict) or not isinstance(profile.get("features"), dict) \
            or profile.get("version") != PROFILE_VERSION:
        raise MonitoringError(f"{what} is not a profile of this version of feature-store (version "
                              f"{PROFILE_VERSION}); save it again with store.save_profile.")
    for name, feature in profile["features"].items():
        if not isinstance(feature, dict) or feature.get("kind") not in ("numeric", "categorical"):
            raise MonitoringError(f"{what}: feature {name!r} has no valid statistics; save the profile again.")
    return profile


def join_keys(store: FeatureStore) -> tuple[str, ...]:
    """The entity keys of the project (not features: never profiled), none when nothing is applied."""
    version, catalog = store.registry.catalog()
    if version == 0:
        return ()
    return tuple(sorted({key for entity in catalog.entities.values() for key in entity.join_keys}))


def profile_for(store: FeatureStore, table: Any) -> Profile:
    return profile_table(table, exclude=join_keys(store))


def save_profile(store: FeatureStore, name: str, table: Any) -> Profile:
    """Profile ``table`` (or take a profile dict as it is) and save it in the registry under ``name``."""
    validate_identifier(name, "profile name")
    profile = check_profile(table, f"profile {name!r}") if isinstance(table, dict) else profile_for(store, table)
    store.registry.save_profile(name, json.dumps(profile, allow_nan=False))
    return profile


def load_profile(store: FeatureStore, name: str) -> Profile:
    text = store.registry.profile(name)
    if text is None:
        names = store.registry.profile_names()
        raise ProfileNotFoundError(
            f"project {store.project!r} has no saved profile {name!r}.{closest(name, names)} Save one with "
            "store.save_profile(name, table).", profile=name)
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise MonitoringError(f"the saved profile {name!r} is not valid JSON; save it again.") from exc
    return check_profile(loaded, f"the saved profile {name!r}")
