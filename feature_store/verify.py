"""verify: read sampled entities online and compute them offline at the same time, feature by feature.

The offline side is computed over the data as the online store last saw it (rows available before
the view's online watermark), so a difference means serving and training disagree, not merely that
new data has arrived since the last materialization.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from feature_store.errors import OfflineStoreError
from feature_store.offline.engine import from_us, still_valid
from feature_store.plan import view_signature

if TYPE_CHECKING:
    from feature_store.store import FeatureStore

REL_TOLERANCE = 1e-9


@dataclass(frozen=True)
class FeatureCheck:
    view: str
    feature: str
    compared: int
    mismatches: int  # both present, different values
    null_mismatches: int  # null on one side only
    mean_relative_difference: float
    example: str = ""

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.null_mismatches == 0


@dataclass(frozen=True)
class VerifyReport:
    now: datetime
    checks: tuple[FeatureCheck, ...]
    not_materialized: tuple[str, ...]
    not_found: dict[str, int]  # view -> sampled entities the online store does not have

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and not self.not_materialized


def verify(store: FeatureStore, sample: int = 1000, views: Sequence[str] | None = None,
           now: datetime | None = None, seed: int = 0) -> VerifyReport:
    if not store.offline.capabilities.sample_keys:
        raise OfflineStoreError(f"the {store.offline.name} offline engine cannot sample entity keys, which verify "
                                "compares; run verify with an engine that can (duckdb).", engine=store.offline.name)
    catalog = store.offline_catalog()
    now = now or datetime.now(UTC)
    live = store.online.refresh().live
    checks: list[FeatureCheck] = []
    missing: list[str] = []
    not_found: dict[str, int] = {}
    for name in views or list(catalog.views):
        view = catalog.view(name)
        files = store.offline.fingerprint(catalog.batch_source(catalog.source_of(view)))
        generation = live.get(name)
        if generation is None or generation.signature != view_signature(catalog, name) or \
                generation.watermark is None or not still_valid(generation.files, files):
            missing.append(name)
            continue
        watermark = generation.watermark
        keys = store.offline.sample_keys(catalog, name, sample, seed).to_pandas()
        if keys.empty:
            continue
        refs = [f"{name}:{f}" for f in view.feature_names]
        online = store.get_online_features(refs, {k: keys[k].tolist() for k in keys.columns}, now=now)
        entity_df = keys.assign(event_timestamp=pd.Timestamp(now))
        offline = store.get_historical_features(entity_df, refs, available_before=from_us(watermark),
                                                pushed_before=now).to_df()
        not_found[name] = sum(s == "NOT_FOUND" for s in next(iter(online.statuses.values())))
        for feature in view.feature_names:
            checks.append(_compare(name, feature, online.values[feature], offline[feature].tolist()))
    return VerifyReport(now, tuple(checks), tuple(missing), not_found)


def _compare(view: str, feature: str, online: list[Any], offline: list[Any]) -> FeatureCheck:
    mismatches = nulls = 0
    differences: list[float] = []
    example = ""
    for got, want in zip(online, offline, strict=True):
        if hasattr(want, "tolist") and not isinstance(want, int | float):  # a list feature: numpy array offline
            want = want.tolist()
        got_null, want_null = _is_null(got), _is_null(want)
        if got_null or want_null:
            if got_null != want_null:
                nulls += 1
                example = example or f"online {got!r} vs offline {want!r}"
            continue
        if isinstance(got, int | float) and isinstance(want, int | float) and not isinstance(got, bool):
            scale = max(abs(float(want)), abs(float(got)))
            difference = 0.0 if scale == 0 else abs(float(got) - float(want)) / scale
            differences.append(difference)
            if difference > REL_TOLERANCE:
                mismatches += 1
                example = example or f"online {got!r} vs offline {want!r}"
        elif got != want:
            mismatches += 1
            differences.append(1.0)
            example = example or f"online {got!r} vs offline {want!r}"
        else:
            differences.append(0.0)
    mean = sum(differences) / len(differences) if differences else 0.0
    return FeatureCheck(view, feature, len(online), mismatches, nulls, mean, example)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
