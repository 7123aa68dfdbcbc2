"""Freshness per feature view: how old its newest source event, its online watermark and its last push are.

A pipeline that stops shows here first: the source's newest event ages, then the watermark (materialization
stopped), or the last push (the stream stopped).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from feature_store.definitions import PushSource
from feature_store.errors import FeatureStoreError
from feature_store.offline.engine import from_us

if TYPE_CHECKING:
    from feature_store.store import FeatureStore


@dataclass(frozen=True)
class ViewFreshness:
    view: str
    newest_event: datetime | None  # in the batch source (pushed events: see last_push)
    watermark: datetime | None  # the live online generation holds every event available before it
    last_push: datetime | None  # the latest write to the view's push log (None: not a push source, or never)
    now: datetime
    error: str = ""  # why the source could not be read

    def age(self, when: datetime | None) -> float | None:
        return None if when is None else max(0.0, (self.now - when).total_seconds())

    def to_dict(self) -> dict[str, Any]:
        def stamp(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat()

        return {"newest_event": stamp(self.newest_event), "newest_event_age_seconds": self.age(self.newest_event),
                "watermark": stamp(self.watermark), "watermark_age_seconds": self.age(self.watermark),
                "last_push": stamp(self.last_push), "last_push_age_seconds": self.age(self.last_push),
                **({"error": self.error} if self.error else {})}


def freshness(store: FeatureStore, now: datetime | None = None, offline: bool = True) -> list[ViewFreshness]:
    """Every registered view's freshness; ``offline=False`` skips reading the sources and the registry (the
    server's gauges: a scrape must not scan source files), so it has no newest event."""
    now = now or datetime.now(UTC)
    if offline:
        catalog, live = store.catalog(), store.online.refresh().live
    else:  # what the server serves, as its registry refresher loaded it: no registry read here
        catalog, live = store.serving_catalog()[1], store.online.state().live
    out = []
    for name, view in catalog.views.items():
        source = catalog.source_of(view)
        generation = live.get(name)
        watermark = from_us(generation.watermark) if generation and generation.watermark is not None else None
        last_push = _last_push(store, source.name) if isinstance(source, PushSource) else None
        newest, error = None, ""
        if offline:
            try:
                newest = store.offline.newest_event(catalog.batch_source(source))
            except FeatureStoreError as exc:
                error = exc.message
        out.append(ViewFreshness(name, newest, watermark, last_push, now, error))
    return out


def _last_push(store: FeatureStore, source: str) -> datetime | None:
    """When any process last logged a push to the source (its tail files' modification times, compacted rows)."""
    last = store.push_log.last_push(source)
    return None if last is None else from_us(last)
