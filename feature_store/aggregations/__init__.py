"""Aggregation functions: one module each (definition and semantics), found by kind in one registry.

``Sum("amount", window="7d")`` is a frozen definition; ``function_of(feature)`` is its semantics. A module
registers its function when imported; this package imports every module, so the registry is complete once
``feature_store.aggregations`` is.
"""

from feature_store.aggregations.approx_count_distinct import ApproxCountDistinct
from feature_store.aggregations.approx_percentile import ApproxPercentile
from feature_store.aggregations.base import (
    DEFINITIONS,
    FUNCTIONS,
    Aggregation,
    AggregationFunction,
    Duration,
    aggregation_from_spec,
    function_of,
)
from feature_store.aggregations.count import Count
from feature_store.aggregations.count_distinct import CountDistinct
from feature_store.aggregations.extremes import Max, Min
from feature_store.aggregations.last import Last
from feature_store.aggregations.last_k import LastK
from feature_store.aggregations.mean import Mean
from feature_store.aggregations.partials import FLOAT, INT, KINDS, OBJECT, Partial, PartialKind
from feature_store.aggregations.stddev import StdDev
from feature_store.aggregations.sum import Sum

AGGREGATIONS = DEFINITIONS  # kind -> definition class

__all__ = [
    "AGGREGATIONS",
    "DEFINITIONS",
    "FLOAT",
    "FUNCTIONS",
    "INT",
    "KINDS",
    "OBJECT",
    "Aggregation",
    "AggregationFunction",
    "ApproxCountDistinct",
    "ApproxPercentile",
    "Count",
    "CountDistinct",
    "Duration",
    "Last",
    "LastK",
    "Max",
    "Mean",
    "Min",
    "Partial",
    "PartialKind",
    "StdDev",
    "Sum",
    "aggregation_from_spec",
    "function_of",
]
