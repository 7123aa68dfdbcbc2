"""``feature-store monitor``: a reference and a current table (each a parquet file, a saved profile or a range
of served logs) compared feature by feature, with each view's freshness."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_store.errors import FeatureStoreError, MonitoringError, NotAppliedError
from feature_store.monitoring.drift import DriftReport, compare, thresholds_of
from feature_store.monitoring.freshness import ViewFreshness, freshness
from feature_store.monitoring.profiles import Profile, load_profile, profile_for
from feature_store.monitoring.served_log import STATUS_SUFFIX

if TYPE_CHECKING:
    from feature_store.store import FeatureStore

SERVED = "served:"
SOURCE = "source:"


@dataclass(frozen=True)
class MonitorResult:
    reference: str
    current: str
    reference_profile: Profile
    current_profile: Profile
    drift: DriftReport
    freshness: list[ViewFreshness]

    def to_json(self) -> dict[str, Any]:
        drift = self.drift
        return {"reference": self.reference, "current": self.current,
                "reference_rows": self.reference_profile["rows"], "current_rows": self.current_profile["rows"],
                "features": {name: f.to_dict() for name, f in drift.features.items()},
                "drifted": drift.drifted, "only_in_reference": list(drift.only_in_reference),
                "only_in_current": list(drift.only_in_current), "kind_changed": list(drift.kind_changed),
                "freshness": {f.view: f.to_dict() for f in self.freshness}}


def monitor(store: FeatureStore, reference: str, current: str, record: bool = True) -> MonitorResult:
    """Compare ``current`` with ``reference``; ``record`` keeps each feature's PSI in the registry (the feature
    server exports the last one as a gauge)."""
    ref_profile, cur_profile = resolve(store, reference, "reference"), resolve(store, current, "current")
    ref_profile, cur_profile = align(ref_profile, cur_profile)
    try:
        catalog = store.catalog()
    except NotAppliedError:
        catalog = None
    report = compare(ref_profile, cur_profile, thresholds_of(catalog) if catalog is not None else {})
    if not report.features:
        raise MonitoringError(
            f"the reference ({reference}) and the current table ({current}) have no feature in common: the "
            f"reference has {sorted(ref_profile['features'])[:10]}, the current one "
            f"{sorted(cur_profile['features'])[:10]}.")
    try:
        fresh = freshness(store) if catalog is not None else []
    except FeatureStoreError:  # the online store does not answer: drift still says what it can
        fresh = []
    if record:
        store.registry.record_drift({name: (f.psi, f.threshold) for name, f in report.features.items()})
    return MonitorResult(reference, current, ref_profile, cur_profile, report, fresh)


def resolve(store: FeatureStore, text: str, what: str) -> Profile:
    """A parquet path, a saved profile's name, ``served:START..END`` or ``source:VIEW:START..END`` as a profile."""
    if text.startswith(SOURCE):
        return _source_profile(store, text, what)
    if text.startswith(SERVED):
        start, end = served_range(text[len(SERVED):])
        table = store.served_features(start, end)
        if table.empty:
            raise MonitoringError(f"the {what} {text!r} holds no logged reads: is monitoring.log_served on, and "
                                  "did the servers serve in that range?")
        return profile_for(store, table.drop(columns=[c for c in table.columns if c.endswith(STATUS_SUFFIX)]))
    path = Path(text)
    if not path.is_absolute():
        path = Path.cwd() / path if (Path.cwd() / path).exists() else store.repo_path / path
    if path.exists() or text.endswith(".parquet"):
        return profile_for(store, str(path))
    if not re.fullmatch(r"\w+", text):
        raise MonitoringError(f"the {what} {text!r} is neither a file nor a saved profile name nor "
                              "served:START..END.")
    return load_profile(store, text)


def _source_profile(store: FeatureStore, text: str, what: str) -> Profile:
    """The raw columns of a view's batch source over a time range: what its features are computed from."""
    view_name, colon, span = text[len(SOURCE):].partition(":")
    if not colon:
        raise MonitoringError(f"the {what} {text!r} must be source:VIEW:START..END, e.g. "
                              "source:customer_spend:2026-12-01..2026-12-05.")
    start, end = served_range(span)
    catalog = store.offline_catalog()
    source = catalog.batch_source(catalog.source_of(catalog.view(view_name)))
    table = store.offline.source_rows(source, start, end)
    if table.num_rows == 0:
        raise MonitoringError(f"the {what} {text!r} holds no rows: source {source.name!r} has no event between "
                              f"{start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC.")
    created = source.created_timestamp_field
    return profile_for(store, table.drop_columns([created]) if created and created in table.column_names else table)


def served_range(text: str) -> tuple[datetime, datetime]:
    """``START..END``: ISO dates or times (UTC unless they say); a date as END includes that whole day;
    an empty START is the beginning of time, an empty END now."""
    start_text, dots, end_text = text.partition("..")
    if not dots:
        raise MonitoringError(f"served range {text!r} must be START..END, e.g. served:2026-12-01..2026-12-05.")
    start = _when(start_text, end=False) if start_text else datetime(1970, 1, 1, tzinfo=UTC)
    end = _when(end_text, end=True) if end_text else datetime.now(UTC) + timedelta(seconds=1)
    if end <= start:
        raise MonitoringError(f"served range {text!r} ends before it starts.")
    return start, end


def _when(text: str, end: bool) -> datetime:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=1) if end else day, datetime.min.time(), UTC)
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise MonitoringError(f"{text!r} is not an ISO date or time (2026-12-01 or 2026-12-01T08:00).") from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def align(reference: Profile, current: Profile) -> tuple[Profile, Profile]:
    """Served logs name features ``view__feature``; a training set may name them ``feature``: when a name of one
    side is missing from the other and its short form matches exactly one, the current side takes the
    reference's name."""
    ref, cur = reference["features"], current["features"]
    renamed: dict[str, Any] = {}
    for name, stats in cur.items():
        target = name
        if name not in ref:
            short = name.split("__", 1)[1] if "__" in name else None
            longs = [r for r in ref if "__" in r and r.split("__", 1)[1] == name]
            if short is not None and short in ref and short not in cur:
                target = short
            elif len(longs) == 1 and longs[0] not in cur:
                target = longs[0]
        renamed.setdefault(target, stats)
    return reference, {**current, "features": renamed}


def age_text(seconds: float | None) -> str:
    """An age for people: 45s, 12m, 3h 5m, 2d 4h; '-' for none."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
