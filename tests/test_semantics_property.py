"""Property-based tests: the engine (public API) must agree with tests/reference.py.

Data is drawn so that the boundaries of the contract are hit often: most events
take the key of one generated query and sit exactly on, or one microsecond either
side of, that query's t, t - W, or floor_H(t - W) for every window W in the view and
every hop H in use or on the default ladder (so a wrong hop choice or a wrong floor
meets an event at its wrong boundary); created timestamps sit at query times or
near ts; events share timestamps; values, keys, timestamps and created are null;
queries repeat, use keys without events and times far from all data; keys are ints
or strings; query timestamps come naive or in UTC, America/New_York or
Asia/Kolkata, in microseconds or nanoseconds, and source timestamps naive or zoned.
The base date 2024-03-10 is the day New York switches to daylight saving time.

Amounts are mostly multiples of 0.25 in [-1000, 1000], so sums are exact in binary
floating point and a relative tolerance of 1e-9 is meaningful; one test uses
two-decimal amounts (inexact in binary) to check that materialization changes
float results by no more than rounding (1e-12 relative; everything else must be
exactly equal).  Float results must be within 1e-9 of exact, relative to the
result or to the magnitude of the values in the window.
"""

import math
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
from reference import Agg, AggregationView, SnapshotView

US = timedelta(microseconds=1)
BASE = datetime(2024, 3, 10, tzinfo=UTC)
BASE_US = ref.to_micros(BASE)
S, MIN, H, D = (timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1))

WINDOWS = [None, 10 * S, 45 * S, 30 * MIN, H, 2 * H, D, 2 * D, 7 * D, 30 * D]
HOPS = [S, 7 * S, MIN, 5 * MIN, 7 * MIN, 15 * MIN, H, D, 7 * D]  # 7 min, 7 s, 7 d: not divisors of a day/week


def registered_functions() -> list[tuple[str, str | None, tuple[tuple[str, object], ...]]]:
    """(kind, column, parameters) of every function of the library's registry, over each harness column its input
    types accept (a count of rows too): a new function module is covered here without editing this file."""
    from feature_store.aggregations import DEFINITIONS, FUNCTIONS

    out = []
    for kind, function in sorted(FUNCTIONS.items()):
        columns: list[str | None] = [] if DEFINITIONS[kind].needs_column else [None]
        columns += [c for c, t in ref.COLUMN_TYPES.items() if function.input_types is None or t in function.input_types]
        for params in ref.PARAMETERS.get(kind, ({},)):
            out += [(kind, column, tuple(sorted(params.items()))) for column in columns]
    return out


FUNCTIONS = registered_functions()
QUERY_ZONES = ["UTC", "naive", "America/New_York", "Asia/Kolkata"]
SOURCE_TS_TYPES = ["timestamp[us, tz=UTC]", "timestamp[us]", "timestamp[ns]", "timestamp[us, tz=Asia/Kolkata]",
                   "timestamp[ns, tz=America/New_York]"]
KNOWN_KEYS = [1, 2, 3]
QUERY_KEYS = [1, 2, 3, 4]  # 4 never has events

# SEMANTICS_EXAMPLES=1000 for a long bug hunt; the default keeps each property test at a few seconds.
EXAMPLES = int(os.environ.get("SEMANTICS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MATERIALIZE_SETTINGS = settings(SETTINGS, max_examples=max(1, EXAMPLES * 5 // 8))

# NaN, written as NaN in the parquet file, is null to every function (docs/semantics.md)
amounts = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, -3.25, 1000.0, math.nan]),
                    st.integers(-4000, 4000).map(lambda k: k / 4))
# two-decimal amounts are not exact in binary: for the bit-for-bit materialization test
cent_amounts = st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, -0.7]),
                         st.integers(-100000, 100000).map(lambda k: k / 100))
quantities = st.one_of(st.none(), st.integers(-5, 5))
categories = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
source_keys = st.sampled_from([*KNOWN_KEYS, None])


def dt(micros):
    return None if micros is None else ref.from_micros(micros)


def us(delta):
    return ref.duration_micros(delta)


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------


@st.composite
def aggregations(draw, index):
    function, column, params = draw(st.sampled_from(FUNCTIONS))
    window = draw(st.sampled_from(WINDOWS))
    hop = None
    if draw(st.booleans()):
        allowed = [h for h in HOPS if window is None or h <= window]
        hop = draw(st.sampled_from(allowed))
    return Agg(f"f{index}", function, column, window, hop, params)


@st.composite
def query_times(draw, count):
    """Query instants (UTC microseconds) around BASE, on and off hop boundaries."""
    times = []
    for _ in range(count):
        far = draw(st.sampled_from([None] * 8 + [-800 * D, 400 * D]))
        if far is not None:  # long before or after all other data
            times.append(BASE_US + us(far) + draw(st.sampled_from([0, 1, us(7 * MIN)])))
            continue
        step = draw(st.integers(-16, 16)) * us(30 * MIN)
        extra = draw(st.sampled_from([0, 1, us(S) - 1, us(7 * S), us(17 * MIN), us(30 * MIN) - 1, 123457]))
        times.append(BASE_US + step + extra)
    return times


@st.composite
def queries(draw):
    """(key, t) pairs, with repeated rows and keys that have no events."""
    n = draw(st.integers(1, 6))
    keys = draw(st.lists(st.sampled_from(QUERY_KEYS), min_size=n, max_size=n))
    times = draw(query_times(n))
    pairs = list(zip(keys, times, strict=True))
    for _ in range(draw(st.integers(0, 2))):
        pairs.insert(draw(st.integers(0, len(pairs))), pairs[draw(st.integers(0, len(pairs) - 1))])
    return pairs


ALL_HOPS = sorted(set(HOPS) | set(ref.STANDARD_HOPS))


def anchors_for(t, windows, ttl=None):
    """Instants an event should sit on (or 1 us either side of) to probe query time t.

    Besides t itself: t - W and floor_H(t - W) for every window W and EVERY hop H in use
    or on the default ladder (not just the one the reference picks), so an engine that
    picks the wrong hop, or floors wrongly, meets events right at its wrong boundary.
    """
    points = [t]
    for window in windows:
        if window is None:
            continue
        points.append(t - us(window))
        for hop in ALL_HOPS:
            points.append(ref.floor_to_multiple(t - us(window), us(hop)))
    if ttl is not None:
        points.append(t - us(ttl))
    return sorted(set(points))


@st.composite
def keyed_event_times(draw, pairs, windows, ttl=None, max_rows=25):
    """(key, ts, created-or-None) triples; most target one query's key and boundaries."""
    triples = []
    for _ in range(draw(st.integers(0, max_rows))):
        kind = draw(st.sampled_from(["target"] * 5 + ["same", "grid", "far", "null"]))
        key = draw(source_keys)
        if kind == "target":
            query_key, t = draw(st.sampled_from(pairs))
            if query_key in KNOWN_KEYS and draw(st.integers(0, 3)) > 0:
                key = query_key
            ts = draw(st.sampled_from(anchors_for(t, windows, ttl))) + draw(st.sampled_from([0, -1, 1]))
        elif kind == "same" and triples:  # same key and timestamp as an earlier event
            key, ts, _created = draw(st.sampled_from(triples))
        elif kind == "far":
            ts = BASE_US - us(400 * D) + draw(st.integers(0, 3)) * us(H)
        elif kind == "null":
            ts = None
        else:
            step = draw(st.integers(-2 * 24 * 4 - 8, 40)) * us(15 * MIN)
            ts = BASE_US + step + draw(st.sampled_from([0, 1, -1, us(7 * MIN), us(30 * S)]))
        triples.append((key, ts, draw(created_times(ts, pairs))))
    return triples


@st.composite
def created_times(draw, ts, pairs):
    """A created timestamp: null, relative to ts, or at a query time (exactly or 1 us either side)."""
    kind = draw(st.sampled_from(["relative", "relative", "query", "query", "null"]))
    if kind == "null":
        return None
    if kind == "query" or ts is None:
        t = draw(st.sampled_from([t for _k, t in pairs]))
        return t + draw(st.sampled_from([0, -1, 1]))
    return ts + draw(st.sampled_from([0, 1, us(S), us(10 * MIN), us(H), us(D), -us(H)]))


@st.composite
def aggregation_views(draw, pairs, amount_values=amounts):
    has_created = draw(st.booleans())
    n_features = draw(st.integers(1, 6))
    features = [draw(aggregations(i)) for i in range(n_features)]
    view_hop = None
    if draw(st.booleans()):
        windows = [a.window for a in features if a.hop is None and a.window is not None]
        allowed = [h for h in HOPS if all(h <= w for w in windows)]
        view_hop = draw(st.sampled_from(allowed))
    rows = []
    for key, ts, created in draw(keyed_event_times(pairs, [a.window for a in features])):
        row = {"customer_id": key, "event_timestamp": dt(ts), "amount": draw(amount_values),
               "qty": draw(quantities), "category": draw(categories)}
        if has_created:
            row["created"] = dt(created)
        rows.append(row)
    created_field = "created" if has_created else None
    ts_type = draw(st.sampled_from(SOURCE_TS_TYPES))
    return AggregationView(name="spend", features=tuple(features), rows=tuple(rows), created_field=created_field,
                           hop=view_hop, schema=ref.default_event_schema(created_field, ts_type))


@st.composite
def snapshot_views(draw, pairs):
    has_created = draw(st.booleans())
    ttl = draw(st.sampled_from([None, 10 * S, H, 90 * MIN, D, 3 * D]))
    rows = []
    for key, ts, created in draw(keyed_event_times(pairs, [], ttl, max_rows=10)):
        row = {"customer_id": key, "updated_at": dt(ts),
               "age": draw(st.one_of(st.none(), st.integers(18, 90))), "segment": draw(categories)}
        if has_created:
            row["created"] = dt(created)
        rows.append(row)
    created_field = "created" if has_created else None
    return SnapshotView(name="profile", fields=(("age", "int64"), ("segment", "string")), rows=tuple(rows),
                        created_field=created_field, ttl=ttl,
                        schema=ref.default_profile_schema(created_field, draw(st.sampled_from(SOURCE_TS_TYPES))))


def string_key(key):
    return None if key is None else f"c{key}"


def with_string_keys(view):
    """The same view keyed by strings ("c1", "c2", ...) instead of integers."""
    rows = tuple({**row, "customer_id": string_key(row["customer_id"])} for row in view.rows)
    schema = tuple((c, "string" if c == "customer_id" else t) for c, t in view.schema)
    return replace(view, rows=rows, schema=schema)


@st.composite
def entity_frames(draw, pairs, string_keys=False):
    """The entity DataFrame for (key, t) pairs in a random zone and unit, maybe with an odd index."""
    zone = draw(st.sampled_from(QUERY_ZONES))
    unit = draw(st.sampled_from(["us", "ns"]))
    times = pd.to_datetime([t for _k, t in pairs], unit="us", utc=True)
    if zone == "naive":
        times = times.tz_localize(None)
    elif zone != "UTC":
        times = times.tz_convert(zone)
    keys = [string_key(k) for k, _t in pairs] if string_keys else np.array([k for k, _t in pairs], dtype="int64")
    frame = pd.DataFrame({"customer_id": keys,
                          "event_timestamp": times.as_unit(unit),
                          "row_id": np.arange(len(pairs), dtype="int64")})
    if draw(st.booleans()):
        frame.index = list(reversed(range(len(pairs))))
    return frame


@st.composite
def scenarios(draw, aggregation=True, snapshot=False, amount_values=amounts):
    pairs = draw(queries())
    views = []
    refs = []
    if aggregation:
        view = draw(aggregation_views(pairs, amount_values))
        views.append(view)
        refs += [f"spend:{a.name}" for a in view.features]
    if snapshot:
        view = draw(snapshot_views(pairs))
        views.append(view)
        refs += draw(st.sampled_from([["profile:age", "profile:segment"], ["profile:segment", "profile:age"],
                                      ["profile:age"]]))
    if aggregation and snapshot:
        refs = draw(st.permutations(refs))
    string_keys = draw(st.sampled_from([False, False, True]))
    if string_keys:
        views = [with_string_keys(v) for v in views]
    entity_df = draw(entity_frames(pairs, string_keys))
    return views, entity_df, refs


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------


def describe(views, entity_df, refs):
    lines = [f"features: {refs}", f"entity_df:\n{entity_df}"]
    for view in views:
        lines.append(f"view {view.name}: " + ", ".join(
            f"{k}={getattr(view, k)!r}" for k in ("features", "fields", "hop", "ttl", "created_field", "schema")
            if hasattr(view, k)))
        for row in view.rows:
            lines.append(f"    {row}")
    return "\n".join(lines)


def assert_agrees_with_reference(out, views, entity_df, refs):
    entity_rows = ref.entity_rows_of(entity_df)
    assert len(out) == len(entity_df), f"{len(out)} output rows for {len(entity_df)} entity rows"
    assert [ref.normalize_value(v) for v in out["row_id"]] == list(range(len(entity_df))), "row order changed"
    problems = ref.mismatches(out, entity_rows, views, refs)
    assert not problems, "\n".join(problems) + "\n\n" + describe(views, entity_df, refs)


def _same(a, b):
    """Equal, except that floats may differ in rounding: materialized tiles add the same values in another
    order. 1e-12 relative is a thousand times tighter than the contract's 1e-9."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def assert_identical(before, after):
    assert list(before.columns) == list(after.columns)
    assert len(before) == len(after)
    for column in before.columns:
        a = [ref.normalize_value(v) for v in before[column]]
        b = [ref.normalize_value(v) for v in after[column]]
        assert all(_same(x, y) for x, y in zip(a, b, strict=True)), (
            f"column {column} changed by materialize:\nbefore {a}\nafter  {b}")


class SharedRepo:
    """One repo and one FeatureStore for many examples.

    Every example gets its own view names (``spend_7``, ``profile_7``) and parquet files,
    and the whole desired set is re-applied, so nothing (tiles included) can carry over
    from one example to the next; it only saves opening a new store for each example.
    """

    def __init__(self, engine="duckdb"):
        self.dir = tempfile.mkdtemp(prefix="semantics_property_")
        self.store = None
        self.examples = 0
        self.engine = engine

    def run(self, views, entity_df, refs, materialize_ends=()):
        """Engine results before and after each materialize(end=...), and the renamed views and refs."""
        self.examples += 1
        renamed = [replace(v, name=f"{v.name}_{self.examples}") for v in views]
        names = {v.name: r.name for v, r in zip(views, renamed, strict=True)}
        refs = [f"{names[r.split(':')[0]]}:{r.split(':')[1]}" for r in refs]
        self.store = ref.open_store(self.dir, renamed, store=self.store, engine=self.engine)
        results = [ref.engine_query(self.store, entity_df, refs)]
        for end in materialize_ends:
            self.store.materialize(end=end)
            results.append(ref.engine_query(self.store, entity_df, refs))
        return results, renamed, refs


@pytest.fixture(scope="module")
def repo():
    shared = SharedRepo()
    yield shared
    shutil.rmtree(shared.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------


@SETTINGS
@given(scenarios(aggregation=True))
def test_aggregations_match_reference(repo, scenario):
    views, entity_df, refs = scenario
    [out], views, refs = repo.run(views, entity_df, refs)
    assert_agrees_with_reference(out, views, entity_df, refs)


@SETTINGS
@given(scenarios(aggregation=False, snapshot=True))
def test_snapshot_features_match_reference(repo, scenario):
    views, entity_df, refs = scenario
    [out], views, refs = repo.run(views, entity_df, refs)
    assert_agrees_with_reference(out, views, entity_df, refs)


@MATERIALIZE_SETTINGS
@given(scenarios(aggregation=True, snapshot=True), st.data())
def test_materialize_changes_no_result(repo, scenario, data):
    views, entity_df, refs = scenario
    candidates = sorted({ref.to_micros(r["event_timestamp"]) for r in ref.entity_rows_of(entity_df)})
    ends = []
    for _ in range(data.draw(st.integers(1, 2), label="number of materialize calls")):
        if data.draw(st.booleans()):
            end = data.draw(st.sampled_from(candidates)) + data.draw(st.sampled_from([0, 1, -1, us(H), -us(D)]))
        else:
            end = BASE_US + data.draw(st.integers(-3 * 24, 24)) * us(H) + 1234567
        ends.append(end)
    data.draw(st.just([dt(e) for e in ends]), label="materialize ends")
    results, views, refs = repo.run(views, entity_df, refs, [dt(end) for end in ends])
    assert_agrees_with_reference(results[0], views, entity_df, refs)
    for after in results[1:]:
        assert_identical(results[0], after)


@MATERIALIZE_SETTINGS
@given(scenarios(aggregation=True, amount_values=cent_amounts), st.data())
def test_materialize_changes_no_result_beyond_rounding_with_inexact_floats(repo, scenario, data):
    """Two-decimal amounts (0.1 is not a binary fraction): sums, means and standard deviations
    must agree with and without materialization to float rounding (1e-12 relative), and be within
    1e-9 of exact relative to the magnitude of the values in the window."""
    views, entity_df, refs = scenario
    ends = [BASE_US + data.draw(st.integers(-3 * 24, 24), label="end hour") * us(H)
            + data.draw(st.sampled_from([0, 1, -1, 1234567]), label="end offset")
            for _ in range(data.draw(st.integers(1, 2), label="number of materialize calls"))]
    results, views, refs = repo.run(views, entity_df, refs, [dt(end) for end in ends])
    for after in results[1:]:
        assert_identical(results[0], after)
    # and they are within the contract's 1e-9 (relative to the values in the window) of exact
    assert_agrees_with_reference(results[0], views, entity_df, refs)


# --------------------------------------------------------------------------
# the reference against itself (no engine needed)
# --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios(aggregation=True))
def test_reference_windows_nest_and_never_see_the_future(scenario):
    """Sanity of the reference: an unbounded window sees a superset of a bounded one, no event at or
    after t is ever seen, and a Count is the number of events with start(t) <= ts < t."""
    views, entity_df, _refs = scenario
    [view] = views
    for entity_row in ref.entity_rows_of(entity_df):
        key = (entity_row["customer_id"],)
        assert key[0] is not None
        t = ref.to_micros(entity_row["event_timestamp"])
        for agg in view.features:
            selected = ref.events_in_window(view, agg, key, t)
            unbounded = ref.events_in_window(view, Agg("u", "count", None, None), key, t)
            assert all(item in unbounded for item in selected)
            assert all(ts < t for ts, _c, _r in selected)
            start = ref.window_start(t, agg.window, ref.effective_hop(agg, view.hop))
            if start is not None:
                assert start <= t - us(agg.window)
                assert all(ts >= start for ts, _c, _r in selected)


def test_every_registered_function_has_a_reference() -> None:
    """The suites draw every function of the registry; the slow reference must know each (tests/reference.py:
    aggregate_candidates and, for parameters, PARAMETERS)."""
    from feature_store.aggregations import FUNCTIONS as registered

    missing = sorted(set(registered) - set(ref.AGGREGATION_FUNCTIONS))
    assert not missing, f"tests/reference.py has no reference of {missing}: add it before the suites can run"
