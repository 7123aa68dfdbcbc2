"""Slow, obviously-correct reference for the feature store's point-in-time semantics.

This module has two parts:

1. The *reference* (pure Python, plain loops over lists of dicts, no DuckDB, no
   pandas): it states the contract in code, one small function per rule.  All
   timestamps are turned into integer microseconds since the Unix epoch (UTC)
   first, so every comparison below is an exact integer comparison.

2. A small *engine harness* (at the bottom) that writes the same neutral view
   descriptions to parquet, builds the library's definition objects, and runs
   the public API.  It is shared by ``test_semantics_property.py`` and
   ``test_semantics_cases.py``.  Nothing in part 1 uses it.

The contract (query row = key k at time t; time is UTC, naive timestamps are UTC,
precision is one microsecond):

* Aggregation with window W (None = unbounded) and hop H aggregates the events
  e with key k and a non-null timestamp such that
      start(t) <= e.ts < t,   start(t) = floor_H(t - W)
  where floor_H rounds DOWN to a multiple of H counted from 1970-01-01T00:00Z
  (no lower bound when W is None), and, when the source declares a created
  timestamp column, e.created < t (a null created is never visible).
* Count counts rows (non-null values when given a column), 0 when none;
  Sum sums non-null values, 0 when none; Mean = sum / count of non-null values,
  null when none; Min / Max null when none; Last = value of the latest event by
  (ts, created), nulls ignored, any one of the values tied on (ts, created);
  StdDev = sample standard deviation (n - 1), null when fewer than 2 values;
  CountDistinct counts distinct non-null values, 0 when none.
* Default hop: the largest of 1 day, 1 hour, 5 minutes, 1 minute, 1 second that
  is <= W / 24; 1 second when W < 24 s; 1 day for unbounded windows.  An
  aggregation's own hop wins over the view's hop, which wins over the default.
* Snapshot features: the row with the greatest (ts, created) among the rows with
  key k, ts < t, created < t (when declared) and ts >= t - ttl (when a ttl is
  set); all columns of one view come from that one row; null when there is none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)

# The standard hops, largest first (see ``default_hop``).
STANDARD_HOPS = (
    timedelta(days=1),
    timedelta(hours=1),
    timedelta(minutes=5),
    timedelta(minutes=1),
    timedelta(seconds=1),
)

AGGREGATION_FUNCTIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "last",
    "stddev",
    "count_distinct",
    "last_k",
    "approx_count_distinct",
    "approx_percentile",
)

# Parameters of the functions that take some (besides column and window), as the suites draw them: each suite
# covers every function of the library's registry, and a function the reference does not know fails them.
PARAMETERS = {
    "last_k": ({"k": 1}, {"k": 3}),
    "approx_count_distinct": ({}, {"lg_k": 4}),
    "approx_percentile": ({"q": 0.5}, {"q": 0.9, "relative_accuracy": 0.05}, {"q": 0.0}, {"q": 1.0}),
}
COLUMN_TYPES = {"amount": "float64", "qty": "int64", "category": "string"}  # of the harness's event columns


# --------------------------------------------------------------------------
# Neutral descriptions of views (used by the reference and by the harness)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Agg:
    """One aggregation feature: ``function`` over ``column`` (None only for a row Count)."""

    name: str
    function: str
    column: str | None = None
    window: timedelta | None = None
    hop: timedelta | None = None
    params: tuple = ()  # ((name, value), ...) of the function's own parameters (k, q, ...)

    def __post_init__(self):
        assert self.function in AGGREGATION_FUNCTIONS, self.function
        assert self.column is not None or self.function == "count", self


@dataclass(frozen=True)
class AggregationView:
    """A view of aggregation features over an event source.

    ``rows`` are dicts keyed by column name (missing columns are null);
    ``schema`` is the ordered list of (column, arrow type string) written to
    parquet by the harness; the reference only needs the names.
    """

    name: str
    features: tuple
    rows: tuple
    join_keys: tuple = ("customer_id",)
    timestamp_field: str = "event_timestamp"
    created_field: str | None = None
    hop: timedelta | None = None
    schema: tuple = ()


@dataclass(frozen=True)
class SnapshotView:
    """A snapshot view: ``fields`` is a tuple of (column, dtype) pairs."""

    name: str
    fields: tuple
    rows: tuple
    join_keys: tuple = ("customer_id",)
    timestamp_field: str = "updated_at"
    created_field: str | None = None
    ttl: timedelta | None = None
    schema: tuple = ()


# --------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------


def to_micros(value) -> int | None:
    """A timestamp as integer microseconds since the Unix epoch; None for null.

    Naive datetimes are UTC; aware ones are converted to UTC.  Digits finer than a
    microsecond (pandas Timestamps carry nanoseconds) are dropped by rounding down.
    """
    if value is None:
        return None
    if value != value:  # NaN / NaT
        return None
    if not isinstance(value, datetime):
        raise TypeError(f"not a timestamp: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - EPOCH) // ONE_MICROSECOND


def duration_micros(value: timedelta) -> int:
    return value // ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def default_hop(window: timedelta | None) -> timedelta:
    """Largest standard hop H with H <= W / 24 (i.e. 24 * H <= W); 1 s below that; 1 day if unbounded."""
    if window is None:
        return timedelta(days=1)
    for hop in STANDARD_HOPS:
        if 24 * duration_micros(hop) <= duration_micros(window):
            return hop
    return timedelta(seconds=1)


def effective_hop(agg: Agg, view_hop: timedelta | None) -> timedelta:
    if agg.hop is not None:
        return agg.hop
    if view_hop is not None:
        return view_hop
    return default_hop(agg.window)


def floor_to_multiple(micros: int, step_micros: int) -> int:
    """Round DOWN (towards minus infinity, also before 1970) to a multiple of step."""
    quotient = micros // step_micros  # Python's // floors
    return quotient * step_micros


def window_start(t: int, window: timedelta | None, hop: timedelta) -> int | None:
    """start(t) = floor_H(t - W) in microseconds, or None (no lower bound) when W is None."""
    if window is None:
        return None
    return floor_to_multiple(t - duration_micros(window), duration_micros(hop))


# --------------------------------------------------------------------------
# Visibility
# --------------------------------------------------------------------------


def key_of(row: dict, join_keys) -> tuple | None:
    """The join-key tuple of a row, or None when any key is null (such rows never match)."""
    values = []
    for column in join_keys:
        value = row.get(column)
        if value is None or value != value:
            return None
        values.append(value)
    return tuple(values)


def is_visible_at(ts: int | None, created: int | None, t: int, has_created: bool) -> bool:
    """ts < t and (when declared) created < t; null ts or null created is never visible."""
    if ts is None:
        return False
    if not ts < t:
        return False
    if has_created:
        if created is None:
            return False
        if not created < t:
            return False
    return True


def is_null(value) -> bool:
    return value is None or value != value


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def events_in_window(view: AggregationView, agg: Agg, key: tuple, t: int) -> list:
    """The (ts, created, row) of every event that agg aggregates for the query (key, t)."""
    has_created = view.created_field is not None
    start = window_start(t, agg.window, effective_hop(agg, view.hop))
    selected = []
    for row in view.rows:
        if key_of(row, view.join_keys) != key:
            continue
        ts = to_micros(row.get(view.timestamp_field))
        created = to_micros(row.get(view.created_field)) if has_created else None
        if not is_visible_at(ts, created, t, has_created):
            continue
        if start is not None and not start <= ts:
            continue
        selected.append((ts, created, row))
    return selected


def exact_sum(values):
    """Exact sum: an int for ints, else a float rounded once from the exact rational sum."""
    if all(isinstance(v, int) for v in values):
        total = 0
        for v in values:
            total += v
        return total
    total = Fraction(0)
    for v in values:
        total += Fraction(v)
    return float(total)


def aggregate_candidates(function: str, column: str | None, selected: list, has_created: bool,
                         params: tuple = ()) -> list:
    """All acceptable results of one aggregation over the selected events (one, except Last ties)."""
    options = dict(params)
    if function == "last_k":
        return [_last_k(selected, column, has_created, int(options.get("k", 5)))]
    if function == "count" and column is None:
        return [len(selected)]

    values = []
    for _ts, _created, row in selected:
        value = row.get(column)
        if not is_null(value):
            values.append(value)

    if function == "count":
        return [len(values)]
    if function == "sum":
        return [exact_sum(values)] if values else [0]
    if function == "mean":
        if not values:
            return [None]
        total = Fraction(0)
        for v in values:
            total += Fraction(v)
        return [float(total / len(values))]
    if function == "min":
        return [min(values)] if values else [None]
    if function == "max":
        return [max(values)] if values else [None]
    if function == "stddev":
        if len(values) < 2:
            return [None]
        exact = [Fraction(v) for v in values]
        mean = sum(exact, Fraction(0)) / len(exact)
        squares = sum(((v - mean) ** 2 for v in exact), Fraction(0))
        return [math.sqrt(squares / (len(exact) - 1))]
    if function == "count_distinct":
        return [len(set(values))]
    if function == "approx_count_distinct":
        return [_approx_count_distinct(values, int(options.get("lg_k", 12))) if values else 0]
    if function == "approx_percentile":
        return [_approx_percentile([float(v) for v in values], float(options["q"]),
                                   float(options.get("relative_accuracy", 0.01)))]
    if function == "last":
        best_order = None
        for ts, created, row in selected:
            if is_null(row.get(column)):
                continue
            order = (ts, created if has_created else 0)
            if best_order is None or order > best_order:
                best_order = order
        if best_order is None:
            return [None]
        tied = []
        for ts, created, row in selected:
            if is_null(row.get(column)):
                continue
            if (ts, created if has_created else 0) == best_order and row[column] not in tied:
                tied.append(row[column])
        return tied
    raise ValueError(function)


def aggregation_candidates(view: AggregationView, agg: Agg, key: tuple, t: int) -> list:
    selected = events_in_window(view, agg, key, t)
    return aggregate_candidates(agg.function, agg.column, selected, view.created_field is not None, agg.params)


@dataclass(frozen=True)
class Approx:
    """The expected value of an approximate function: the exact one, and which answers it may give instead."""

    exact: object
    tolerance: str  # what accept checks, for messages
    accept: object  # (value) -> bool

    def __repr__(self):
        return f"~{self.exact!r} ({self.tolerance})"


def _last_k(selected: list, column: str, has_created: bool, k: int) -> list:
    """The k latest non-null values, newest first, by (ts, created, value) descending; [] when none."""
    triples = [(ts, created if has_created else 0, row[column]) for ts, created, row in selected
               if not is_null(row.get(column))]
    triples.sort(reverse=True)
    return [value for _ts, _created, value in triples[:k]]


def _approx_count_distinct(values: list, lg_k: int) -> Approx:
    """Exact for up to 7 distinct values (the sketch's list mode, whatever lg_k); else within 5 % (the contract for
    lg_k 12 and more) or, for smaller sketches, three standard errors (1.04 / sqrt(2^lg_k)) of the exact count."""
    exact = len(set(values))
    bound = max(0.05, 3 * 1.04 / math.sqrt(2**lg_k))

    def accept(got):
        return isinstance(got, int) and (got == exact if exact < 8 else abs(got - exact) <= bound * exact)

    return Approx(exact, f"exact below 8 values, else within {bound:.0%}", accept)


def _approx_percentile(values: list, q: float, accuracy: float):
    """Within ``accuracy`` (relative) of the value at 0-based rank q (n - 1) of the sorted values, either
    neighbour when that rank is not whole; None when there is no value."""
    if not values:
        return None
    ordered = sorted(values)
    rank = Fraction(q) * (len(ordered) - 1)
    candidates = {ordered[math.floor(rank)], ordered[math.ceil(rank)]}

    def accept(got):
        return isinstance(got, float) and any(
            abs(got - v) <= accuracy * abs(v) * (1 + 1e-9) + 1e-300 for v in candidates)

    return Approx(ordered[math.floor(rank)], f"within {accuracy} of ranks {sorted(candidates)}", accept)


RELATIVE_TOLERANCE = 1e-9


def float_tolerance(function: str, column: str | None, selected: list) -> float:
    """Absolute slack for a floating-point result: 1e-9 relative to the magnitude of the values in
    the window (the largest |value| for Mean and StdDev, the sum of |value| for Sum); 0 otherwise.

    It only matters under cancellation (e.g. a tiny StdDev of large values); elsewhere the
    1e-9 relative tolerance on the result itself is the tighter bound.
    """
    if function not in ("sum", "mean", "stddev"):
        return 0.0
    magnitudes = [abs(row.get(column)) for _ts, _created, row in selected if not is_null(row.get(column))]
    if not magnitudes:
        return 0.0
    if function == "sum":
        return RELATIVE_TOLERANCE * float(sum(magnitudes))
    return RELATIVE_TOLERANCE * float(max(magnitudes))


# --------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------


def snapshot_candidates(view: SnapshotView, columns, key: tuple, t: int) -> list:
    """Acceptable value tuples (one per row tied on the greatest (ts, created)); all-null when none."""
    has_created = view.created_field is not None
    visible = []
    for row in view.rows:
        if key_of(row, view.join_keys) != key:
            continue
        ts = to_micros(row.get(view.timestamp_field))
        created = to_micros(row.get(view.created_field)) if has_created else None
        if not is_visible_at(ts, created, t, has_created):
            continue
        if view.ttl is not None and not ts >= t - duration_micros(view.ttl):
            continue
        visible.append(((ts, created if has_created else 0), row))
    if not visible:
        return [tuple(None for _ in columns)]
    best_order = max(order for order, _row in visible)
    candidates = []
    for order, row in visible:
        if order == best_order:
            values = tuple(None if is_null(row.get(c)) else row.get(c) for c in columns)
            if values not in candidates:
                candidates.append(values)
    return candidates


# --------------------------------------------------------------------------
# Query driver
# --------------------------------------------------------------------------


def output_name(view_name: str, feature_name: str, full_feature_names: bool) -> str:
    return f"{view_name}__{feature_name}" if full_feature_names else feature_name


def _parse_refs(views, feature_refs):
    by_name = {v.name: v for v in views}
    grouped = []  # [(view, [feature names])] in first-mention order
    for ref in feature_refs:
        view_name, feature_name = ref.split(":")
        view = by_name[view_name]
        for existing_view, names in grouped:
            if existing_view is view:
                names.append(feature_name)
                break
        else:
            grouped.append((view, [feature_name]))
    return grouped


def expected_constraints(entity_rows, views, feature_refs, full_feature_names=False,
                         timestamp_column="event_timestamp"):
    """For each entity row: a list of (output column names, acceptable value tuples, float slack).

    An aggregation feature is one constraint over its own column; the requested
    fields of one snapshot view form one constraint, so they must all come from
    one source row.  The slack is the absolute tolerance of ``float_tolerance``.
    """
    grouped = _parse_refs(views, feature_refs)
    result = []
    for entity_row in entity_rows:
        t = to_micros(entity_row[timestamp_column])
        constraints = []
        for view, names in grouped:
            key = key_of(entity_row, view.join_keys)
            if isinstance(view, AggregationView):
                aggs = {a.name: a for a in view.features}
                for name in names:
                    agg = aggs[name]
                    selected = [] if key is None else events_in_window(view, agg, key, t)
                    acceptable = aggregate_candidates(agg.function, agg.column, selected,
                                                      view.created_field is not None, agg.params)
                    constraints.append(((output_name(view.name, name, full_feature_names),),
                                        [(v,) for v in acceptable],
                                        float_tolerance(agg.function, agg.column, selected)))
            else:
                columns = tuple(names)
                if key is None:
                    acceptable = [tuple(None for _ in columns)]
                else:
                    acceptable = snapshot_candidates(view, columns, key, t)
                constraints.append((tuple(output_name(view.name, n, full_feature_names) for n in names),
                                    acceptable, 0.0))
        result.append(constraints)
    return result


def get_historical_features(entity_rows, views, feature_refs, full_feature_names=False,
                            timestamp_column="event_timestamp"):
    """Reference output: each entity row (in order) plus one deterministic acceptable value per feature."""
    constraints = expected_constraints(entity_rows, views, feature_refs, full_feature_names, timestamp_column)
    output = []
    for entity_row, row_constraints in zip(entity_rows, constraints, strict=True):
        out = dict(entity_row)
        for columns, acceptable, _slack in row_constraints:
            for column, value in zip(columns, acceptable[0], strict=True):
                out[column] = value
        output.append(out)
    return output


# --------------------------------------------------------------------------
# Comparing engine values with reference values
# --------------------------------------------------------------------------


def normalize_value(value):
    """Engine cell -> plain Python value; every flavour of null -> None; lists (numpy arrays too) item by item."""
    if value is None:
        return None
    if isinstance(value, list | tuple) or (type(value).__module__ == "numpy" and getattr(value, "ndim", 0) == 1):
        return [normalize_value(v) for v in value]
    try:
        if value != value:  # NaN, NaT
            return None
    except (TypeError, ValueError):
        pass
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        value = item()
    return value


def values_match(got, expected, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0) -> bool:
    got = normalize_value(got)
    if isinstance(expected, Approx):
        return got is not None and bool(expected.accept(got))
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(
            values_match(g, e, rel_tol, abs_tol) for g, e in zip(got, expected, strict=True))
    if expected is None:
        return got is None
    if got is None:
        return False
    if isinstance(expected, str) or isinstance(got, str):
        return got == expected
    if isinstance(expected, float) or isinstance(got, float):
        return math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol)
    return got == expected


def tuple_matches(got: tuple, acceptable: list, abs_tol=0.0) -> bool:
    for candidate in acceptable:
        if len(candidate) != len(got):
            continue
        if all(values_match(g, e, abs_tol=abs_tol) for g, e in zip(got, candidate, strict=True)):
            return True
    return False


# --------------------------------------------------------------------------
# Engine harness (NOT part of the reference): runs the library's public API
# --------------------------------------------------------------------------

DEFAULT_EVENT_SCHEMA = (
    ("customer_id", "int64"),
    ("event_timestamp", "timestamp[us, tz=UTC]"),
    ("amount", "float64"),
    ("qty", "int64"),
    ("category", "string"),
)


def default_event_schema(created_field=None, ts_type="timestamp[us, tz=UTC]", created_type=None):
    schema = [("customer_id", "int64"), ("event_timestamp", ts_type)]
    if created_field is not None:
        schema.append((created_field, created_type or ts_type))
    schema += [("amount", "float64"), ("qty", "int64"), ("category", "string")]
    return tuple(schema)


def default_profile_schema(created_field=None, ts_type="timestamp[us, tz=UTC]", created_type=None):
    schema = [("customer_id", "int64"), ("updated_at", ts_type)]
    if created_field is not None:
        schema.append((created_field, created_type or ts_type))
    schema += [("age", "int64"), ("segment", "string")]
    return tuple(schema)


def _arrow_type(type_string):
    import pyarrow as pa

    if type_string.startswith("timestamp["):
        inner = type_string[len("timestamp["):-1]
        parts = [p.strip() for p in inner.split(",")]
        unit = parts[0]
        tz = None
        for part in parts[1:]:
            if part.startswith("tz="):
                tz = part[3:]
        return pa.timestamp(unit, tz=tz)
    return {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}[type_string]


def _arrow_value(value, type_string):
    if type_string == "float64" and isinstance(value, float) and value != value:
        return value  # written as NaN, not null: the engine must read it as null (docs/semantics.md)
    if is_null(value):
        return None
    if type_string.startswith("timestamp["):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if "tz=" not in type_string:  # naive column: store the UTC wall clock
            return aware.astimezone(UTC).replace(tzinfo=None)
        return aware.astimezone(UTC)
    return value


def write_parquet(path, schema, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for column, type_string in schema:
        arrays[column] = pa.array([_arrow_value(row.get(column), type_string) for row in rows],
                                  type=_arrow_type(type_string))
    pq.write_table(pa.table(arrays), str(path))


def _schema_of(view):
    if view.schema:
        return view.schema
    if isinstance(view, AggregationView):
        return default_event_schema(view.created_field)
    return default_profile_schema(view.created_field)


def build_definitions(views, file_suffix=""):
    """Library definition objects (entities, sources, views) for the neutral view descriptions.

    Each view's source reads ``<view name><file_suffix>.parquet`` (relative to the repo).
    """
    import feature_store as fs
    from feature_store.aggregations import DEFINITIONS as classes
    entities = {}
    objects = []
    for view in views:
        join_keys = tuple(view.join_keys)
        if join_keys not in entities:
            entity_name = "customer" if join_keys == ("customer_id",) else "__".join(join_keys)
            entities[join_keys] = fs.Entity(name=entity_name, join_keys=list(join_keys))
            objects.append(entities[join_keys])
        source = fs.FileSource(
            name=f"{view.name}_source",
            path=f"{view.name}{file_suffix}.parquet",
            timestamp_field=view.timestamp_field,
            created_timestamp_field=view.created_field,
        )
        objects.append(source)
        if isinstance(view, AggregationView):
            features = []
            for agg in view.features:
                kwargs = {"window": agg.window, "name": agg.name, **dict(agg.params)}
                if agg.hop is not None:
                    kwargs["hop"] = agg.hop
                args = () if agg.column is None else (agg.column,)
                features.append(classes[agg.function](*args, **kwargs))
            view_kwargs = {}
            if view.hop is not None:
                view_kwargs["hop"] = view.hop
            objects.append(fs.FeatureView(name=view.name, entities=[entities[join_keys]], source=source,
                                          features=features, **view_kwargs))
        else:
            view_kwargs = {}
            if view.ttl is not None:
                view_kwargs["ttl"] = view.ttl
            objects.append(fs.FeatureView(name=view.name, entities=[entities[join_keys]], source=source,
                                          features=[fs.Field(n, dtype) for n, dtype in view.fields],
                                          **view_kwargs))
    return objects


def open_store(repo_dir, views, store=None, file_suffix="", project="semantics_tests", engine="duckdb"):
    """Write feature_store.yaml and the views' parquet files into repo_dir and apply the views.

    Pass the ``store`` of an earlier call to re-apply into the same repo (with a new
    ``file_suffix`` so that every definition points at its own files); returns the store.
    ``engine``: ``duckdb``, or ``spark`` (the test process's one Spark session, tests/spark_fixtures.py).
    """
    import os

    import feature_store as fs

    os.makedirs(repo_dir, exist_ok=True)
    config = os.path.join(repo_dir, "feature_store.yaml")
    if not os.path.exists(config):
        with open(config, "w") as f:
            f.write(f"project: {project}\n")
            if engine == "spark":
                from spark_fixtures import SPARK_YAML

                f.write(SPARK_YAML)
    for view in views:
        write_parquet(os.path.join(repo_dir, f"{view.name}{file_suffix}.parquet"), _schema_of(view), view.rows)
    if store is None:
        session = None
        if engine == "spark":
            from spark_fixtures import spark_session

            session = spark_session()
        store = fs.FeatureStore(str(repo_dir), spark=session)
    store.apply(build_definitions(views, file_suffix))
    return store


def engine_query(store, entity_df, feature_refs, full_feature_names=False):
    if full_feature_names:
        job = store.get_historical_features(entity_df, features=list(feature_refs), full_feature_names=True)
    else:
        job = store.get_historical_features(entity_df, features=list(feature_refs))
    return job.to_df()


def entity_rows_of(entity_df):
    """The entity DataFrame as a list of dicts of plain Python values (timestamps as datetimes)."""
    rows = []
    columns = list(entity_df.columns)
    for values in entity_df.itertuples(index=False, name=None):
        row = {}
        for column, value in zip(columns, values, strict=True):
            value = normalize_value(value)  # timestamps stay pandas Timestamps (datetimes, ns kept)
            row[column] = value
        rows.append(row)
    return rows


def mismatches(out_df, entity_rows, views, feature_refs, full_feature_names=False, limit=10):
    """Human-readable differences between an engine result and the reference (empty = agreement)."""
    problems = []
    if len(out_df) != len(entity_rows):
        return [f"engine returned {len(out_df)} rows for {len(entity_rows)} entity rows"]
    constraints = expected_constraints(entity_rows, views, feature_refs, full_feature_names)
    for i, (entity_row, row_constraints) in enumerate(zip(entity_rows, constraints, strict=True)):
        for columns, acceptable, slack in row_constraints:
            missing = [c for c in columns if c not in out_df.columns]
            if missing:
                return [f"engine output lacks columns {missing}; has {list(out_df.columns)}"]
            got = tuple(normalize_value(out_df[c].iloc[i]) for c in columns)
            if not tuple_matches(got, acceptable, slack):
                problems.append(
                    f"row {i} {entity_row}: {columns} got {got!r}, expected one of {acceptable!r}")
                if len(problems) >= limit:
                    return problems
    return problems
