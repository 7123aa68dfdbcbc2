"""What is kept online for a view: its hop groups and their partial aggregates (compute.py has the SQL).

Aggregation view, per entity: one msgpack value ``[end, group values...]`` with, per hop group, the
tiles that a window can still reach (in position order), or null when the entity has no such tile;
the group of unbounded windows holds one cumulative tile. How a group's tiles are stored (numeric
partials as one block of 8-byte words, the others as msgpack lists) is tiles.py's. Pushes may append
a last element, their buckets (see push.py), which reads ignore.
Snapshot view, per entity: the latest row ``[ts, created, columns...]``.
The layout is derived from the definition alone, so writer and reader agree without storing any
schema; a change of it bumps ``LAYOUT_VERSION`` (stores.py), which is part of every key.
"""

from __future__ import annotations

from dataclasses import dataclass

from feature_store.aggregations import INTEGER_TYPES, Count, CountDistinct, Last, Max, Mean, Min, StdDev, Sum, base_type
from feature_store.identifiers import quote
from feature_store.offline.sql import FeatureRequest, ViewQuery


def floor(value: int, hop: int) -> int:
    """``value`` rounded down to a multiple of ``hop`` (Python's % is a floor modulo: right below zero too)."""
    return value - value % hop


def partials_for(request: FeatureRequest) -> list[str]:
    feature = request.feature
    column = getattr(feature, "column", None) or ""
    names: list[str] = ["maxts__"]
    if isinstance(feature, Count):
        names.append(f"n__{column}")
    elif isinstance(feature, Sum):
        names.append(f"sum__{column}")
    elif isinstance(feature, Mean):
        names += [f"n__{column}", f"sum__{column}"]
    elif isinstance(feature, Min):
        names.append(f"min__{column}")
    elif isinstance(feature, Max):
        names.append(f"max__{column}")
    elif isinstance(feature, StdDev):
        names += [f"n__{column}", f"mean__{column}", f"m2__{column}"]
    elif isinstance(feature, Last):
        names += [f"last__{column}", f"lastt__{column}", f"lastc__{column}"]
    elif isinstance(feature, CountDistinct):
        names.append(f"set__{column}")
    return names


INT, FLOAT, OBJECT = "i", "f", "o"  # how a partial is stored: int64, float64, or a msgpack value
_WORD_INTEGERS = INTEGER_TYPES - {"HUGEINT", "UBIGINT"}  # integer types that every int64 holds


def partial_kind(name: str, input_type: str | None) -> str:
    """int64 for counts, times and integer sums, minima, maxima and lasts; float64 for means, M2s and
    the same over floating-point columns; anything else (strings, decimals, dates, sets) an object."""
    kind = name.partition("__")[0]
    if kind in ("maxts", "n", "lastt", "lastc"):
        return INT
    if kind in ("mean", "m2"):
        return FLOAT
    base = base_type(input_type) if input_type else ""
    if kind == "sum":  # as Sum's output type: BIGINT for every integer input, else DOUBLE
        return INT if base in INTEGER_TYPES else FLOAT
    if kind in ("min", "max", "last"):
        return INT if base in _WORD_INTEGERS else FLOAT if base in ("DOUBLE", "FLOAT") else OBJECT
    return OBJECT


def _last_row(c: str) -> str:
    return f"max({{'t': __ts, 'c': __cr, 'v': {c}}}) FILTER (WHERE {c} IS NOT NULL)"


def partial_sql(name: str, kind: str) -> str:
    """The partial's aggregate, cast to the type its kind stores (a no-op but for narrower types)."""
    sql = _aggregate_sql(name)
    return sql if kind == OBJECT else f"CAST({sql} AS {'BIGINT' if kind == INT else 'DOUBLE'})"


def _aggregate_sql(name: str) -> str:
    kind, _, column = name.partition("__")
    c = quote(column) if column else ""
    return {
        "maxts": "max(__ts)",
        "n": f"count({c})" if column else "count(*)",
        "sum": f"sum({c})",
        "min": f"min({c})",
        "max": f"max({c})",
        "mean": f"avg({c})",
        "m2": f"var_pop({c}) * count({c})",
        # The latest non-null value, ties on (ts, created) to the greatest value, with its ts and created: one
        # aggregate for the three (DuckDB computes an aggregate repeated in a SELECT once; struct comparisons
        # are most of the cost of a tile)
        "last": f"({_last_row(c)}).v",
        "lastt": f"({_last_row(c)}).t",
        "lastc": f"({_last_row(c)}).c",
        # Deduplicating the tile's list once costs a third less than list(DISTINCT) (a hash set per group);
        # still NULL when the tile has no non-null value
        "set": f"array_distinct(list({c}) FILTER (WHERE {c} IS NOT NULL))",
    }[kind]


@dataclass(frozen=True)
class Group:
    hop: int  # microseconds; 0 for the cumulative (unbounded) group
    window: int  # the widest window of the group; 0 for the cumulative group
    partials: tuple[str, ...]
    kinds: tuple[str, ...]  # per partial: INT, FLOAT or OBJECT (partial_kind)


@dataclass(frozen=True)
class Layout:
    groups: tuple[Group, ...]  # bounded hop groups in hop order, then the cumulative group if any

    @classmethod
    def of(cls, view: ViewQuery) -> Layout:
        bounded: dict[int, list[FeatureRequest]] = {}
        unbounded: list[FeatureRequest] = []
        for request in view.features:
            (unbounded if request.window is None else bounded.setdefault(request.hop, [])).append(request)
        groups = [cls._group(hop, reqs) for hop, reqs in sorted(bounded.items())]
        if unbounded:
            groups.append(cls._group(0, unbounded))
        return cls(tuple(groups))

    @staticmethod
    def _group(hop: int, requests: list[FeatureRequest]) -> Group:
        names: dict[str, str] = {}
        for request in requests:
            for name in partials_for(request):
                names.setdefault(name, partial_kind(name, request.input_type))
        windows = [r.window for r in requests]
        window = 0 if hop == 0 else max(w for w in windows if w is not None)
        return Group(hop, window, tuple(names), tuple(names.values()))

    def group_of(self, request: FeatureRequest) -> int:
        for i, group in enumerate(self.groups):
            if (group.hop == 0) == (request.window is None) and (group.hop == 0 or group.hop == request.hop):
                return i
        raise KeyError(request.output)
