"""Online equals offline: a replay harness over both online stores, plus explicit online-serving cases.

The harness draws random events (a few keys; timestamps on a coarse grid a few days before the
current wall-clock time; null values, keys, timestamps and created; equal timestamps; created
before and after ts; hop boundaries) for an aggregation view with every function and several hops
and windows (unbounded included), and for a snapshot view with a ttl. It then materializes at
increasing random ends E and reads online at random times N >= E (E itself, hop boundaries, event
timestamps, the instants an event leaves a window or a row its ttl, far later). Every online
value must equal the offline value at N computed over the data that was available at E: the
rows with max(ts, created) < E (rows with a null ts or created never are). Every read is checked
against the engine's own ``get_historical_features(..., available_before=E)`` and against
tests/reference.py (the slow reference of docs/semantics.md) over those rows; after a last
materialization that sees all data, also against plain ``get_historical_features``.

Times are on a 1-minute grid (windows, hops and ttls are whole minutes), so the time a value
stays in the store (measured from the materialization's end, applied from the wall clock) is
either zero or at least a minute: the few milliseconds between a write and a read never matter.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import feature_store as fs
from feature_store.errors import EntityDataFrameError, FeatureNotFoundError
from feature_store.offline.duckdb import online_tiles
from feature_store.online.keys import LAYOUT_VERSION, OWN
from feature_store.online.read import reader
from feature_store.store import FeatureStore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
from reference import Agg, AggregationView, SnapshotView

MIN, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
_NOW = datetime.now(UTC)
T0 = datetime(_NOW.year, _NOW.month, _NOW.day, tzinfo=UTC) - 5 * D  # day-aligned, well before now
SPAN = T0 + D  # most events fall in [SPAN, SPAN + 1d]
LAST_END = T0 + 4 * D  # after every created timestamp the strategies draw (at most SPAN + 2d 14min), before now
GRID = 15 * MIN
# reader.SMALL_READ values: reads finish in numpy (finish_many), or entity by entity in Python (finish_one)
READ_PATHS = {"numpy": -1, "python": 10**9}
PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE = "PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"


# every function, bounded and unbounded windows, default hops (5 min, 1 h; 1 day for unbounded windows), explicit
# hops (one of 7 min, which does not divide the grid), so one view holds several hop groups and the cumulative
# group (and, with a view hop of 15 min, fewer groups)
FEATURES = (
    Agg("n_all", "count", None, None),
    Agg("n_2h", "count", None, 2 * H),
    Agg("nc_6h", "count", "amount", 6 * H),
    Agg("s_1d", "sum", "amount", D),
    Agg("sq_2h", "sum", "qty", 2 * H, 7 * MIN),
    Agg("m_6h", "mean", "amount", 6 * H, H),
    Agg("m_all", "mean", "qty", None),
    Agg("mn_12h", "min", "amount", 12 * H),
    Agg("mx_2d", "max", "qty", 2 * D),
    Agg("mxc_1d", "max", "category", D),
    Agg("l_1d", "last", "category", D),
    Agg("l_all", "last", "amount", None),
    Agg("sd_1d", "stddev", "amount", D),
    Agg("sd_3h", "stddev", "qty", 3 * H, 7 * MIN),
    Agg("cd_3h", "count_distinct", "category", 3 * H, H),
    Agg("cd_all", "count_distinct", "qty", None),
)


def registered_features() -> tuple[Agg, ...]:
    """A feature per parameter set of every function of the library's registry that FEATURES lacks (over the
    first harness column it accepts; windows of 1 day, unbounded and 6 hours in turn): a new function module is
    covered here without editing this file."""
    from feature_store.aggregations import DEFINITIONS, FUNCTIONS

    present = {agg.function for agg in FEATURES}
    windows = [D, None, 6 * H]
    out = []
    for kind, function in sorted(FUNCTIONS.items()):
        if kind in present:
            continue
        columns = [c for c, t in ref.COLUMN_TYPES.items() if function.input_types is None or t in function.input_types]
        column = None if not DEFINITIONS[kind].needs_column else columns[0]
        for i, params in enumerate(ref.PARAMETERS.get(kind, ({},))):
            out.append(Agg(f"{kind}_{i}", kind, column, windows[len(out) % 3], None, tuple(sorted(params.items()))))
    return tuple(out)


FEATURES = FEATURES + registered_features()
EMPTY = {"count": 0, "sum": 0.0, "count_distinct": 0}  # the value of an unknown key (float sums: 0.0); None otherwise
# declared out of alphabetical order: rows tied on (ts, created) are ordered by value in declaration order
SNAPSHOT_FIELDS = (("segment", "string"), ("age", "int64"))
TTLS = [None, 2 * H, 6 * H, D]
KNOWN_KEYS = [1, 2, 3]
UNKNOWN_KEY = 4

SETTINGS = settings(max_examples=int(os.environ.get("ONLINE_EXAMPLES", "15")), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def us(value: datetime | timedelta) -> int:
    return ref.to_micros(value) if isinstance(value, datetime) else ref.duration_micros(value)


def dt(micros: int) -> datetime:
    return ref.from_micros(micros)


def scratch_dir(prefix: str) -> str:
    """A directory on tmpfs when there is one: DuckDB and SQLite commits fsync, and the harness commits a lot."""
    shm = "/dev/shm"
    return tempfile.mkdtemp(prefix=prefix, dir=shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None)


# --------------------------------------------------------------------------
# stores
# --------------------------------------------------------------------------


def write_config(repo: Path, project: str, online: dict[str, str]) -> None:
    inner = ", ".join(f"{k}: {v!r}" if k == "url" else f"{k}: {v}" for k, v in online.items())
    (repo / "feature_store.yaml").write_text(f"project: {project}\nonline_store: {{{inner}}}\n")


_projects = itertools.count()


def open_repo(repo: str, views: list[Any], online: dict[str, str]) -> FeatureStore:
    """A fresh repo (own project, so Redis keys never meet another example's) with the views applied."""
    write_config(Path(repo), f"p{next(_projects)}", online)
    store: FeatureStore = ref.open_store(repo, views)
    return store


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------

amounts = st.one_of(st.none(), st.sampled_from([0.0, 1.0, 2.5, -3.25, 1000.0, math.nan]),  # NaN: null
                    st.integers(-4000, 4000).map(lambda k: k / 4))  # exact in binary: sums are exact
quantities = st.one_of(st.none(), st.integers(-5, 5))
categories = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))
data_keys = st.sampled_from([1, 1, 2, 2, 3, None])


@st.composite
def event_times(draw: Any, count: int) -> list[tuple[Any, int | None, int | None]]:
    """(key, ts, created) triples on the 1-minute grid, clustered so that windows overlap."""
    triples: list[tuple[Any, int | None, int | None]] = []
    for _ in range(count):
        kind = draw(st.sampled_from(["grid"] * 6 + ["same", "early", "null"]))
        key = draw(data_keys)
        if kind == "same" and triples:  # the same key and timestamp as an earlier event
            key, ts, _ = draw(st.sampled_from(triples))
        elif kind == "early":  # before the main span: only unbounded windows and long ttls still see it
            ts = us(T0) + draw(st.integers(0, 3)) * us(H)
        elif kind == "null":
            ts = None
        else:
            ts = us(SPAN) + draw(st.integers(0, 96)) * us(GRID) + us(draw(st.sampled_from([0, 0, 0, 1, 7, 14])) * MIN)
        choice = draw(st.sampled_from(["same", "late", "late", "early", "null"]))
        if ts is None or choice == "null":
            created = None if draw(st.booleans()) else us(SPAN) + draw(st.integers(0, 96)) * us(GRID)
        elif choice == "same":
            created = ts
        elif choice == "late":  # landed after its event time
            created = ts + us(draw(st.sampled_from([1, 15, 60, 360, 1440])) * MIN)
        else:  # created before its event time
            created = ts - us(H)
        triples.append((key, ts, created))
    return triples


@st.composite
def scenarios(draw: Any) -> tuple[AggregationView, SnapshotView]:
    has_created = draw(st.booleans())
    view_hop = draw(st.sampled_from([None, None, 15 * MIN]))  # at most the smallest window (1h)
    rows = []
    for key, ts, created in draw(event_times(draw(st.integers(0, 30)))):
        row = {"customer_id": key, "event_timestamp": None if ts is None else dt(ts),
               "amount": draw(amounts), "qty": draw(quantities), "category": draw(categories)}
        if has_created:
            row["created"] = None if created is None else dt(created)
        rows.append(row)
    created_field = "created" if has_created else None
    # without the unbounded distinct count, every partial of the cumulative group is in an offline tile table
    features = FEATURES if draw(st.booleans()) else tuple(a for a in FEATURES if a.name != "cd_all")
    spend = AggregationView(name="spend", features=features, rows=tuple(rows), created_field=created_field,
                            hop=view_hop, schema=ref.default_event_schema(created_field))
    snap_created = draw(st.booleans())
    snap_rows = []
    for key, ts, created in draw(event_times(draw(st.integers(0, 12)))):
        row = {"customer_id": key, "updated_at": None if ts is None else dt(ts),
               "age": draw(st.one_of(st.none(), st.integers(18, 90))), "segment": draw(categories)}
        if snap_created:
            row["created"] = None if created is None else dt(created)
        snap_rows.append(row)
    snap_field = "created" if snap_created else None
    profile = SnapshotView(name="profile", fields=SNAPSHOT_FIELDS, rows=tuple(snap_rows), created_field=snap_field,
                           ttl=draw(st.sampled_from(TTLS)), schema=ref.default_profile_schema(snap_field))
    return spend, profile


def row_times(view: AggregationView | SnapshotView, row: dict[str, Any]) -> tuple[int | None, int | None]:
    ts = ref.to_micros(row.get(view.timestamp_field))
    created = ref.to_micros(row.get(view.created_field)) if view.created_field else ts
    return ts, created


def available(view: Any, end: int) -> Any:
    """The view with only the rows available at ``end``: ts and created known and both before ``end``."""
    rows = []
    for row in view.rows:
        ts, created = row_times(view, row)
        if ts is not None and created is not None and max(ts, created) < end:
            rows.append(row)
    return replace(view, rows=tuple(rows))


def critical_times(spend: AggregationView, profile: SnapshotView) -> list[int]:
    """Instants where something changes: event and created times, the first instant an event leaves
    each window (floor_H(ts) + H + W), the end of each snapshot row's ttl (and a minute later)."""
    points: set[int] = set()
    for row in spend.rows:
        ts, created = row_times(spend, row)
        for t in (ts, created):
            if t is not None:
                points.update((t, t + us(MIN)))
        if ts is None:
            continue
        for agg in spend.features:
            if agg.window is not None:
                hop = us(ref.effective_hop(agg, spend.hop))
                leave = ref.floor_to_multiple(ts, hop) + hop + us(agg.window)
                points.update((leave - us(MIN), leave))
    for row in profile.rows:
        ts, created = row_times(profile, row)
        for t in (ts, created):
            if t is not None:
                points.add(t)
        if ts is not None and profile.ttl is not None:
            points.update((ts + us(profile.ttl), ts + us(profile.ttl) + us(MIN)))
    return sorted(points)


def ttl_ends(profile: SnapshotView) -> set[int]:
    """The instants at which a snapshot row is exactly ``ttl`` old."""
    if profile.ttl is None:
        return set()
    return {ts + us(profile.ttl) for ts, _created in (row_times(profile, row) for row in profile.rows)
            if ts is not None}


def draw_end(data: Any, previous: int, critical: list[int], profile: SnapshotView) -> int:
    kind = data.draw(st.sampled_from(["critical", "critical", "ttl", "grid"]), label="end kind")
    after = [t for t in critical if previous <= t <= us(LAST_END)]
    at_ttl = sorted(t for t in ttl_ends(profile) if previous <= t <= us(LAST_END))
    if kind == "ttl" and at_ttl:  # a snapshot row is exactly ttl old at the end
        end = int(data.draw(st.sampled_from(at_ttl), label="end"))
    elif kind != "grid" and after:
        end = int(data.draw(st.sampled_from(after), label="end"))
    else:
        step = data.draw(st.integers(0, 2 * 96), label="end grid steps")
        end = min(us(LAST_END), max(previous, us(SPAN) + step * us(GRID)))
    return end


def draw_read_time(data: Any, end: int, critical: list[int]) -> int:
    kind = data.draw(st.sampled_from(["end", "end", "critical", "critical", "grid", "odd", "far"]), label="read kind")
    after = [t for t in critical if t >= end]
    if kind == "critical" and after:
        return int(data.draw(st.sampled_from(after), label="read at"))
    if kind == "grid":  # a hop boundary after the end
        return ref.floor_to_multiple(end, us(GRID)) + data.draw(st.integers(1, 4 * 24 * 2), label="steps") * us(GRID)
    if kind == "odd":  # off the grid, just after the end
        return end + data.draw(st.sampled_from([1, 123457, us(7 * MIN) + 1]), label="odd offset")
    if kind == "far":
        return end + us(30 * D)
    return end


def draw_keys(data: Any) -> tuple[list[int], list[Any]]:
    """The keys (for the expectation) and what is sent (sometimes an int key as a digit string)."""
    keys = data.draw(st.lists(st.sampled_from([*KNOWN_KEYS, UNKNOWN_KEY]), min_size=1, max_size=6), label="keys")
    sent = [str(k) if data.draw(st.integers(0, 4), label="as string") == 0 else k for k in keys]
    return keys, sent


# --------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------

AGG_REFS = [f"spend:{a.name}" for a in FEATURES]
SNAPSHOT_REFS = [f"profile:{name}" for name, _type in SNAPSHOT_FIELDS]  # declaration order


@st.composite
def feature_refs(draw: Any) -> list[str]:
    """Any non-empty subset of the two views' features, in any order (mostly all of them)."""
    everything = [*AGG_REFS, *SNAPSHOT_REFS]
    if draw(st.booleans()):
        return list(draw(st.permutations(everything)))
    return list(draw(st.lists(st.sampled_from(everything), min_size=1, max_size=6, unique=True)))


def describe(spend: AggregationView, profile: SnapshotView, ends: list[int]) -> str:
    lines = [f"spend hop={spend.hop} created={spend.created_field}; profile ttl={profile.ttl} "
             f"created={profile.created_field}; materialized at {[str(dt(e)) for e in ends]}"]
    for view in (spend, profile):
        lines += [f"  {view.name}: {row}" for row in view.rows]
    return "\n".join(lines)


def output_order(refs: list[str]) -> list[str]:
    """Output columns: per view in order of first mention, its features in request order (as offline)."""
    views = list(dict.fromkeys(r.split(":")[0] for r in refs))
    return [r.split(":")[1] for v in views for r in refs if r.split(":")[0] == v]


def greatest(acceptable: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """docs/semantics.md: of values tied on (ts, created), the greatest wins (Last; snapshot rows column by column
    in declaration order, a null below any value)."""
    return max(acceptable, key=lambda values: tuple((v is not None, v) for v in values))


def check_phase(store: FeatureStore, spend: AggregationView, profile: SnapshotView, end: int,
                reads: list[tuple[int, list[int], list[Any]]], refs: list[str], context: str,
                available_before: int | None) -> None:
    """Online values of each read (now, keys, keys as sent) against the offline values at ``now`` over the data
    available at ``end``: the reference's, and the engine's ``get_historical_features`` (one call for all the
    reads, with ``available_before``, unless None)."""
    responses = []
    for now, _keys, sent in reads:
        both = []
        for small in READ_PATHS.values():  # every read by both finishing paths, whatever its size
            with mock.patch.object(reader, "SMALL_READ", small):
                response = store.get_online_features(refs, {"customer_id": sent}, now=dt(now))
            assert response.to_dict()["customer_id"] == sent
            assert list(response.values) == output_order(refs)
            both.append(response)
        responses.append(both)
    rows = [(now, key, i, j) for i, (now, keys, _sent) in enumerate(reads) for j, key in enumerate(keys)]
    entity_rows = [{"customer_id": key, "event_timestamp": dt(now)} for now, key, _i, _j in rows]
    # the reference over every snapshot field in declaration order: which of several tied rows wins depends on
    # all of its values, also those of fields not requested
    full_refs = [r for r in refs if r.startswith("spend:")] + SNAPSHOT_REFS
    constraints = ref.expected_constraints(entity_rows, [available(spend, end), available(profile, end)], full_refs)
    entity_df = pd.DataFrame({"customer_id": np.array([key for _now, key, _i, _j in rows], dtype="int64"),
                              "event_timestamp": pd.to_datetime([now for now, *_ in rows], unit="us", utc=True)})
    cutoff = None if available_before is None else dt(available_before)
    offline = store.get_historical_features(entity_df, refs, available_before=cutoff).to_df()
    problems = []
    for (r, ((now, key, i, j), row_constraints)), path in itertools.product(
            enumerate(zip(rows, constraints, strict=True)), range(len(READ_PATHS))):
        response, sent = responses[i][path], reads[i][2][j]
        where = f"key {sent!r} at {dt(now)} ({list(READ_PATHS)[path]})"
        expected: dict[str, tuple[Any, float, list[Any]]] = {}  # column -> (value, float slack, tied candidates)
        for columns, acceptable, slack in row_constraints:
            best = greatest(acceptable)
            for n, column in enumerate(columns):
                expected[column] = (best[n], slack, sorted({repr(a[n]) for a in acceptable}))
        for name in response.values:
            value, status = response.values[name][j], response.statuses[name][j]
            want, slack, candidates = expected[name]
            got, engine = ref.normalize_value(value), ref.normalize_value(offline[name].iloc[r])
            if not ref.values_match(got, want, abs_tol=slack):
                problems.append(f"{where}: {name} online {got!r}, reference {want!r} (tied: {candidates}; engine "
                                f"offline {engine!r})")
            elif not ref.values_match(got, engine, abs_tol=slack):
                problems.append(f"{where}: {name} online {got!r}, engine offline {engine!r} (reference {want!r})")
            if key == UNKNOWN_KEY:
                agg = next((a for a in FEATURES if a.name == name), None)
                empty = EMPTY.get(agg.function) if agg else None
                if agg is not None and agg.function not in EMPTY:  # what the reference gives an empty window
                    empty = ref.aggregate_candidates(agg.function, agg.column, [], False, agg.params)[0]
                if agg is not None and agg.function == "sum" and isinstance(engine, int):
                    empty = 0  # a sum of integers is an integer; of floats, 0.0 (as offline)
                if status != NOT_FOUND or value != empty or type(value) is not type(empty):
                    problems.append(f"{where}: {name} = {value!r} ({status}), expected {empty!r} (NOT_FOUND)")
            elif status not in (PRESENT, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE):
                problems.append(f"{where}: {name}: unknown status {status!r}")
            elif status != NOT_FOUND and (value is None) == (status == PRESENT):  # PRESENT exactly with a value
                problems.append(f"{where}: {name} = {value!r} with status {status}")
    assert not problems, "\n".join(problems[:12]) + "\n\n" + context


# --------------------------------------------------------------------------
# the replay harness
# --------------------------------------------------------------------------


@SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_online_equals_offline_over_the_data_available_at_the_last_materialization(
        online_store: dict[str, str], scenario: tuple[AggregationView, SnapshotView], data: Any) -> None:
    spend, profile = scenario
    repo = scratch_dir("online_consistency_")
    store = None
    stack = contextlib.ExitStack()
    # Values computed in one hash bucket, or in several: by entities, or by tiles (each bucket's part of the staged
    # events and of the offline tables).
    sizing = data.draw(st.sampled_from([{}, {"ENTITIES_PER_CHUNK": 2}, {"TILES_PER_CHUNK": 4}]), label="buckets")
    try:
        for name, value in sizing.items():
            stack.enter_context(mock.patch.object(online_tiles, name, value))
        store = open_repo(repo, [spend, profile], online_store)
        critical = critical_times(spend, profile)
        defined = {f"spend:{a.name}" for a in spend.features}
        refs = [r for r in data.draw(feature_refs(), label="features") if r in defined or r in SNAPSHOT_REFS]
        refs = refs or SNAPSHOT_REFS
        ends: list[int] = []
        end = us(SPAN) - us(D)
        # Online values re-use the offline tiles that end by the offline watermark and merge in what they lack:
        # the offline watermark is drawn ahead of the online end (offline materialized to the last end first),
        # with it (one materialize), or behind it (offline only to the previous end).
        offline = data.draw(st.sampled_from(["with", "ahead", "behind"]), label="offline watermark")
        if offline == "ahead":
            store.materialize(end=LAST_END, online=False)
        for _ in range(data.draw(st.integers(1, 2), label="materializations")):
            previous, end = end, draw_end(data, end, critical, profile)
            ends.append(end)
            if offline == "behind":
                store.materialize(end=dt(previous), online=False)
                catalog = store.catalog()
                store.online.materialize(store.offline, catalog, list(catalog.views), dt(end), False, None)
            else:
                store.materialize(end=dt(end))
            reads = [(draw_read_time(data, end, critical), *draw_keys(data))
                     for _ in range(data.draw(st.integers(1, 3), label="reads"))]
            check_phase(store, spend, profile, end, reads, refs, describe(spend, profile, ends), end)
        # a last materialization sees every row: online must equal plain get_historical_features too
        ends.append(us(LAST_END))
        store.materialize(end=LAST_END)
        keys = [*KNOWN_KEYS, UNKNOWN_KEY]
        reads = [(draw_read_time(data, us(LAST_END), critical), keys, keys) for _ in range(2)]
        check_phase(store, spend, profile, us(LAST_END), reads, refs, describe(spend, profile, ends), None)
    finally:
        stack.close()
        if store is not None:
            store.close()
        shutil.rmtree(repo, ignore_errors=True)


# --------------------------------------------------------------------------
# explicit cases
# --------------------------------------------------------------------------

DAY = T0 + D  # a day boundary, a few days before now


def tx_rows() -> list[dict[str, Any]]:
    def tx(key: int, ts: datetime, amount: float | None, category: str | None) -> dict[str, Any]:
        return {"customer_id": key, "event_timestamp": ts, "created": ts + 10 * MIN, "amount": amount,
                "category": category}

    return [
        tx(1, DAY + 1 * H, 10.0, "a"), tx(1, DAY + 2 * H, 20.0, "b"), tx(1, DAY + 5 * H, 30.0, "a"),
        tx(1, DAY + 5 * H + 20 * MIN, 5.0, "c"),
        tx(2, DAY + 3 * H, None, None),
        tx(3, T0, 7.0, "c"),  # long ago: only the unbounded Count sees it
    ]


def profile_rows() -> list[dict[str, Any]]:
    return [
        {"customer_id": 1, "updated_at": DAY + 1 * H, "tier": "gold", "score": 5},
        {"customer_id": 2, "updated_at": DAY, "tier": "silver", "score": 7},
        {"customer_id": 3, "updated_at": DAY + 2 * H, "tier": None, "score": 3},
    ]


def definitions(sum_window: str = "1d") -> list[Any]:
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    tx = fs.FileSource(name="tx", path="data/tx/*.parquet", created_timestamp_field="created")
    spend = fs.FeatureView(name="spend", entities=[customer], source=tx, features=[
        fs.Count(window=None, name="n_all"), fs.Count(window="2h", name="n_2h"),
        fs.Sum("amount", window=sum_window, name="s"), fs.Mean("amount", window="2h", name="m_2h"),
        fs.Last("category", window="1d", name="last_cat"), fs.Max("amount", window="1d", name="mx"),
    ])
    profiles = fs.FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
    profile = fs.FeatureView(name="profile", entities=[customer], source=profiles,
                             features=[fs.Field("tier", "string"), fs.Field("score", "int64")], ttl="1d")
    return [customer, tx, spend, profiles, profile]


# Every feature of both views, in definition order: the explicit cases read whole views (a subset of a view's
# features is test_a_subset_of_a_views_features).
SPEND = ["spend:n_all", "spend:n_2h", "spend:s", "spend:m_2h", "spend:last_cat", "spend:mx"]
PROFILE = ["profile:tier", "profile:score"]
ALL = SPEND + PROFILE
E = DAY + 6 * H  # materialization end of the explicit cases: every row above is available
KEYS = [1, 2, 3, 99]
AT_E: dict[str, list[Any]] = {  # the values at E, by docs/semantics.md
    "n_all": [4, 1, 1, 0],
    "n_2h": [2, 0, 0, 0],  # [4h, 6h)
    "s": [65.0, 0.0, 0.0, 0],  # [6h - 1d, 6h): not customer 3's old event
    "m_2h": [17.5, None, None, None],
    "last_cat": ["c", None, None, None],
    "mx": [30.0, None, None, None],
    "tier": ["gold", "silver", None, None],
    "score": [5, 7, 3, None],
}


def write_tx(repo: Path, rows: list[dict[str, Any]], name: str = "part1") -> None:
    frame = pd.DataFrame(rows)
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["amount"] = frame["amount"].astype("float64")
    frame.to_parquet(repo / "data" / "tx" / f"{name}.parquet", index=False)


def write_repo_data(path: Path) -> None:
    write_tx(path, tx_rows())
    frame = pd.DataFrame(profile_rows())
    frame["customer_id"] = frame["customer_id"].astype("int64")
    frame["score"] = frame["score"].astype("int64")
    frame.to_parquet(path / "data" / "profiles.parquet", index=False)


@pytest.fixture
def repo(online_store: dict[str, str]) -> Iterator[Path]:
    path = Path(scratch_dir("online_cases_"))
    (path / "data" / "tx").mkdir(parents=True)
    write_config(path, "cases", online_store)
    write_repo_data(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(repo: Path) -> Iterator[FeatureStore]:
    opened = FeatureStore(repo)
    opened.apply(definitions())
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def served(module_online_store: dict[str, str]) -> Iterator[FeatureStore]:
    """One repo per store, materialized at E, for the cases that only read (they must not change it)."""
    path = Path(scratch_dir("online_served_"))
    (path / "data" / "tx").mkdir(parents=True)
    write_config(path, "cases", module_online_store)
    write_repo_data(path)
    opened = FeatureStore(path)
    opened.apply(definitions())
    opened.materialize(end=E)
    yield opened
    opened.close()
    shutil.rmtree(path, ignore_errors=True)


def offline_at(store: FeatureStore, keys: list[int], now: datetime | list[datetime],
               refs: list[str] = ALL) -> dict[str, list[Any]]:
    """get_historical_features for every key at every ``now`` (now-major order), as plain values."""
    nows = now if isinstance(now, list) else [now]
    entity_df = pd.DataFrame({"customer_id": np.array(keys * len(nows), dtype="int64"),
                              "event_timestamp": pd.to_datetime([t for t in nows for _ in keys], utc=True)})
    out = store.get_historical_features(entity_df, refs).to_df()
    return {c: [ref.normalize_value(v) for v in out[c]] for c in out.columns if c != "event_timestamp"}


def assert_online_equals_offline(store: FeatureStore, keys: list[int], now: datetime | list[datetime],
                                 refs: list[str] = ALL) -> None:
    nows = now if isinstance(now, list) else [now]
    offline = offline_at(store, keys, nows, refs)
    for n, t in enumerate(nows):
        online = store.get_online_features(refs, {"customer_id": keys}, now=t).to_dict()
        assert list(online) == list(offline)
        for column in online:
            expected = offline[column][n * len(keys):(n + 1) * len(keys)]
            assert all(ref.values_match(o, e) for o, e in zip(online[column], expected, strict=True)), (
                t, column, online[column], expected)


def test_values_and_statuses(served: FeatureStore) -> None:
    response = served.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    assert response.values == AT_E
    assert_online_equals_offline(served, KEYS, E)
    assert response.statuses["n_all"] == [PRESENT, PRESENT, PRESENT, NOT_FOUND]
    assert response.statuses["n_2h"] == [PRESENT, PRESENT, PRESENT, NOT_FOUND]
    # Mean over [4h, 6h): customer 2's only event is out of it (and null), customer 3 is known (its lifetime
    # count is 1) but has nothing in the window: NULL_VALUE; customer 99 is unknown: NOT_FOUND
    assert response.statuses["m_2h"] == [PRESENT, NULL_VALUE, NULL_VALUE, NOT_FOUND]
    assert response.statuses["last_cat"] == [PRESENT, NULL_VALUE, NULL_VALUE, NOT_FOUND]
    assert response.statuses["s"] == [PRESENT, PRESENT, PRESENT, NOT_FOUND]
    # snapshot: a null column of a row in its ttl is NULL_VALUE
    assert response.statuses["tier"] == [PRESENT, PRESENT, NULL_VALUE, NOT_FOUND]
    assert response.statuses["score"] == [PRESENT, PRESENT, PRESENT, NOT_FOUND]
    assert type(response.values["n_all"][0]) is int and type(response.values["score"][0]) is int


def test_outside_max_age(served: FeatureStore) -> None:
    # a day later, without materializing again: customer 2's row (updated DAY) is older than the 1d ttl
    later = DAY + D + 30 * MIN
    response = served.get_online_features(ALL, {"customer_id": KEYS}, now=later)
    assert response.values["tier"] == ["gold", None, None, None]
    assert response.values["score"] == [5, None, 3, None]
    assert response.statuses["tier"] == [PRESENT, OUTSIDE_MAX_AGE, NULL_VALUE, NOT_FOUND]
    assert response.statuses["score"] == [PRESENT, OUTSIDE_MAX_AGE, PRESENT, NOT_FOUND]
    assert_online_equals_offline(served, KEYS, later)


def test_snapshot_row_at_exactly_its_ttl(store: FeatureStore, request: pytest.FixtureRequest) -> None:
    """docs/semantics.md: a snapshot row is used while ts >= t - ttl, so at t = ts + ttl exactly it still is.
    Materialized at that instant and read at that instant, online must serve it like offline does."""
    end = DAY + D  # customer 2's row (updated DAY) is exactly 1d (its ttl) old
    assert offline_at(store, [2], end)["tier"] == ["silver"]
    store.materialize(end=end)
    time.sleep(0.01)  # a read a few milliseconds after the materialization, replayed at its end
    response = store.get_online_features(ALL, {"customer_id": [2]}, now=end)
    assert (response.values["tier"], response.statuses["tier"]) == (["silver"], [PRESENT])


def test_event_timestamps(served: FeatureStore) -> None:
    response = served.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    stamps = response.event_timestamps
    # aggregation: the latest event among those the feature aggregated; snapshot: the row's timestamp
    assert stamps["n_all"] == [DAY + 5 * H + 20 * MIN, DAY + 3 * H, T0, None]
    assert stamps["m_2h"] == [DAY + 5 * H + 20 * MIN, None, None, None]
    assert stamps["s"] == [DAY + 5 * H + 20 * MIN, DAY + 3 * H, None, None]
    assert stamps["tier"] == [DAY + H, DAY, DAY + 2 * H, None]
    assert stamps["score"] == stamps["tier"]
    assert list(stamps) == list(response.values)
    assert all(t is None or t.tzinfo is not None for ts in stamps.values() for t in ts)


def test_to_dict_and_to_df(served: FeatureStore) -> None:
    order = [2, 1, 99, 1]
    response = served.get_online_features(ALL, {"customer_id": order}, now=E)
    expected = {"customer_id": order, **{name: [values[KEYS.index(k)] for k in order] for name, values in AT_E.items()}}
    assert response.to_dict() == expected
    assert list(response.to_dict()) == ["customer_id", "n_all", "n_2h", "s", "m_2h", "last_cat", "mx", "tier", "score"]
    frame = response.to_df()
    assert list(frame.columns) == list(expected)
    assert len(frame) == 4
    for column, values in expected.items():
        assert [ref.normalize_value(v) for v in frame[column]] == values, column


def test_full_feature_names(served: FeatureStore) -> None:
    response = served.get_online_features(ALL, {"customer_id": [1]}, full_feature_names=True, now=E)
    assert response.to_dict() == {"customer_id": [1], **{r.replace(":", "__"): [AT_E[r.split(":")[1]][0]]
                                                         for r in ALL}}


def test_feature_service(store: FeatureStore) -> None:
    objects = definitions()
    spend, profile = objects[2], objects[4]
    store.apply([*objects, fs.FeatureService(name="model", features=[spend, profile])])
    store.materialize(end=E)
    by_service = store.get_online_features(store.get_feature_service("model"), {"customer_id": KEYS}, now=E)
    assert by_service.to_dict() == {"customer_id": KEYS, **AT_E}


def test_entity_rows_as_list_of_dicts_or_dict_of_lists(served: FeatureStore) -> None:
    as_lists = served.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    as_dicts = served.get_online_features(ALL, [{"customer_id": k} for k in KEYS], now=E)
    assert as_dicts.to_dict() == as_lists.to_dict()
    assert as_dicts.statuses == as_lists.statuses
    single = served.get_online_features(ALL, {"customer_id": 2}, now=E)  # a scalar is one row
    assert single.to_dict() == {k: v[1:2] for k, v in as_lists.to_dict().items()}
    empty = served.get_online_features(ALL, {"customer_id": []}, now=E)
    assert empty.to_dict() == {"customer_id": [], **{name: [] for name in AT_E}}


def test_int_key_as_digit_string(served: FeatureStore) -> None:
    as_int = served.get_online_features(ALL, {"customer_id": [1, 2]}, now=E)
    as_str = served.get_online_features(ALL, {"customer_id": ["1", "2"]}, now=E)
    assert as_str.values == as_int.values
    assert as_str.statuses == as_int.statuses
    assert as_str.statuses["n_all"] == [PRESENT, PRESENT]
    mixed = served.get_online_features(ALL, [{"customer_id": "1"}, {"customer_id": 1}, {"customer_id": np.int64(1)}],
                                       now=E)
    assert mixed.values == {name: [values[0]] * 3 for name, values in AT_E.items()}
    with pytest.raises(EntityDataFrameError, match="customer_id"):
        served.get_online_features(ALL, {"customer_id": ["abc"]}, now=E)
    with pytest.raises(EntityDataFrameError, match="customer_id"):
        served.get_online_features(ALL, {"customer_id": [1, "1.5"]}, now=E)


def test_missing_join_key(served: FeatureStore) -> None:
    with pytest.raises(EntityDataFrameError, match="customer_id"):
        served.get_online_features(ALL, {"user_id": [1]}, now=E)
    with pytest.raises(EntityDataFrameError, match="customer_id"):
        served.get_online_features(ALL, [{"user_id": 1}], now=E)
    with pytest.raises(EntityDataFrameError, match="customer_id"):
        served.get_online_features(ALL, {"customer_id": [1, None]}, now=E)


def test_unknown_feature(served: FeatureStore) -> None:
    with pytest.raises(FeatureNotFoundError, match="nope"):
        served.get_online_features([*SPEND, "spend:nope"], {"customer_id": [1]}, now=E)
    with pytest.raises(FeatureNotFoundError, match="spnd"):
        served.get_online_features(["spnd:n_all"], {"customer_id": [1]}, now=E)


def test_a_subset_of_a_views_features(served: FeatureStore, request: pytest.FixtureRequest) -> None:
    """A request may name any features, in any order (a FeatureService usually takes a few of a view's)."""
    full = served.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    assert full.values == AT_E
    problems = []
    for subset in [[r] for r in ALL] + [list(reversed(SPEND)), ["spend:mx", "spend:s"], ["profile:score"]]:
        try:
            part = served.get_online_features(subset, {"customer_id": KEYS}, now=E)
        except Exception as exc:  # reported below with the others
            problems.append(f"{subset}: {type(exc).__name__}: {exc}")
            continue
        for name in part.values:
            if (part.values[name], part.statuses[name]) != (full.values[name], full.statuses[name]):
                problems.append(f"{subset}: {name} = {part.values[name]} alone, {full.values[name]} with the view")
    assert not problems, "\n".join(problems)


def test_materialize_twice_is_idempotent(store: FeatureStore) -> None:
    store.materialize(end=E)
    first = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    again = [r for r in store.materialize(end=E) if r.part == "online"]
    assert again and all(r.rows_written == 0 and not r.rebuilt for r in again)
    second = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    assert (second.values, second.statuses) == (first.values, first.statuses)
    # a new FeatureStore on the same repo serves the same values
    with FeatureStore(store.repo_path) as other:
        third = other.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    assert (third.values, third.statuses) == (first.values, first.statuses)


def test_materialize_after_new_data_lands(store: FeatureStore, repo: Path) -> None:
    store.materialize(end=E)
    before = store.get_online_features(ALL, {"customer_id": [1, 2, 4]}, now=E + 2 * H)
    assert before.values["n_all"] == [4, 1, 0]
    new_rows = [
        {"customer_id": 1, "event_timestamp": DAY + 6 * H + 30 * MIN, "created": DAY + 6 * H + 40 * MIN,
         "amount": 100.0, "category": "c"},
        {"customer_id": 4, "event_timestamp": DAY + 7 * H, "created": DAY + 7 * H, "amount": 5.0, "category": "a"},
        # late data: an old event that lands now
        {"customer_id": 2, "event_timestamp": DAY + 4 * H, "created": DAY + 7 * H + 30 * MIN, "amount": 8.0,
         "category": "b"},
    ]
    write_tx(repo, new_rows, "part2")
    end2 = DAY + 8 * H
    store.materialize(end=end2)
    after = store.get_online_features(ALL, {"customer_id": [1, 2, 4]}, now=end2)
    assert after.values["n_all"] == [5, 2, 1]
    assert after.values["s"] == [165.0, 8.0, 5.0]
    assert after.values["last_cat"] == ["c", "b", "a"]
    assert after.statuses["n_all"] == [PRESENT, PRESENT, PRESENT]
    assert_online_equals_offline(store, [1, 2, 3, 4, 99], [end2, end2 + 3 * H])


def test_changed_definition_rebuilds_the_view(store: FeatureStore) -> None:
    store.materialize(end=E)
    plan = store.plan(definitions(sum_window="2h"))
    assert plan.invalidated_views == ("spend",)
    store.apply(plan)
    results = {(r.view, r.part): r for r in store.materialize(end=E)}
    assert results[("spend", "online")].rebuilt
    assert not results[("profile", "online")].rebuilt
    response = store.get_online_features(ALL, {"customer_id": [1, 2, 3]}, now=E)
    assert response.values["s"] == [35.0, 0.0, 0.0]  # only the 5h and 5h20 events are in [4h, 6h)
    assert response.values["n_all"] == [4, 1, 1]
    assert_online_equals_offline(store, KEYS, [E, E + 90 * MIN])


def test_a_changed_definition_serves_its_previous_values_until_materialized(store: FeatureStore,
                                                                             request: pytest.FixtureRequest) -> None:
    """Between apply and the next materialize, a changed view keeps serving the values of its previous definition
    (a deploy is no outage: issue "production defects", item 1), decoded with that definition's layout, never the
    new one's; materialize then switches every feature to the new definition at once."""
    store.materialize(end=E)
    before = offline_at(store, KEYS, E)
    store.apply(definitions(sum_window="2h"))
    response = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    wrong = [(name, KEYS[i], value, before[name][i]) for name, values in response.values.items()
             for i, value in enumerate(values)
             if response.statuses[name][i] != NOT_FOUND and not ref.values_match(value, before[name][i])]
    assert not wrong, wrong
    store.materialize(end=E)
    response = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    after = offline_at(store, KEYS, E)
    wrong = [(name, KEYS[i], value, after[name][i]) for name, values in response.values.items()
             for i, value in enumerate(values)
             if response.statuses[name][i] != NOT_FOUND and not ref.values_match(value, after[name][i])]
    assert not wrong, wrong


def test_full_materialize_rebuilds(store: FeatureStore) -> None:
    store.materialize(end=E)
    expected = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    for view in ("spend", "profile"):  # lose the online data behind the store's back
        store.online.store.delete_prefix(store.online.every_prefix(view))
    lost = store.get_online_features(ALL, {"customer_id": [1, 2, 3]}, now=E)
    assert all(s == NOT_FOUND for statuses in lost.statuses.values() for s in statuses)
    results = [r for r in store.materialize(end=E, full=True) if r.part == "online"]
    assert all(r.rebuilt for r in results)
    assert {r.view: r.rows_written for r in results} == {"spend": 3, "profile": 3}
    rebuilt = store.get_online_features(ALL, {"customer_id": KEYS}, now=E)
    assert (rebuilt.values, rebuilt.statuses) == (expected.values, expected.statuses)


def test_values_age_without_materializing_again(served: FeatureStore) -> None:
    # n_2h (hop 5 min): the 5h event leaves at floor(5h) + 5 min + 2h = 7h05, the 5h20 one at 7h25;
    # s (1d, hop 1h): the 1h event leaves at 1h + 1h + 1d
    expected_n_2h = {DAY + 7 * H + 4 * MIN: 2, DAY + 7 * H + 5 * MIN: 1, DAY + 7 * H + 24 * MIN: 1,
                     DAY + 7 * H + 25 * MIN: 0}
    for now, count in expected_n_2h.items():
        response = served.get_online_features(ALL, {"customer_id": [1]}, now=now)
        assert response.values["n_2h"] == [count], now
    assert_online_equals_offline(served, KEYS, [*expected_n_2h, DAY + D + 2 * H - MIN, DAY + D + 2 * H,
                                                DAY + D + 6 * H, DAY + 3 * D])
    late = served.get_online_features(ALL, {"customer_id": [1]}, now=DAY + 7 * H + 25 * MIN)
    assert (late.values["m_2h"], late.statuses["m_2h"]) == ([None], [NULL_VALUE])
    assert served.get_online_features(ALL, {"customer_id": [1]}, now=DAY + D + 2 * H).values["s"] == [55.0]
    gone = served.get_online_features(ALL, {"customer_id": [1]}, now=DAY + 3 * D)
    assert gone.values["s"] == [0.0]
    assert gone.values["n_all"] == [4]
    assert gone.values["last_cat"] == [None]


def test_online_values_match_offline_at_many_times(served: FeatureStore) -> None:
    assert_online_equals_offline(served, KEYS, [E, E + timedelta(microseconds=1), E + 17 * MIN, E + H, E + 11 * H])


@pytest.fixture
def tie_repo(online_store: dict[str, str]) -> Iterator[FeatureStore]:
    """Rows tied on (ts, created): three events (one with a null amount), two snapshot rows."""
    path = Path(scratch_dir("online_ties_"))
    (path / "data").mkdir()
    write_config(path, "ties", online_store)
    pd.DataFrame({"customer_id": pd.array([1, 1, 1], dtype="int64"), "event_timestamp": [DAY] * 3,
                  "amount": pd.array([0.0, None, -3.25], dtype="Float64")}).to_parquet(path / "data" / "tx.parquet")
    pd.DataFrame({"customer_id": pd.array([1, 1], dtype="int64"), "updated_at": [DAY] * 2, "tier": ["a", "b"],
                  "score": pd.array([9, 1], dtype="int64")}).to_parquet(path / "data" / "profiles.parquet")
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    tx = fs.FileSource(name="tx", path="data/tx.parquet")
    spend = fs.FeatureView(name="spend", entities=[customer], source=tx, features=[
        fs.Last("amount", window="1d", name="last_1d"), fs.Last("amount", window=None, name="last_all")])
    profiles = fs.FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at")
    profile = fs.FeatureView(name="profile", entities=[customer], source=profiles,
                             features=[fs.Field("tier", "string"), fs.Field("score", "int64")])  # not alphabetical
    opened = FeatureStore(path)
    opened.apply([customer, tx, spend, profiles, profile])
    yield opened
    opened.close()
    shutil.rmtree(path, ignore_errors=True)


def test_last_of_tied_events_online_equals_offline(tie_repo: FeatureStore, request: pytest.FixtureRequest) -> None:
    """docs/semantics.md: of events tied on (ts, created), Last takes the greatest value: 0.0 of 0.0, null, -3.25."""
    refs = ["spend:last_1d", "spend:last_all"]
    now = DAY + H
    tie_repo.materialize(end=now)
    online = tie_repo.get_online_features(refs, {"customer_id": [1]}, now=now)
    assert online.values == {"last_1d": [0.0], "last_all": [0.0]}
    offline = tie_repo.get_historical_features(
        pd.DataFrame({"customer_id": [1], "event_timestamp": [now]}), refs, available_before=now).to_df()
    assert offline[["last_1d", "last_all"]].values.tolist() == [[0.0, 0.0]]


def test_snapshot_rows_tied_online_equals_offline(tie_repo: FeatureStore, request: pytest.FixtureRequest) -> None:
    """docs/semantics.md: snapshot rows tied on (ts, created) are ordered by their values column by column in
    DECLARATION order (tier, then score) and the greatest wins: ("b", 1), not ("a", 9)."""
    refs = ["profile:tier", "profile:score"]
    now = DAY + H
    offline = tie_repo.get_historical_features(pd.DataFrame({"customer_id": [1], "event_timestamp": [now]}), refs)
    assert offline.to_df()[["tier", "score"]].values.tolist() == [["b", 1]]
    tie_repo.materialize(end=now)
    online = tie_repo.get_online_features(refs, {"customer_id": [1]}, now=now)
    assert online.values == {"tier": ["b"], "score": [1]}


@pytest.mark.parametrize("online_store", ["redis"], indirect=True)
def test_redis_keys_live_under_the_configured_prefix(store: FeatureStore, online_store: dict[str, str]) -> None:
    store.materialize(end=E)
    client = redis.Redis.from_url(online_store["url"])
    try:
        keys = list(client.scan_iter(match=f"{online_store['key_prefix']}:v{LAYOUT_VERSION}:cases:*", count=1000))
        own = [key for key in keys if key.split(b":cases:", 1)[1].startswith(OWN)]  # the store's identity
        keys = [key for key in keys if key not in own]
        fields = {key: sorted(f.split(b":")[0] for f in client.hkeys(key)) for key in keys}
        ttls = [client.pttl(key) for key in keys]
    finally:
        client.close()
    assert len(keys) == 3  # a hash per customer, with a field per view
    assert all(views == [b"profile", b"spend"] for views in fields.values()), fields
    assert all(ttl > 0 for ttl in ttls)  # every hash expires (a value that never does: in 9999)
