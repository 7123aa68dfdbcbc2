"""Push ids (idempotency keys): a retried push counts once, online and in training sets, whatever point an earlier
attempt reached (claimed its key, logged a copy, torn a copy, merged some chunks), on SQLite and Redis.

Attempts cut short are made by running the first steps of a push (OnlineService internals) and stopping, as a
kill -9 would; tests/test_server_kill_idempotent.py kills real servers."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.errors import PushDataError, PushIdConflictError
from feature_store.online.push.idempotency import LOGGED, PENDING, Record, digest
from feature_store.store import FeatureStore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as ref
from reference import AggregationView, SnapshotView
from test_online_consistency import FEATURES, SETTINGS, SNAPSHOT_FIELDS, scratch_dir
from test_push import base_time, check, event, open_push_repo, rows_of, us

REFS = ["spend:n_all", "spend:s_1d"]


@pytest.fixture
def repo(online_store: dict[str, str]) -> Any:
    path = Path(scratch_dir("push_id_"))
    spend = AggregationView(name="spend", features=FEATURES, created_field=None, schema=ref.default_event_schema(),
                            rows=())
    profile = SnapshotView(name="profile", fields=SNAPSHOT_FIELDS, rows=(), ttl=None,
                           schema=ref.default_profile_schema())
    store = open_push_repo(path, spend, profile, online_store)
    # Pushes race no materialization here except where a test materializes; a settle of 1 s keeps the lease
    # (half of it) and the wait for an earlier attempt (all of it) short.
    store.push_log.settle_seconds = 1.0
    store.materialize()
    yield store
    store.close()
    shutil.rmtree(path, ignore_errors=True)


def online(store: FeatureStore, key: int) -> list[Any]:
    values = store.get_online_features(REFS, {"customer_id": [key]}).values
    return [values["n_all"][0], values["s_1d"][0]]


def offline(store: FeatureStore, key: int) -> list[Any]:
    df = pd.DataFrame({"customer_id": [key], "event_timestamp": [datetime.now(UTC)]})
    row = store.get_historical_features(df, REFS).to_df().iloc[0]
    return [int(row["n_all"]), float(row["s_1d"])]


def both(store: FeatureStore, key: int) -> tuple[list[Any], list[Any]]:
    return online(store, key), offline(store, key)


def rows(key: int, *amounts: float) -> list[dict[str, Any]]:
    return [event(key, a) for a in amounts]


def test_a_retried_push_counts_once_online_and_in_training_sets(repo: FeatureStore) -> None:
    pushed = rows(1, 2.0, 3.0) + rows(2, 10.0)
    first = repo.push("spend_push", pushed, push_id="p-1")
    assert not first.duplicate and first.push_id == "p-1" and first.online_updates > 0
    for _ in range(3):
        again = repo.push("spend_push", pushed, push_id="p-1")
        assert again.duplicate and again.online_updates == 0 and again.rows == 3
        assert again.pushed_at == first.pushed_at  # what the retry reports is what counts
    assert both(repo, 1) == ([2, 5.0], [2, 5.0]) and both(repo, 2) == ([1, 10.0], [1, 10.0])
    repo.materialize()
    repo.materialize(full=True)
    assert both(repo, 1) == ([2, 5.0], [2, 5.0])
    # without an id, the same rows are another push, as before
    repo.push("spend_push", pushed)
    assert both(repo, 1) == ([4, 10.0], [4, 10.0])


@pytest.mark.parametrize("to", ["online", "offline"])
def test_retries_of_one_destination_count_once_there(repo: FeatureStore, to: Any) -> None:
    pushed = rows(3, 4.0)
    for _ in range(2):
        repo.push("spend_push", pushed, to=to, push_id=f"only-{to}")
    assert both(repo, 3) == (([1, 4.0], [0, 0.0]) if to == "online" else ([0, 0.0], [1, 4.0]))


def test_the_same_id_with_other_rows_or_destination_is_a_conflict(repo: FeatureStore) -> None:
    pushed = rows(4, 1.0)
    repo.push("spend_push", pushed, push_id="same")
    for other, to in [([{**pushed[0], "amount": 2.0}], "online_and_offline"), (pushed * 2, "online_and_offline"),
                      ([{**pushed[0], "customer_id": 5}], "online_and_offline"), (pushed, "offline")]:
        with pytest.raises(PushIdConflictError) as info:
            repo.push("spend_push", other, to=to, push_id="same")
        assert info.value.http_status == 409 and "'same'" in str(info.value) and "new id" in str(info.value)
    assert both(repo, 4) == ([1, 1.0], [1, 1.0]) and both(repo, 5) == ([0, 0.0], [0, 0.0])
    # ids are per push source
    repo.push("profile_push", [{"customer_id": 4, "updated_at": datetime.now(UTC) - timedelta(minutes=1),
                                "age": 30, "segment": "a"}], push_id="same")


@pytest.mark.parametrize("bad", ["", "x" * 201, "tab\there", "nul\x00"])
def test_a_push_id_is_1_to_200_printable_characters(repo: FeatureStore, bad: str) -> None:
    with pytest.raises(PushDataError, match="push id"):
        repo.push("spend_push", rows(6, 1.0), push_id=bad)
    assert both(repo, 6) == ([0, 0.0], [0, 0.0])


# --- attempts cut short -------------------------------------------------------------------------


def claim(store: FeatureStore, push_id: str, pushed: list[dict[str, Any]],
          to: str = "online_and_offline") -> tuple[Any, Any, Record]:
    """The first step of a push with an id (what an attempt killed right after it leaves behind)."""
    service = store.online
    checked = _checked(store, pushed)
    keys = service.push_keys
    record = keys.claim("spend_push", push_id, digest("spend_push", to, checked.log_lines(0)), checked.count,
                        to).record
    return service, checked, record


def _checked(store: FeatureStore, pushed: list[dict[str, Any]]) -> Any:
    from feature_store.push_rows import check_rows

    _version, catalog = store.serving_catalog()
    source = catalog.push_source("spend_push")
    batch = catalog.batch_source(source)
    return check_rows("spend_push", pushed, catalog.schema(batch.name), batch.timestamp_field,
                      {batch.timestamp_field, "customer_id"}, time.time_ns() // 1000, source.nullable)


@pytest.mark.slow  # waits on purpose (timers, switch intervals): make test, not make test-fast
@pytest.mark.parametrize("wait", [0.0, 1.2])
def test_an_attempt_killed_after_claiming_its_key(repo: FeatureStore, wait: float) -> None:
    """Retried at once, the retry logs at the time the key reserved; retried after the lease, it finds no copy
    in the log and logs at a time of its own."""
    pushed = rows(7, 1.0, 2.0)
    _service, _checked_rows, record = claim(repo, "k", pushed)
    time.sleep(wait)
    result = repo.push("spend_push", pushed, push_id="k")
    assert result.duplicate
    reserved = datetime.fromtimestamp(record.pushed_at / 1e6, UTC)
    assert (result.pushed_at == reserved) is (wait == 0.0)
    assert both(repo, 7) == ([2, 3.0], [2, 3.0])
    assert repo.push("spend_push", pushed, push_id="k").pushed_at == result.pushed_at


@pytest.mark.slow  # waits on purpose (timers, switch intervals): make test, not make test-fast
@pytest.mark.parametrize("wait", [0.0, 1.2])
def test_an_attempt_killed_after_logging(repo: FeatureStore, wait: float) -> None:
    """The copy is in the log, the record still PENDING and nothing online: a retry at once logs a second copy
    at the same time (counted once); a retry after the lease finds the copy and logs none."""
    pushed = rows(8, 1.0, 2.0, 4.0)
    _service, checked, record = claim(repo, "k2", pushed)
    repo.push_log.append("spend_push", lambda at: checked.log_lines(at, "k2"), record.pushed_at)
    assert offline(repo, 8) == [3, 7.0] and online(repo, 8) == [0, 0.0]
    time.sleep(wait)
    lines = _log_lines(repo)
    result = repo.push("spend_push", pushed, push_id="k2")
    assert result.duplicate and result.pushed_at == datetime.fromtimestamp(record.pushed_at / 1e6, UTC)
    assert _log_lines(repo) == lines + (3 if wait == 0.0 else 0)
    assert both(repo, 8) == ([3, 7.0], [3, 7.0])
    repo.materialize()
    assert both(repo, 8) == ([3, 7.0], [3, 7.0])


@pytest.mark.slow  # waits out a lease: make test, not make test-fast
def test_a_torn_copy_never_counts(repo: FeatureStore) -> None:
    """An attempt killed in the middle of writing its lines leaves a partial copy: readers skip it, and a retry
    after the lease logs the push whole at a time of its own."""
    pushed = rows(9, 1.0, 2.0, 4.0)
    _service, checked, record = claim(repo, "torn", pushed)
    whole = checked.log_lines(record.pushed_at, "torn")
    torn = whole[: whole.index(b"\n", whole.index(b"\n") + 1) + 10]  # two lines and a piece of the third
    folder = repo.push_log.directory / "spend_push"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "killed-1-1.jsonl").write_bytes(torn)  # the file of the process killed while writing
    assert offline(repo, 9) == [0, 0.0]
    time.sleep(1.2)
    result = repo.push("spend_push", pushed, push_id="torn")
    assert result.pushed_at > datetime.fromtimestamp(record.pushed_at / 1e6, UTC)
    assert both(repo, 9) == ([3, 7.0], [3, 7.0])
    repo.materialize()
    assert both(repo, 9) == ([3, 7.0], [3, 7.0])


@pytest.mark.slow  # waits out a lease: make test, not make test-fast
def test_a_materialization_between_attempts_counts_the_logged_copy_once(repo: FeatureStore) -> None:
    """The first attempt logged its copy; a materialization passes its time (counting it from the log) before
    the retry merges online: the retry's merge skips what the base holds."""
    pushed = rows(10, 5.0)
    _service, checked, record = claim(repo, "m", pushed)
    repo.push_log.append("spend_push", lambda at: checked.log_lines(at, "m"), record.pushed_at)
    repo.online.push_keys.replace("spend_push", "m", record, replace(record, state=LOGGED))
    time.sleep(1.1)
    repo.materialize()
    assert both(repo, 10) == ([1, 5.0], [1, 5.0])
    assert repo.push("spend_push", pushed, push_id="m").duplicate
    assert both(repo, 10) == ([1, 5.0], [1, 5.0])


@pytest.mark.requires("optimistic_updates", why="SQLite merges a push in one transaction: no chunk lands alone")
def test_an_attempt_killed_between_chunks(repo: FeatureStore) -> None:
    """Redis merges a big push in chunks of 64 rows, each with its marker: a retry merges only the chunks that
    had not landed."""
    from feature_store.online.service import PUSH_CHUNK_ROWS

    pushed = [event(1000 + i, 1.0) for i in range(2 * PUSH_CHUNK_ROWS + 10)]
    service, checked, record = claim(repo, "chunks", pushed)
    repo.push_log.append("spend_push", lambda at: checked.log_lines(at, "chunks"), record.pushed_at)
    service.push_keys.replace("spend_push", "chunks", record, replace(record, state=LOGGED))
    version, catalog = repo.serving_catalog()
    targets = service.push_targets(catalog, version, "spend_push")
    first = checked.slice(0, PUSH_CHUNK_ROWS)  # the first chunk lands, with its marker; then the kill
    service._push_online(targets, first, record.pushed_at, True, (service.push_keys, "spend_push", "chunks"))
    keys = [1000, 1000 + PUSH_CHUNK_ROWS, 1000 + len(pushed) - 1]
    assert [online(repo, k)[0] for k in keys] == [1, 0, 0]
    result = repo.push("spend_push", pushed, push_id="chunks")
    assert result.duplicate and result.online_updates == len(pushed) - PUSH_CHUNK_ROWS
    assert [both(repo, k) for k in keys] == [([1, 1.0], [1, 1.0])] * 3


def test_records_say_what_was_reached(repo: FeatureStore) -> None:
    pushed = rows(11, 1.0)
    service, _checked_rows, record = claim(repo, "r", pushed)
    assert record.state == PENDING
    repo.push("spend_push", pushed, push_id="r")
    key = service.push_keys.record_key("spend_push", "r")
    stored = Record.unpacked(service.store.read([key])[0] or b"")
    assert stored.state == LOGGED and stored.pushed_at == record.pushed_at and stored.rows == 1


def _log_lines(store: FeatureStore) -> int:
    return sum(open(f, "rb").read().count(b"\n") for f in store.push_log.files("spend_push"))


# --- random sequences -----------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_random_pushes_with_repeated_ids_equal_the_reference_without_repeats(
        online_store: dict[str, str], data: Any) -> None:
    """Pushes, some retried (at once or after the lease, after an attempt cut short at a random step), between
    materializations: online values and training sets equal the reference holding each push once."""
    start = base_time()
    spend = AggregationView(name="spend", features=FEATURES, rows=(), created_field=None,
                            schema=ref.default_event_schema())
    profile = SnapshotView(name="profile", fields=SNAPSHOT_FIELDS, rows=(), ttl=None,
                           schema=ref.default_profile_schema())
    path = Path(scratch_dir("push_id_prop_"))
    store = open_push_repo(path, spend, profile, online_store)
    store.push_log.settle_seconds = 1.0
    spend = _counted(spend)
    pushes: list[tuple[str, list[dict[str, Any]]]] = []
    try:
        store.materialize()
        steps = data.draw(st.lists(st.sampled_from(["new", "new", "retry", "cut", "materialize"]), min_size=1,
                                   max_size=6), label="steps")
        for step in steps:
            if step == "materialize":
                store.materialize()
                continue
            if step == "retry" and pushes:
                push_id, pushed = data.draw(st.sampled_from(pushes), label="retried")
                assert store.push("spend_push", pd.DataFrame(pushed), push_id=push_id).duplicate
                continue
            pushed = data.draw(rows_of("spend", start, False, data.draw(st.integers(1, 3))), label="rows")
            push_id = uuid.uuid4().hex
            if step == "cut":  # an attempt stops after its claim, or after logging a copy, then a retry
                _service, checked, record = claim(store, push_id, pushed)
                if data.draw(st.booleans(), label="logged"):
                    store.push_log.append("spend_push", lambda at, c=checked, p=push_id: c.log_lines(at, p),
                                          record.pushed_at)
                if data.draw(st.booleans(), label="retried after the lease"):
                    time.sleep(1.1)
            result = store.push("spend_push", pd.DataFrame(pushed), push_id=push_id)
            pushes.append((push_id, pushed))
            at = ref.from_micros(us(result.pushed_at))
            spend = replace(spend, rows=spend.rows + tuple({**r, "created": at} for r in pushed))
            check(store, spend, _counted(profile), f"after {step} of {steps}")
        store.materialize()
        check(store, spend, _counted(profile), f"after a last materialization, steps {steps}")
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)


def _counted(view: Any) -> Any:
    """The reference view with a created column (a pushed row's arrival), as test_push's does."""
    if view.created_field is not None:
        return view
    field = "event_timestamp" if isinstance(view, AggregationView) else "updated_at"
    schema = ref.default_event_schema("created") if isinstance(view, AggregationView) else \
        ref.default_profile_schema("created")
    rows_with = tuple({**row, "created": row[field]} for row in view.rows)
    return replace(view, rows=rows_with, created_field="created", schema=schema)



def test_expired_push_id_records_are_purged_from_sqlite(repo: FeatureStore) -> None:
    """SQLite keeps rows until they are deleted: a process deletes expired push id records at its first push with
    an id and hourly after; Redis expires them itself."""
    from feature_store.online.keys import PUSHES, split_key, view_prefix

    store = repo.online.store
    prefix = view_prefix(repo.online._store_prefix, repo.project, PUSHES)
    now_ms = time.time_ns() // 1_000_000
    old, kept = prefix + b"src\x00\xc1old", prefix + b"src\x00\xc1kept"
    store.write([(old, b"1", now_ms - 1), (kept, b"1", now_ms + 60_000)])
    if store.name == "sqlite":
        con = store._connection()  # expired rows are invisible to reads, so count them in the table
        count = "SELECT count(*) FROM fs_online_by_entity WHERE entity IN (?, ?)"
        entities = [split_key(old)[0], split_key(kept)[0]]
        assert con.execute(count, entities).fetchone()[0] == 2
        repo.push("spend_push", rows(12, 1.0), push_id="purges")
        assert con.execute(count, entities).fetchone()[0] == 1
    else:
        assert store.purge_expired(prefix) == 0
    assert store.read([kept]) == [b"1"] and store.read([old]) == [None]
