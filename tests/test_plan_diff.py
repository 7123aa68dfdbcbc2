"""A plan says what changed in each changed definition, field by field, old -> new (plan.py's FieldChange)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from feature_store import Count, Entity, FeatureService, FeatureView, Field, FileSource, Mean, Sum
from feature_store.catalog import Catalog
from feature_store.plan import Change, FieldChange, ReadersSee, diff_specs, make_plan


def definitions(
    window: str = "7d", extra: bool = False, drop_count: bool = False, ttl: str | None = "365d",
    hop: timedelta | None = timedelta(hours=1), join_keys: tuple[str, ...] = ("customer_id",),
    served: tuple[str, ...] = ("spend_7d",), path: str = "data/tx.parquet", reorder: bool = False,
    description: str = "",
) -> list[Any]:
    customer = Entity(name="customer", join_keys=list(join_keys))
    tx = FileSource(name="tx", path=path, timestamp_field="ts")
    aggregations: list[Any] = [Sum("amount", window=window, name="spend_7d"), Mean("amount", window="30d")]
    if not drop_count:
        aggregations.append(Count(window="30d", name="txn_count_30d"))
    if extra:
        aggregations.append(Sum("amount", window="14d", name="spend_14d"))
    if reorder:
        aggregations.reverse()
    spend = FeatureView(name="spend", entities=[customer], source=tx, features=aggregations, hop=hop,
                        description=description)
    profile = FeatureView(name="profile", entities=[customer], source=FileSource(name="p", path="data/p.parquet",
                                                                                 timestamp_field="ts"),
                          features=[Field("age", "int64")], ttl=ttl)
    service = FeatureService(name="model", features=[spend[list(served)], profile])
    return [customer, tx, spend, profile, service]


def changes(**kwargs: Any) -> dict[str, Change]:
    plan = make_plan("p", 1, Catalog.build(definitions()), Catalog.build(definitions(**kwargs)))
    return {c.name: c for c in plan.changes}


def only(change: Change) -> FieldChange:
    assert len(change.diffs) == 1, change.diffs
    return change.diffs[0]


def test_a_window_changes_old_to_new() -> None:
    diff = only(changes(window="14d")["spend"])
    assert diff == FieldChange(("features", "spend_7d", "window"), "change", "7d", "14d")
    assert diff.field == "features[spend_7d].window"
    assert diff.describe() == "features[spend_7d].window: 7d \u2192 14d"


def test_a_feature_added_and_one_removed() -> None:
    change = changes(extra=True, drop_count=True)["spend"]
    assert [(d.path, d.action) for d in change.diffs] == [
        (("features", "spend_14d"), "add"), (("features", "txn_count_30d"), "remove")]
    added, removed = change.diffs
    assert added.new == {"kind": "sum", "column": "amount", "window": "14d", "name": "spend_14d", "hop": None}
    assert added.describe() == "features[spend_14d] added: sum(amount) over 14d"
    assert removed.describe() == "features[txn_count_30d] removed (was count(*) over 30d)"
    assert change.fields == ("features",)  # the top-level keys, as before


@pytest.mark.parametrize(("kwargs", "view", "text"), [
    ({"ttl": "180d"}, "profile", "ttl: 365d \u2192 180d"),
    ({"ttl": None}, "profile", "ttl: 365d \u2192 none"),
    ({"hop": timedelta(minutes=30)}, "spend", "hop: 1h \u2192 30m"),
    ({"path": "data/tx2.parquet"}, "tx", "path: data/tx.parquet \u2192 data/tx2.parquet"),
    ({"description": "What a customer spends."}, "spend", 'description: "" \u2192 What a customer spends.'),
    ({"join_keys": ("customer_id", "region")}, "customer", "join_keys: added region"),
    ({"served": ("spend_7d", "txn_count_30d")}, "model", "features[spend]: added txn_count_30d"),
    ({"reorder": True}, "spend", "features: spend_7d, amount_mean_30d, txn_count_30d \u2192 "
                                 "txn_count_30d, amount_mean_30d, spend_7d"),
])
def test_each_kind_of_field(kwargs: dict[str, Any], view: str, text: str) -> None:
    change = changes(**kwargs)[view]
    assert [d.describe() for d in change.diffs] == [text]


def test_a_window_removed_reads_lifetime() -> None:
    diff = diff_specs({"features": [{"name": "x", "kind": "sum", "column": "a", "window": "7d", "hop": None}]},
                      {"features": [{"name": "x", "kind": "sum", "column": "a", "window": None, "hop": None}]})
    assert [d.describe() for d in diff] == ["features[x].window: 7d \u2192 lifetime"]


def test_added_and_removed_definitions_have_no_field_diffs() -> None:
    plan = make_plan("p", 1, Catalog.build(definitions()[:2]), Catalog.build(definitions()))
    assert {c.action for c in plan.changes} == {"add"}
    assert all(c.diffs == () for c in plan.changes)


def test_plan_text_shows_the_diffs() -> None:
    plan = make_plan("p", 1, Catalog.build(definitions()), Catalog.build(definitions(window="14d")))
    assert str(plan) == ("project 'p', registry version 1:\n"
                         "  change feature view 'spend' (features); rebuilds materialized data of spend\n"
                         "    features[spend_7d].window: 7d \u2192 14d\n"
                         "  until materialize builds them, online readers see:\n"
                         "    spend: amount_mean_30d, txn_count_30d: previous values (definition unchanged)\n"
                         "    spend: spend_7d: values of their previous definition")


def readers(**kwargs: Any) -> dict[str, ReadersSee]:
    plan = make_plan("p", 1, Catalog.build(definitions()), Catalog.build(definitions(**kwargs)))
    return {seen.view: seen for seen in plan.readers}


def test_what_readers_see_until_materialize() -> None:
    assert readers(extra=True, drop_count=True, window="14d") == {"spend": ReadersSee(
        "spend", kept=("amount_mean_30d",), previous=("spend_7d",), not_materialized=("spend_14d",),
        dropped=("txn_count_30d",))}
    # a changed source rebuilds every view over it: all its features keep their previous values meanwhile
    assert readers(path="data/other.parquet") == {"spend": ReadersSee(
        "spend", kept=("spend_7d", "amount_mean_30d", "txn_count_30d"))}
    assert readers(description="cosmetic") == {}  # nothing rebuilt: nothing changes for readers
    assert readers(served=("spend_7d", "amount_mean_30d")) == {}  # a service's change rebuilds nothing
    added = make_plan("p", 1, Catalog.build(definitions()[:2]), Catalog.build(definitions()))
    assert {seen.view: seen.not_materialized for seen in added.readers} == {
        "profile": ("age",), "spend": ("spend_7d", "amount_mean_30d", "txn_count_30d")}
    removed = make_plan("p", 1, Catalog.build(definitions()), Catalog.build(definitions()[:2]))
    assert removed.readers == ()
