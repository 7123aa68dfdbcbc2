"""Deploys without outage: between ``apply`` and ``materialize`` online readers see what ``plan`` says they will
(previous values of unchanged features, the previous definition's values of changed ones, NOT_MATERIALIZED for
new ones), pushes keep counting, and the switch to the new generation loses no push, including pushes from a
process that had not loaded the new definition yet."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import feature_store as fs
from feature_store.plan import ReadersSee
from feature_store.store import FeatureStore

REFS = ["spend:spend_30d", "spend:n", "spend:max_30d"]
_projects = itertools.count()


def definitions(path: Path, changed: bool) -> list[Any]:
    """Version 1, or version 2: ``n``'s window 7d -> 3d, ``max_30d`` added, ``spend_30d`` unchanged."""
    customer = fs.Entity(name="customer", join_keys=["customer_id"])
    batch = fs.FileSource(name="tx", path=str(path), timestamp_field="ts")
    push = fs.PushSource(name="tx_push", batch_source=batch)
    features: list[Any] = [fs.Sum("amount", window="30d", name="spend_30d"),
                           fs.Count(window="3d" if changed else "7d", name="n")]
    if changed:
        features.append(fs.Max("amount", window="30d", name="max_30d"))
    return [customer, batch, push, fs.FeatureView(name="spend", entities=[customer], source=push, features=features)]


@pytest.fixture
def repo(tmp_path: Path, online_store: dict[str, str]) -> Path:
    inner = ", ".join(f"{k}: {v!r}" if k == "url" else f"{k}: {v}" for k, v in online_store.items())
    (tmp_path / "feature_store.yaml").write_text(
        f"project: deploy{next(_projects)}\nonline_store: {{{inner}}}\nserver: {{registry_refresh_seconds: 1}}\n")
    now = datetime.now(UTC)
    # customer 1: an event 5 days ago (in n's old 7d window, not in the new 3d one) and one 1 day ago
    pd.DataFrame({
        "customer_id": [1, 1, 2],
        "ts": [now - timedelta(days=5), now - timedelta(days=1), now - timedelta(days=2)],
        "amount": [10.0, 20.0, 7.0],
    }).to_parquet(tmp_path / "tx.parquet")
    return tmp_path


def fresh(repo: Path) -> FeatureStore:
    store = FeatureStore(repo)
    store.push_log.settle_seconds = 0.0  # nothing is in flight: one thread pushes, then materializes
    store.push_log.bucket_seconds = 1e-6
    return store


def read(store: FeatureStore, refs: list[str] = REFS) -> dict[str, tuple[list[Any], list[str]]]:
    response = store.get_online_features(refs, {"customer_id": [1, 2]})
    return {name: (response.values[name], response.statuses[name]) for name in response.values}


def push(store: FeatureStore, amount: float) -> None:
    store.push("tx_push", [{"customer_id": 1, "ts": datetime.now(UTC), "amount": amount}])


@pytest.mark.slow  # waits on purpose (timers, switch intervals): make test, not make test-fast
def test_between_apply_and_materialize_readers_see_what_plan_said(repo: Path) -> None:
    store = fresh(repo)
    store.apply(definitions(repo / "tx.parquet", changed=False))
    store.materialize()
    before = read(store, REFS[:2])
    assert before == {"spend_30d": ([30.0, 7.0], ["PRESENT"] * 2), "n": ([2, 1], ["PRESENT"] * 2)}

    plan = store.plan(definitions(repo / "tx.parquet", changed=True))
    assert plan.readers == (ReadersSee("spend", kept=("spend_30d",), previous=("n",),
                                       not_materialized=("max_30d",)),)
    assert "max_30d: NOT_MATERIALIZED" in str(plan)
    store.apply(plan)

    during = read(store)
    assert during["spend_30d"] == before["spend_30d"]  # kept: the same values
    assert during["n"] == before["n"]  # previous definition (7d): still counts the event 5 days ago
    assert during["max_30d"] == ([None, None], ["NOT_MATERIALIZED"] * 2)

    push(store, 5.0)  # pushes keep counting in the generation readers serve
    assert read(store)["spend_30d"][0] == [35.0, 7.0]
    assert read(store)["n"][0] == [3, 1]

    store.materialize()  # builds the new generation beside the live one, then switches
    after = read(store)
    assert after == {"spend_30d": ([35.0, 7.0], ["PRESENT"] * 2), "n": ([2, 1], ["PRESENT"] * 2),
                     "max_30d": ([20.0, 7.0], ["PRESENT"] * 2)}
    assert store.verify().ok


@pytest.mark.slow  # waits on purpose (timers, switch intervals): make test, not make test-fast
def test_a_push_from_a_process_still_on_the_old_definition_counts_after_the_switch(repo: Path) -> None:
    """A feature server that has not reloaded the registry yet pushes to the old generation only; the new one
    switches no earlier than every server has reloaded (server.registry_refresh_seconds after apply), and
    takes such pushes from the log."""
    store = fresh(repo)
    store.apply(definitions(repo / "tx.parquet", changed=False))
    store.materialize()
    server = fresh(repo)  # another process's store: loads the serving catalog now, refreshes every 2 s
    assert read(server, REFS[:2])["n"][0] == [2, 1]

    store.apply(definitions(repo / "tx.parquet", changed=True))
    push(server, 5.0)  # still on version 1
    push(store, 1.0)  # on version 2: written to both generations
    steps: list[str] = []
    store.materialize(progress=lambda what, done, total: steps.append(what))
    assert any("waits for feature servers" in what for what in steps)

    expected = {"spend_30d": ([36.0, 7.0], ["PRESENT"] * 2), "n": ([3, 1], ["PRESENT"] * 2),
                "max_30d": ([20.0, 7.0], ["PRESENT"] * 2)}
    assert read(store) == expected
    server.registry_refresh_seconds = 0.0  # as its next refresh would
    assert read(server) == expected
    assert store.verify().ok
