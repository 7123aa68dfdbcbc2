"""A feature store for Python: one definition, point-in-time-correct training sets, online serving.

The public names are imported when first used (PEP 562), so that ``import feature_store`` and the command
line start fast: definitions need pydantic only, and DuckDB, pandas and the online stores load with the
first FeatureStore that uses them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from feature_store.aggregations import (
        Aggregation,
        ApproxCountDistinct,
        ApproxPercentile,
        Count,
        CountDistinct,
        Last,
        LastK,
        Max,
        Mean,
        Min,
        StdDev,
        Sum,
    )
    from feature_store.definitions import (
        DuckDBSource,
        Entity,
        FeatureService,
        FeatureView,
        FeatureViewProjection,
        Field,
        FileSource,
        PushSource,
        SparkSource,
    )
    from feature_store.errors import FeatureStoreError
    from feature_store.store import FeatureStore

_MODULES = {
    "feature_store.aggregations": ("Aggregation", "ApproxCountDistinct", "ApproxPercentile", "Count", "CountDistinct",
                                   "Last", "LastK", "Max", "Mean", "Min", "StdDev", "Sum"),
    "feature_store.definitions": ("DuckDBSource", "Entity", "FeatureService", "FeatureView", "FeatureViewProjection",
                                  "Field", "FileSource", "PushSource", "SparkSource"),
    "feature_store.errors": ("FeatureStoreError",),
    "feature_store.store": ("FeatureStore",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "Aggregation",
    "ApproxCountDistinct",
    "ApproxPercentile",
    "Count",
    "CountDistinct",
    "DuckDBSource",
    "Entity",
    "FeatureService",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureView",
    "FeatureViewProjection",
    "Field",
    "FileSource",
    "Last",
    "LastK",
    "Max",
    "Mean",
    "Min",
    "PushSource",
    "SparkSource",
    "StdDev",
    "Sum",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'feature_store' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
