"""Pushed events: online at once, offline for every later query time, with the same values, on every store.

The replay test pushes random events in random batches between random materializations and checks,
after every step, that every online value equals the slow reference (batch rows plus pushed rows,
each pushed row available from its push) and the engine's get_historical_features, on SQLite and Redis.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

import feature_store as fs
from feature_store.config import RedisOnlineConfig
from feature_store.errors import OnlineStoreUnavailable, PushDataError, PushSourceNotFoundError, SchemaError
from feature_store.store import FeatureStore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
from reference import AggregationView, SnapshotView
from test_online_consistency import (
    EMPTY,
    FEATURES,
    SETTINGS,
    SNAPSHOT_FIELDS,
    amounts,
    categories,
    greatest,
    quantities,
    scratch_dir,
    write_config,
)

MIN, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
GRID = 15 * MIN
SPEND_REFS = [f"spend:{a.name}" for a in FEATURES]
PROFILE_REFS = [f"profile:{name}" for name, _ in SNAPSHOT_FIELDS]
_projects = itertools.count()


def us(value: datetime) -> int:
    return int(ref.to_micros(value))


def base_time() -> datetime:
    """A grid instant about a day ago: events fall between it and a few minutes ago."""
    now = datetime.now(UTC) - D
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)


def open_push_repo(repo: Path, spend: AggregationView, profile: SnapshotView, online: dict[str, str]) -> FeatureStore:
    """The views over push sources whose batch sources hold the views' rows."""
    write_config(repo, f"push{next(_projects)}", online)
    for view in (spend, profile):
        ref.write_parquet(str(repo / f"{view.name}.parquet"), ref._schema_of(view), view.rows)
    objects = []
    for obj in ref.build_definitions([spend, profile]):
        if isinstance(obj, fs.FeatureView):
            push = fs.PushSource(name=f"{obj.name}_push", batch_source=obj.source)
            obj = obj.model_copy(update={"source": push})
        objects.append(obj)
    store = fast_settling(FeatureStore(repo))
    store.apply(objects)
    return store


def fast_settling(store: FeatureStore) -> FeatureStore:
    """One thread pushes and materializes, so nothing is in flight; buckets of 1 us let a materialization
    pass every earlier push (the default minute would keep the last minute's pushes pending). Every store
    of a deployment must use the same bucket."""
    store.push_log.settle_seconds = 0.0
    store.push_log.bucket_seconds = 1e-6
    return store


def compacting_at_once(store: FeatureStore) -> FeatureStore:
    """Every push in a file of its own, sealed at once and deleted as soon as it is folded in: each compaction takes
    the whole log. Only where this store is the log's one writer: another writer's open file would count as sealed."""
    log: Any = store.push_log
    log.rotate_seconds = log.seal_margin_seconds = log.delete_grace_seconds = 0.0
    return store


@st.composite
def rows_of(draw: Any, kind: str, start: datetime, has_created: bool, count: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(count):
        ts = start + draw(st.integers(0, 90)) * GRID + draw(st.sampled_from([0, 0, 1, 7])) * MIN
        row: dict[str, Any] = {"customer_id": draw(st.sampled_from([1, 1, 2, 3]))}
        if kind == "spend":
            row.update(event_timestamp=ts, amount=draw(amounts), qty=draw(quantities), category=draw(categories))
        else:
            row.update(updated_at=ts, age=draw(st.one_of(st.none(), st.integers(18, 90))), segment=draw(categories))
        if has_created:
            row["created"] = ts + draw(st.sampled_from([0, 1, 15, 60])) * MIN
        rows.append(row)
    return rows


def check(store: FeatureStore, spend: AggregationView, profile: SnapshotView, context: str) -> None:
    """Online at now == reference at now == engine offline at now, for known keys and an unknown one."""
    keys = [1, 2, 3, 4]
    response = store.get_online_features([*SPEND_REFS, *PROFILE_REFS], {"customer_id": keys})
    now = datetime.now(UTC)
    entity_rows = [{"customer_id": k, "event_timestamp": now} for k in keys]
    constraints = ref.expected_constraints(entity_rows, [spend, profile], [*SPEND_REFS, *PROFILE_REFS])
    entity_df = pd.DataFrame({"customer_id": np.array(keys, dtype="int64"), "event_timestamp": [now] * len(keys)})
    offline = store.get_historical_features(entity_df, [*SPEND_REFS, *PROFILE_REFS]).to_df()
    problems = []
    for j, (key, row_constraints) in enumerate(zip(keys, constraints, strict=True)):
        expected = {}
        for columns, acceptable, slack in row_constraints:
            best = greatest(acceptable)
            expected.update({c: (best[n], slack) for n, c in enumerate(columns)})
        for name, values in response.values.items():
            got, engine = ref.normalize_value(values[j]), ref.normalize_value(offline[name].iloc[j])
            want, slack = expected[name]
            if not ref.values_match(got, want, abs_tol=slack) or not ref.values_match(got, engine, abs_tol=slack):
                problems.append(f"key {key} {name}: online {got!r}, reference {want!r}, engine {engine!r}")
    assert not problems, "\n".join(problems[:12]) + "\n\n" + context


@SETTINGS
@given(data=st.data())
def test_pushed_events_online_equal_reference_and_training_after_every_step(
        online_store: dict[str, str], data: Any) -> None:
    start = base_time()
    has_created = data.draw(st.booleans(), label="created column")
    spend_rows = data.draw(rows_of("spend", start, has_created, data.draw(st.integers(0, 12))), label="batch")
    profile_rows = data.draw(rows_of("profile", start, has_created, data.draw(st.integers(0, 5))), label="profiles")
    created = "created" if has_created else None
    spend = AggregationView(name="spend", features=FEATURES, rows=tuple(spend_rows), created_field=created,
                            schema=ref.default_event_schema(created))
    profile = SnapshotView(name="profile", fields=SNAPSHOT_FIELDS, rows=tuple(profile_rows), created_field=created,
                           ttl=data.draw(st.sampled_from([None, 2 * H, D])), schema=ref.default_profile_schema(created))
    steps = data.draw(st.lists(st.sampled_from(["push", "push", "profile", "materialize", "compact"]), min_size=1,
                               max_size=5), label="steps")
    repo = Path(scratch_dir("push_"))
    store = compacting_at_once(open_push_repo(repo, spend, profile, online_store))
    if not has_created:
        # A pushed row's arrival plays the role of the created timestamp even when the source has none (batch
        # rows are created at their event time): the reference needs the column to order ties on (ts, created).
        spend = _with_created(spend, "event_timestamp", ref.default_event_schema("created"))
        profile = _with_created(profile, "updated_at", ref.default_profile_schema("created"))
    try:
        store.materialize()  # online serves what was materialized, and what was pushed since
        for i, step in enumerate(steps):
            if step == "materialize":  # which compacts the log first
                store.materialize()
            elif step == "compact":
                store.compact()
            else:
                view = spend if step == "push" else profile
                rows = data.draw(rows_of(view.name, start, has_created, data.draw(st.integers(1, 4))), label=step)
                result = store.push(f"{view.name}_push", pd.DataFrame(rows))
                pushed = us(result.pushed_at)
                # availability is the push's arrival, whatever the created column says (or without one)
                rows = [{**r, "created": ref.from_micros(pushed)} for r in rows]
                if view is spend:
                    spend = replace(spend, rows=spend.rows + tuple(rows))
                else:
                    profile = replace(profile, rows=profile.rows + tuple(rows))
            check(store, spend, profile, f"after step {i} ({step}) of {steps}")
        store.materialize()
        check(store, spend, profile, f"after a last materialization, steps {steps}")
    finally:
        store.close()
        shutil.rmtree(repo, ignore_errors=True)


def _with_created(view: Any, ts_field: str, schema: Any) -> Any:
    """The reference view with a created column equal to each batch row's event time."""
    rows = tuple({**row, "created": row[ts_field]} for row in view.rows)
    return replace(view, rows=rows, created_field="created", schema=schema)


# --------------------------------------------------------------------------
# explicit cases
# --------------------------------------------------------------------------


@pytest.fixture
def pushed_repo(online_store: dict[str, str]) -> Any:
    yield from _pushed_repo(online_store)


@pytest.fixture(scope="module")
def refusing_repo(module_online_store: dict[str, str]) -> Any:
    """A pushed repo shared by a module's tests whose pushes are all refused (each checks nothing was written)."""
    yield from _pushed_repo(module_online_store)


def _pushed_repo(online_store: dict[str, str]) -> Any:
    repo = Path(scratch_dir("push_cases_"))
    start = base_time()
    spend = AggregationView(name="spend", features=FEATURES, created_field=None, schema=ref.default_event_schema(),
                            rows=({"customer_id": 1, "event_timestamp": start, "amount": 5.0, "qty": 1,
                                   "category": "a"},))
    profile = SnapshotView(name="profile", fields=SNAPSHOT_FIELDS, rows=(), ttl=None,
                           schema=ref.default_profile_schema())
    store = open_push_repo(repo, spend, profile, online_store)
    store.materialize()
    yield store, spend, profile
    store.close()
    shutil.rmtree(repo, ignore_errors=True)


def event(key: int, amount: float | None, ago: timedelta = MIN, category: str | None = "b") -> dict[str, Any]:
    return {"customer_id": key, "event_timestamp": datetime.now(UTC) - ago, "amount": amount, "qty": 2,
            "category": category}


def log_size(store: FeatureStore) -> int:
    return sum(os.path.getsize(f) for f in store.push_log.files("spend_push"))


def test_bad_pushes_are_rejected_whole_and_write_nothing(refusing_repo: Any) -> None:
    store, _spend, _profile = refusing_repo
    before = store.get_online_features(SPEND_REFS, {"customer_id": [1]}).to_dict()
    cases: list[tuple[str, Any, type[Exception], str]] = [
        ("spend_psuh", [event(1, 1.0)], PushSourceNotFoundError, "spend_push"),
        ("spend", [event(1, 1.0)], PushSourceNotFoundError, "no push source"),
        ("spend_push", [{**event(1, 1.0), "amount_usd": 3}], PushDataError, "amount_usd"),
        ("spend_push", [{"event_timestamp": datetime.now(UTC), "amount": 1.0}], PushDataError, "customer_id"),
        ("spend_push", [event(1, 1.0), {**event(2, 1.0), "customer_id": None}], PushDataError, "row(s) [1]"),
        ("spend_push", [event(1, 1.0), {**event(2, 1.0), "amount": "12,5"}], PushDataError, "'amount'"),
        ("spend_push", [{**event(1, 1.0), "customer_id": "abc"}], PushDataError, "customer_id"),
        ("spend_push", [{**event(1, 1.0), "qty": 2**70}], PushDataError, "out of range"),
        ("spend_push", [{**event(1, 1.0), "category": 7}], PushDataError, "string"),
        ("spend_push", [event(1, 1.0, ago=-timedelta(hours=1))], PushDataError, "later than the time the push"),
        ("spend_push", [{**event(1, 1.0), "event_timestamp": "yesterday"}], PushDataError, "event_timestamp"),
        ("spend_push", {"customer_id": [1, 2], "event_timestamp": [datetime.now(UTC)]}, PushDataError, "lengths"),
        ("spend_push", {"customer_id": []}, PushDataError, "no rows"),
    ]
    for name, rows, error, text in cases:
        with pytest.raises(error, match=None) as info:
            store.push(name, rows)
        assert text in str(info.value), (text, str(info.value))
        assert info.value.http_status in (404, 422)
    with pytest.raises(PushDataError, match="'to' must be"):
        store.push("spend_push", [event(1, 1.0)], to="everywhere")  # type: ignore[arg-type]
    assert log_size(store) == 0
    assert store.get_online_features(SPEND_REFS, {"customer_id": [1]}).to_dict() == before


@pytest.mark.parametrize("amount", ["nan", "NaN", "inf", "-Infinity", float("inf"), float("-inf"), 1e309, 1e308,
                                    -2e300])
def test_non_finite_and_overflowing_values_are_refused(refusing_repo: Any, amount: Any) -> None:
    """NaN, infinity, and values whose sums could overflow never reach an entity's partials: one such push used to
    turn its sums, means and maxima into null (served as PRESENT) for good."""
    store, _spend, _profile = refusing_repo
    before = store.get_online_features(SPEND_REFS, {"customer_id": [1]}).to_dict()
    with pytest.raises(PushDataError) as info:
        store.push("spend_push", [event(1, 2.0), event(1, amount)])
    message = str(info.value)
    assert "'amount'" in message and "row 1" in message and info.value.http_status == 422, message
    assert log_size(store) == 0
    assert store.get_online_features(SPEND_REFS, {"customer_id": [1]}).to_dict() == before


def test_nan_from_pandas_is_a_missing_value(pushed_repo: Any) -> None:
    """pandas writes a missing float as NaN: a pushed NaN float is null, as a NaN in a batch file is."""
    store, _spend, _profile = pushed_repo
    refs = ["spend:n_all", "spend:s_1d"]
    before = store.get_online_features(refs, {"customer_id": [8]}).values
    store.push("spend_push", pd.DataFrame([event(8, 1.5), event(8, np.nan)]))
    after = store.get_online_features(refs, {"customer_id": [8]}).values
    assert after["s_1d"][0] == before["s_1d"][0] + 1.5
    df = pd.DataFrame({"customer_id": [8], "event_timestamp": [datetime.now(UTC)]})
    assert store.get_historical_features(df, ["spend:s_1d"]).to_df()["s_1d"].iloc[0] == after["s_1d"][0]


def test_push_destinations(pushed_repo: Any) -> None:
    """offline: training sets at once, online at the next materialize; online: never in training sets."""
    store, _spend, _profile = pushed_repo
    refs = ["spend:n_all", "spend:s_1d"]

    def online() -> list[Any]:
        values = store.get_online_features(refs, {"customer_id": [7]}).values
        return [values["n_all"][0], values["s_1d"][0]]

    def offline() -> list[Any]:
        df = pd.DataFrame({"customer_id": [7], "event_timestamp": [datetime.now(UTC)]})
        row = store.get_historical_features(df, refs).to_df().iloc[0]
        return [int(row["n_all"]), float(row["s_1d"])]

    store.push("spend_push", [event(7, 10.0)], to="offline")
    assert online() == [0, 0.0] and offline() == [1, 10.0]
    store.push("spend_push", [event(7, 5.0)], to="online")
    assert online() == [1, 5.0] and offline() == [1, 10.0]
    store.materialize()  # rewrites key 7 from the offline store: the online-only event goes, the logged one comes
    assert online() == [1, 10.0] == offline()
    store.push("spend_push", [event(7, 1.5)])  # online_and_offline
    assert online() == [2, 11.5] == offline()
    store.materialize()
    store.materialize(full=True)
    assert online() == [2, 11.5] == offline()


def test_a_pushed_event_tied_on_time_with_a_batch_row_arrived_later(pushed_repo: Any) -> None:
    """The source has no created column: batch rows are created at their event time, a pushed row at its
    arrival, so on a tie of event times the pushed row is the later one (Last takes it), online and offline
    alike, before and after a materialization."""
    store, spend, _profile = pushed_repo
    tied = {**spend.rows[0], "amount": -1000.0}  # same key and event time as the batch row of 5.0
    store.push("spend_push", [tied])

    def values() -> tuple[Any, Any]:
        online = store.get_online_features(["spend:l_all"], {"customer_id": [1]}).values["l_all"][0]
        df = pd.DataFrame({"customer_id": [1], "event_timestamp": [datetime.now(UTC)]})
        return online, store.get_historical_features(df, ["spend:l_all"]).to_df()["l_all"].iloc[0]

    assert values() == (-1000.0, -1000.0)
    store.materialize()
    assert values() == (-1000.0, -1000.0)


def test_snapshot_push_keeps_the_latest_row(pushed_repo: Any) -> None:
    store, _spend, _profile = pushed_repo
    now = datetime.now(UTC)
    store.push("profile_push", [{"customer_id": 5, "updated_at": now - H, "age": 40, "segment": "new"}])
    store.push("profile_push", [{"customer_id": 5, "updated_at": now - 2 * H, "age": 30, "segment": "old"}])
    response = store.get_online_features(PROFILE_REFS, {"customer_id": [5]})
    assert response.to_dict() == {"customer_id": [5], "segment": ["new"], "age": [40]}
    assert response.stamps_us["age"] == [us(now - H)]
    store.materialize()
    assert store.get_online_features(PROFILE_REFS, {"customer_id": [5]}).to_dict()["age"] == [40]


def test_concurrent_pushes_for_one_entity_lose_nothing(pushed_repo: Any) -> None:
    """Several clients (each its own FeatureStore and connection) push to the same entity at once."""
    store, _spend, _profile = pushed_repo
    clients, pushes = 4, 15
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with fast_settling(FeatureStore(store.repo_path)) as own:
                for i in range(pushes):
                    own.push("spend_push", [event(9, float(n * 100 + i)), event(10 + n, 1.0)])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    refs = ["spend:n_all", "spend:s_1d", "spend:m_all"]
    online = store.get_online_features(refs, {"customer_id": [9]}).to_dict()
    assert online["n_all"] == [clients * pushes]
    assert online["s_1d"] == [float(sum(n * 100 + i for n in range(clients) for i in range(pushes)))]
    df = pd.DataFrame({"customer_id": [9], "event_timestamp": [datetime.now(UTC)]})
    offline = store.get_historical_features(df, refs).to_df()
    assert [int(offline["n_all"][0]), float(offline["s_1d"][0])] == [online["n_all"][0], online["s_1d"][0]]


@pytest.mark.requires("optimistic_updates", why="SQLite's update holds the write lock: no other writer lands meanwhile")
def test_a_push_that_loses_a_race_merges_again_only_what_changed(pushed_repo: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client's push lands on one entity while a push of three is being merged (after Redis WATCHes
    them): the transaction is retried, re-merging that entity alone onto its new value, and no event is lost."""
    store, _spend, _profile = pushed_repo
    from feature_store.online.push.merge import PushTarget

    merged: list[int] = []
    original = PushTarget.apply

    def apply(self: PushTarget, base: bytes | None, delta: bytes | None, events: Any, now_us: int) -> Any:
        if not merged and not other_pushed:
            other_pushed.append(True)  # once, from inside the first merge: another client pushes
            with fast_settling(FeatureStore(store.repo_path)) as other:
                other.push("spend_push", [event(21, 1000.0)])
        merged.append(len(events))
        return original(self, base, delta, events, now_us)

    other_pushed: list[bool] = []
    monkeypatch.setattr(PushTarget, "apply", apply)
    store.push("spend_push", [event(20, 1.0), event(21, 2.0), event(22, 3.0)])
    assert len(merged) == 1 + 3 + 1, merged  # the other push, this push's three, then 21 again
    monkeypatch.undo()
    online = store.get_online_features(["spend:n_all", "spend:s_1d"], {"customer_id": [20, 21, 22]}).to_dict()
    assert online["n_all"] == [1, 2, 1] and online["s_1d"] == [1.0, 1002.0, 3.0]


@pytest.mark.slow
def test_materialize_while_pushing_counts_every_event_once(pushed_repo: Any) -> None:
    """Pushes race a materialization (with the real settle time): every event is online exactly once."""
    store, _spend, _profile = pushed_repo
    store.push_log.settle_seconds = 1.0
    stop = threading.Event()
    sent: list[float] = []

    def pusher() -> None:
        with fast_settling(FeatureStore(store.repo_path)) as own:
            while not stop.is_set():
                amount = float(len(sent) + 1)
                own.push("spend_push", [event(11, amount)])
                sent.append(amount)

    thread = threading.Thread(target=pusher)
    thread.start()
    try:
        for _ in range(3):
            store.materialize()
            time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    online = store.get_online_features(["spend:n_all", "spend:s_1d"], {"customer_id": [11]}).to_dict()
    assert online["n_all"] == [len(sent)] and online["s_1d"] == [sum(sent)]
    time.sleep(1.0)
    store.materialize()
    assert store.get_online_features(["spend:n_all"], {"customer_id": [11]}).to_dict()["n_all"] == [len(sent)]


def test_unknown_key_after_push_of_other_keys(pushed_repo: Any) -> None:
    store, _spend, _profile = pushed_repo
    store.push("spend_push", [event(12, 3.0)])
    response = store.get_online_features(["spend:n_all", "spend:s_1d", "spend:l_all"], {"customer_id": [404]})
    assert response.to_dict() == {"customer_id": [404], "n_all": [EMPTY["count"]], "s_1d": [0.0], "l_all": [None]}
    assert set(response.statuses["n_all"]) == {"NOT_FOUND"}


def test_push_when_the_online_store_is_down_says_the_events_are_logged(pushed_repo: Any) -> None:
    """A store that goes down between a push's log append and its online merge: the error says the events are
    logged (and reach the online store at the next materialize), so the client does not push them again."""
    store, _spend, _profile = pushed_repo
    unreachable = RedisOnlineConfig(url="redis://127.0.0.1:1/0", timeout_seconds=0.2)
    with FeatureStore(store.repo_path, config=store.config.model_copy(update={"online_store": unreachable})) as down:
        down.online._state = store.online.state()  # what the store held when it went down (a serving process)
        with pytest.raises(OnlineStoreUnavailable, match="offline log") as info:
            down.push("spend_push", [event(13, 2.0)])
        assert info.value.details["logged_offline"] is True
    assert log_size(store) > 0
    store.materialize()  # the logged event reaches the online store
    assert store.get_online_features(["spend:n_all"], {"customer_id": [13]}).to_dict()["n_all"] == [1]


def test_push_when_the_online_store_was_never_reached_writes_nothing(pushed_repo: Any) -> None:
    """A process that cannot reach the online store to learn what it holds refuses the push before logging it:
    pushing again later counts it once."""
    store, _spend, _profile = pushed_repo
    unreachable = RedisOnlineConfig(url="redis://127.0.0.1:1/0", timeout_seconds=0.2)
    with FeatureStore(store.repo_path, config=store.config.model_copy(update={"online_store": unreachable})) as down:
        with pytest.raises(OnlineStoreUnavailable) as info:
            down.push("spend_push", [event(13, 2.0)])
        assert "logged_offline" not in info.value.details
    assert log_size(store) == 0


def test_push_fsync_is_configurable(tmp_path: Path) -> None:
    from feature_store.config import RepoConfig

    repo = tmp_path
    assert FeatureStore(repo, RepoConfig(project="p")).push_log.fsync is True
    store = FeatureStore(repo, RepoConfig(project="p", offline_store={"push_fsync": False}))  # type: ignore[arg-type]
    assert store.push_log.fsync is False
    pushed_at = store.push_log.append("events", lambda at: f'{{"__fs_pushed_at": {at}}}\n'.encode())
    assert store.push_log.files("events") and pushed_at > 0


def test_materialization_never_reads_or_watches_values(pushed_repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Materialization writes every value with a plain write, never reading or watching a value first (pushes
    keep what they add in a field of their own): so it cannot lose a race to pushes, however many there are.
    Before, a batch that lost to concurrent pushes 100 times in a row failed the whole run."""
    store, _spend, _profile = pushed_repo
    fast_settling(store)
    with fast_settling(FeatureStore(store.repo_path)) as other:
        other.push("spend_push", [event(k, 1.0) for k in range(30, 36)])
    from feature_store.online.keys import store_id_key

    calls: list[tuple[str, list[bytes]]] = []
    for name in ("read", "read_views", "update"):
        real = getattr(store.online.store, name)
        monkeypatch.setattr(store.online.store, name,
                            lambda keys, *args, _name=name, _real=real: calls.append((_name, list(keys)))
                            or _real(keys, *args))
    store.materialize()
    store.materialize(full=True)
    identity = store_id_key(getattr(store.config.online_store, "key_prefix", "fs"), store.project)
    assert calls and all(call == ("read", [identity]) for call in calls), calls  # the store's identity alone
    monkeypatch.undo()
    online = store.get_online_features(["spend:n_all", "spend:s_1d"], {"customer_id": [34, 35]}).to_dict()
    assert online["n_all"] == [1, 1] and online["s_1d"] == [1.0, 1.0]


@pytest.mark.slow
def test_materialize_finishes_under_a_flood_of_pushes(pushed_repo: Any) -> None:
    """Several threads push to a few entities as fast as they can for the whole of repeated materializations,
    each also keeping a CPU busy: every materialization finishes, and every acknowledged event counts once,
    online and offline."""
    store, _spend, _profile = pushed_repo
    store.push_log.settle_seconds = 0.5
    stop = threading.Event()
    sent: dict[int, list[float]] = {k: [] for k in (40, 41, 42)}
    lock = threading.Lock()

    def pusher(seed: int) -> None:
        with FeatureStore(store.repo_path) as own:
            own.push_log.settle_seconds = 0.5
            own.push_log.bucket_seconds = store.push_log.bucket_seconds  # one bucket size for the deployment
            n = 0
            while not stop.is_set():
                key = (40, 41, 42)[(seed + n) % 3]
                amount = float(seed * 1000 + n)
                own.push("spend_push", [event(key, amount, ago=timedelta(seconds=1))])
                with lock:
                    sent[key].append(amount)
                n += 1

    def busy() -> None:
        while not stop.is_set():
            sum(range(10_000))

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(3)] + [threading.Thread(target=busy)]
    for thread in threads:
        thread.start()
    try:
        for full in (False, True, False):
            store.materialize(full=full)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    keys = {"customer_id": [40, 41, 42]}
    online = store.get_online_features(["spend:n_all", "spend:s_1d"], keys).to_dict()
    assert online["n_all"] == [len(sent[k]) for k in (40, 41, 42)]
    assert online["s_1d"] == pytest.approx([sum(sent[k]) for k in (40, 41, 42)], rel=1e-12)
    time.sleep(0.6)
    store.materialize()
    online = store.get_online_features(["spend:n_all"], keys).to_dict()
    assert online["n_all"] == [len(sent[k]) for k in (40, 41, 42)]
    df = pd.DataFrame({"customer_id": [40, 41, 42], "event_timestamp": [datetime.now(UTC)] * 3})
    offline = store.get_historical_features(df, ["spend:n_all"]).to_df()
    assert offline["n_all"].tolist() == [len(sent[k]) for k in (40, 41, 42)]


def test_a_push_leaving_out_a_column_is_refused_unless_declared_nullable(example_repo: Path) -> None:
    """A column left out of a push used to store nulls unseen; now it is named, and only columns the push source
    declares nullable may be left out (declaring it rebuilds nothing: it does not change the data)."""
    store = FeatureStore(example_repo)
    store.apply()
    row = {"customer_id": [1], "event_timestamp": [datetime.now(UTC) - MIN], "amount": [1.0], "category": ["a"]}
    with pytest.raises(PushDataError, match=r"\['transaction_id'\] are missing") as info:
        store.push("transactions_push", row)
    assert info.value.http_status == 422 and "nullable" in str(info.value)
    assert store.push("transactions_push", {**row, "transaction_id": [None]}).rows == 1  # an unknown value: null
    features = example_repo / "features.py"
    declared = 'PushSource(name="transactions_push", batch_source=transactions)'
    assert declared in features.read_text()
    features.write_text(features.read_text().replace(
        declared, 'PushSource(name="transactions_push", batch_source=transactions, nullable=["transaction_id"])'))
    plan = store.plan()
    assert [(c.name, c.fields) for c in plan.changes] == [("transactions_push", ("nullable",))]
    assert plan.invalidated_views == ()
    store.apply(plan)
    store.refresh_serving()
    assert store.push("transactions_push", row).rows == 1
    features.write_text(features.read_text().replace('nullable=["transaction_id"]', 'nullable=["transaction_idd"]'))
    with pytest.raises(SchemaError, match="transaction_idd"):
        store.plan()
    store.close()
