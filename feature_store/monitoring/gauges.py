"""The feature server's monitoring gauges, set when /metrics is scraped: each view's watermark and last-push
age, and each feature's last drift score (recorded by ``feature-store monitor`` in the registry)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from feature_store.errors import FeatureStoreError
from feature_store.monitoring.freshness import freshness

if TYPE_CHECKING:
    from feature_store.server.metrics import Metrics
    from feature_store.store import FeatureStore

log = logging.getLogger("feature_store.server")
DRIFT_REFRESH_SECONDS = 30.0  # drift scores change when a monitor job runs: the registry is read this seldom


class MonitoringGauges:
    def __init__(self, store: FeatureStore, metrics: Metrics) -> None:
        self.store, self.metrics = store, metrics
        self._drift_read = -float("inf")
        if store.served_log is not None:
            store.served_log.on_drop = metrics.served_dropped.inc
            store.served_log.on_write = metrics.served_rows.inc

    def update(self) -> None:
        """Set the gauges now; what cannot be read (no registry yet) keeps its last values."""
        try:
            for view in freshness(self.store, offline=False):
                for gauge, when in ((self.metrics.watermark_age, view.watermark),
                                    (self.metrics.last_push_age, view.last_push)):
                    age = view.age(when)
                    if age is not None:
                        gauge.labels(view.view).set(age)
        except FeatureStoreError as exc:
            log.debug("freshness gauges not updated: %s", exc.message)
        if time.monotonic() - self._drift_read < DRIFT_REFRESH_SECONDS:
            return
        try:
            scores = self.store.registry.drift_scores()
        except FeatureStoreError as exc:
            log.debug("drift gauges not updated: %s", exc.message)
            return
        self._drift_read = time.monotonic()
        for feature, (psi, threshold) in scores.items():
            self.metrics.drift_psi.labels(feature).set(psi)
            self.metrics.drift_threshold.labels(feature).set(threshold)
