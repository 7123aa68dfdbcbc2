"""A feature store for Python: one definition, point-in-time-correct training sets, online serving."""

from feature_store.aggregations import Aggregation, Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum
from feature_store.definitions import (
    DuckDBSource,
    Entity,
    FeatureService,
    FeatureView,
    FeatureViewProjection,
    Field,
    FileSource,
    PushSource,
)
from feature_store.errors import FeatureStoreError
from feature_store.store import FeatureStore

__all__ = [
    "Aggregation",
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
    "Max",
    "Mean",
    "Min",
    "PushSource",
    "StdDev",
    "Sum",
]

__version__ = "0.1.0"
