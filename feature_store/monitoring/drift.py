"""Drift: the population stability index (PSI) of each feature, current against reference, from their profiles.

Numbers are binned on the reference's deciles (ties merged, so a discrete feature gets fewer bins); the share
of rows in each bin is read from each profile's 101 percentiles, which places any edge to within one
percentile, so a saved profile serves as well as the table it came from. Categories are binned by value: each
of the reference's values, plus one bin for the rest (values the reference never had, and those beyond the
``MAX_CATEGORIES`` it kept). Shares are floored at ``EPSILON`` so that an empty bin gives a large, finite PSI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from feature_store.monitoring.profiles import PERCENTILES, PSI_QUANTILES, Profile

if TYPE_CHECKING:
    from feature_store.catalog import Catalog

DEFAULT_THRESHOLD = 0.2
EPSILON = 1e-4
MAX_UNSEEN_LISTED = 20  # unseen categories named in a report (their share counts all of them)


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    kind: str
    psi: float
    threshold: float
    unseen: tuple[str, ...]
    unseen_share: float
    null_share_reference: float
    null_share_current: float
    reference_rows: int
    current_rows: int

    @property
    def drifted(self) -> bool:
        return self.psi > self.threshold

    @property
    def null_share_change(self) -> float:
        return self.null_share_current - self.null_share_reference

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "psi": self.psi, "threshold": self.threshold, "drifted": self.drifted,
                "unseen": list(self.unseen), "unseen_share": self.unseen_share,
                "null_share_reference": self.null_share_reference, "null_share_current": self.null_share_current,
                "null_share_change": self.null_share_change, "reference_rows": self.reference_rows,
                "current_rows": self.current_rows}


@dataclass(frozen=True)
class DriftReport:
    features: dict[str, FeatureDrift]
    only_in_reference: tuple[str, ...] = ()
    only_in_current: tuple[str, ...] = ()
    kind_changed: tuple[str, ...] = ()  # a number in one table, a category in the other: not compared
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]


def compare(reference: Profile, current: Profile, thresholds: dict[str, float] | None = None) -> DriftReport:
    """PSI, drifted, unseen categories and null shares of every feature both profiles hold."""
    thresholds = thresholds or {}
    ref, cur = reference["features"], current["features"]
    features: dict[str, FeatureDrift] = {}
    kind_changed = []
    for name in [n for n in ref if n in cur]:
        r, c = ref[name], cur[name]
        if r["kind"] != c["kind"]:
            kind_changed.append(name)
            continue
        psi, unseen, unseen_share = (numeric_psi(r, c), (), 0.0) if r["kind"] == "numeric" else categorical_psi(r, c)
        features[name] = FeatureDrift(name, r["kind"], psi, thresholds.get(name, DEFAULT_THRESHOLD), unseen,
                                      unseen_share, float(r["null_share"]), float(c["null_share"]), int(r["rows"]),
                                      int(c["rows"]))
    return DriftReport(features, tuple(n for n in ref if n not in cur), tuple(n for n in cur if n not in ref),
                       tuple(kind_changed))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """sum((a - e) * ln(a / e)) over bins of shares, each floored at EPSILON."""
    e = np.maximum(expected, EPSILON)
    a = np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_edges(reference: dict[str, Any]) -> np.ndarray:
    """The reference's distinct deciles: bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    percentiles = np.asarray(reference["percentiles"], dtype=float)
    return np.unique(np.interp(PSI_QUANTILES, PERCENTILES, percentiles))


def cdf_at(feature: dict[str, Any], edges: np.ndarray) -> np.ndarray:
    """The share of the feature's values <= each edge, from its percentiles (to within one percentile).

    Between two percentiles the share grows linearly; over a run of equal percentiles (a value many rows
    hold) it jumps past the whole run, as the step of a discrete distribution does."""
    q = np.asarray(feature["percentiles"], dtype=float)
    k = np.searchsorted(q, edges, side="right")  # percentiles <= edge
    share = np.where(k == 0, 0.0, PERCENTILES[np.maximum(k - 1, 0)])
    inside = (k > 0) & (k < q.size)
    low, high = q[np.maximum(k - 1, 0)], q[np.minimum(k, q.size - 1)]
    step = PERCENTILES[1] - PERCENTILES[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        extra = np.where(inside & (high > low), (edges - low) / (high - low) * step, 0.0)
    return np.clip(share + extra, 0.0, 1.0)


def bin_shares(feature: dict[str, Any], edges: np.ndarray) -> np.ndarray:
    cdf = np.concatenate([[0.0], cdf_at(feature, edges), [1.0]])
    return np.diff(cdf)


def numeric_psi(reference: dict[str, Any], current: dict[str, Any]) -> float:
    if not reference["percentiles"] or not current["percentiles"]:
        return 0.0  # no values on one side: the null share says it
    edges = bin_edges(reference)
    return psi(bin_shares(reference, edges), bin_shares(current, edges))


def categorical_psi(reference: dict[str, Any], current: dict[str, Any]) -> tuple[float, tuple[str, ...], float]:
    """PSI over the reference's values plus a bin for the rest; the current's unseen values and their share
    of the current rows (nulls included in the rows, as 'share of current rows' says)."""
    ref_freq: dict[str, int] = reference["frequencies"]
    cur_freq: dict[str, int] = current["frequencies"]
    ref_count, cur_count = max(int(reference["count"]), 1), max(int(current["count"]), 1)
    values = list(ref_freq)
    expected = np.array([ref_freq[v] / ref_count for v in values] + [reference["other_count"] / ref_count])
    seen = sum(cur_freq.get(v, 0) for v in values)
    actual = np.array([cur_freq.get(v, 0) / cur_count for v in values] + [(current["count"] - seen) / cur_count])
    unseen = sorted((v for v in cur_freq if v not in ref_freq), key=lambda v: -cur_freq[v])
    unseen_rows = sum(cur_freq[v] for v in unseen)  # of the values the current profile kept
    drift = psi(expected, actual) if current["count"] and reference["count"] else 0.0
    return drift, tuple(unseen[:MAX_UNSEEN_LISTED]), unseen_rows / max(int(current["rows"]), 1)


def thresholds_of(catalog: Catalog) -> dict[str, float]:
    """Per-feature drift thresholds set in the repo (FeatureView.drift_thresholds), under both the
    feature's name and its full name (view__feature), as tables may use either."""
    out: dict[str, float] = {}
    for view in catalog.views.values():
        for feature, threshold in view.drift_thresholds.items():
            out.setdefault(feature, threshold)
            out[f"{view.name}__{feature}"] = threshold
    return out
