"""Serve-time skew: logged online reads recomputed offline at the same request times, feature by feature.

Each logged read is recomputed as a training set row (entity keys, event_timestamp = the request time) over the
data as the online store had it: source rows available before the view's online watermark of that moment (logged
with the read) and pushed events that had arrived by the request. A difference means serving and training
disagree for that row (a corrupted online value, a pipeline bug), so a healthy deployment reports none.
Reads made while a materialization was switching the watermark (within one registry refresh) may differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd

from feature_store.errors import MonitoringError
from feature_store.monitoring.served_log import REQUEST_TIME, STATUS_SUFFIX, WATERMARK_PREFIX
from feature_store.offline.engine import from_us
from feature_store.verify import _compare

if TYPE_CHECKING:
    from feature_store.store import FeatureStore

MAX_EXAMPLES = 3


@dataclass(frozen=True)
class FeatureSkew:
    view: str
    feature: str
    compared: int
    mismatches: int  # values differ, or null on one side only
    examples: tuple[str, ...]

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.compared if self.compared else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "feature": self.feature, "compared": self.compared,
                "mismatches": self.mismatches, "mismatch_rate": self.mismatch_rate, "examples": list(self.examples)}


@dataclass(frozen=True)
class SkewReport:
    start: datetime
    end: datetime
    features: dict[str, FeatureSkew]  # by view__feature
    not_materialized: dict[str, int]  # view -> logged rows served while it had no online data

    @property
    def ok(self) -> bool:
        return all(f.mismatches == 0 for f in self.features.values())


def skew(store: FeatureStore, start: datetime, end: datetime, sample: int | None = None) -> SkewReport:
    """Recompute the reads logged in [start, end) (at most ``sample`` rows per view, the latest) offline."""
    logged = store.served_value_log().read(start, end, internal=True)
    if logged.empty:
        raise MonitoringError(f"no logged reads between {start:%Y-%m-%d %H:%M} and {end:%Y-%m-%d %H:%M} UTC: "
                              "is monitoring.log_served on, and did anything serve then?")
    catalog = store.offline_catalog()
    features: dict[str, FeatureSkew] = {}
    missing: dict[str, int] = {}
    for column in [c for c in logged.columns if c.startswith(WATERMARK_PREFIX)]:
        view_name = column[len(WATERMARK_PREFIX):]
        if view_name not in catalog.views:
            continue  # removed since: nothing to recompute it with
        view = catalog.view(view_name)
        names = [f for f in view.feature_names if f"{view_name}__{f}{STATUS_SUFFIX}" in logged.columns]
        asked = logged[[f"{view_name}__{f}{STATUS_SUFFIX}" for f in names]].notna().any(axis=1)
        rows = logged[asked]
        unmaterialized = rows[column].isna()
        if unmaterialized.any():
            missing[view_name] = int(unmaterialized.sum())
        rows = rows[~unmaterialized]
        if sample is not None:
            rows = rows.tail(sample)
        for name, check in _view_skew(store, catalog, view_name, names, rows).items():
            features[name] = check
    return SkewReport(start, end, features, missing)


def _view_skew(store: FeatureStore, catalog: Any, view: str, features: list[str],
               rows: pd.DataFrame) -> dict[str, FeatureSkew]:
    keys = catalog.join_keys(catalog.view(view))
    served: dict[str, list[Any]] = {f: [] for f in features}
    offline: dict[str, list[Any]] = {f: [] for f in features}
    labels: dict[str, list[str]] = {f: [] for f in features}
    watermark_column = f"{WATERMARK_PREFIX}{view}"
    for watermark, group in rows.groupby(watermark_column, sort=True):
        entity_df = group[list(keys)].copy()
        for key in keys:  # a key column read back as float (other reads' rows were null there) is an integer again
            column = entity_df[key]
            if column.dtype.kind == "f" and column.notna().all() and (column % 1 == 0).all():
                entity_df[key] = column.astype("int64")
        entity_df["event_timestamp"] = group[REQUEST_TIME]
        latest = group[REQUEST_TIME].max().to_pydatetime() + timedelta(microseconds=1)
        computed = store.get_historical_features(entity_df.reset_index(drop=True),
                                                 [f"{view}:{f}" for f in features],
                                                 available_before=from_us(int(watermark)),  # type: ignore[arg-type]
                                                 pushed_before=latest).to_df()
        group_labels = [f"{', '.join(f'{k}={row[k]}' for k in keys)} at {row[REQUEST_TIME]:%Y-%m-%d %H:%M:%S.%f}"
                        for _, row in group.iterrows()]
        for feature in features:
            asked = group[f"{view}__{feature}{STATUS_SUFFIX}"].notna().to_numpy()  # a read may ask for some only
            served[feature] += [_plain(v) for v, a in zip(group[f"{view}__{feature}"], asked, strict=True) if a]
            offline[feature] += [v for v, a in zip(computed[feature].tolist(), asked, strict=True) if a]
            labels[feature] += [label for label, a in zip(group_labels, asked, strict=True) if a]
    out = {}
    for feature in features:
        check = _compare(view, feature, served[feature], offline[feature])
        examples: list[str] = []
        if not check.ok:
            for label, got, want in zip(labels[feature], served[feature], offline[feature], strict=True):
                if not _compare(view, feature, [got], [want]).ok:
                    examples.append(f"{label}: served {got!r}, offline {want!r}")
                    if len(examples) == MAX_EXAMPLES:
                        break
        out[f"{view}__{feature}"] = FeatureSkew(view, feature, check.compared,
                                                check.mismatches + check.null_mismatches, tuple(examples))
    return out


def _plain(value: Any) -> Any:
    """A logged value as the online read gave it: numpy scalars and arrays as Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
