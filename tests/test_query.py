"""The compiled plan (feature_store/query.py) is engine-neutral data: compiled from definitions and the column
types the registry recorded at apply, equal when compiled twice, printable, and free of any engine's SQL."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from feature_store import FeatureStore, LastK, Mean
from feature_store.aggregations import Partial
from feature_store.query import ViewQuery, compile_view
from feature_store.references import resolve_features


def plan_of(store: FeatureStore, refs: list[str]) -> list[ViewQuery]:
    catalog = store.catalog()
    items = resolve_features(catalog, refs, full_feature_names=False)
    views = dict.fromkeys(item.view.name for item in items)
    return [compile_view(catalog, catalog.view(name), [i for i in items if i.view.name == name]) for name in views]


def test_the_plan_reads_only_the_registry(example_repo: Path) -> None:
    store = FeatureStore(example_repo)
    store.apply()
    refs = ["customer_spend:avg_spend_90d", "customer_spend:lifetime_spend", "customer_profile:segment"]
    before = plan_of(store, refs)
    for path in (example_repo / "data").iterdir():  # no source file, no offline database: the same plan
        if path.name != "registry.db":
            path.unlink()
    again = FeatureStore(example_repo)
    assert plan_of(again, refs) == before


def test_the_plan_is_printable_and_holds_no_sql(example_repo: Path) -> None:
    store = FeatureStore(example_repo)
    store.apply()
    spend, = plan_of(store, ["customer_spend:avg_spend_90d", "customer_spend:lifetime_spend"])
    text = str(spend)
    assert text.splitlines()[:2] == [
        "view customer_spend (aggregation)",
        "  source: transactions + pushed events of transactions_push; keys: customer_id int64",
    ]
    assert "  feature avg_spend_90d: mean(amount) over 90d, hop 1h -> float64" in text
    assert "  feature lifetime_spend: sum(amount) over unbounded, hop 1h -> float64" in text
    assert "  online group cumulative: maxts(*), sum(amount)" in text
    every_string = repr(dataclasses.asdict(spend))
    for sql in ("SELECT", "read_parquet", "FROM "):
        assert sql not in every_string


def test_each_function_declares_its_partials_in_the_shared_vocabulary() -> None:
    from feature_store.aggregations import function_of

    mean = Mean("amount", window="7d")
    assert function_of(mean).partials(mean, "float64") == (Partial("count", "amount"), Partial("sum", "amount"))
    last5 = LastK("category", k=5, window="7d")
    partials = function_of(last5).partials(last5, "string")
    assert [(p.kind, p.column, p.param) for p in partials] == [("latest_k", "category", 5)]


def test_hop_groups_follow_the_definitions(example_repo: Path) -> None:
    """A view's online layout: one group per hop of its bounded windows, then the cumulative group; the widest
    window of each; the union of the partials its features need."""
    store = FeatureStore(example_repo)
    store.apply()
    spend, = plan_of(store, ["customer_spend:avg_spend_90d"])
    hops = [(g.hop, g.window) for g in spend.groups]
    hour, day = 3_600_000_000, 86_400_000_000
    assert hops == [(hour, 90 * day), (0, 0)]
    bounded = spend.groups[0]
    kinds = {p.kind for p in bounded.partials}
    assert {"count", "sum", "max", "last"} <= kinds
    assert len(bounded.fields) == len(bounded.storages)
