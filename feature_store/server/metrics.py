"""Prometheus metrics of the feature server.

Each app has its own registry (several apps can live in one process, as in tests). With several
worker processes, ``feature-store serve`` sets PROMETHEUS_MULTIPROC_DIR before the workers start, and
/metrics then adds up the values of every worker (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ENTITY_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("feature_store_server_requests_total", "HTTP requests answered.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("feature_store_server_request_duration_seconds",
                                 "Time from the request's arrival to its last response byte.",
                                 ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.entities = Histogram("feature_store_server_entities_per_request",
                                  "Entity rows per get-online-features request.", buckets=ENTITY_BUCKETS, registry=r)
        self.online_errors = Counter("feature_store_server_online_store_errors_total",
                                     "Requests that failed because the online store was unavailable.",
                                     ["endpoint"], registry=r)
        self.push_lag = Histogram("feature_store_server_push_lag_seconds",
                                  "Time from a push request's arrival to the write of its rows.",
                                  buckets=LAG_BUCKETS, registry=r)
        self.pushed_rows = Counter("feature_store_server_pushed_rows_total", "Rows pushed.", registry=r)
        self.refreshes = Counter("feature_store_server_registry_refreshes_total",
                                 "Background registry reloads, by result (ok, error).", ["result"], registry=r)
        self.registry_version = Gauge("feature_store_server_registry_version",
                                      "Registry version the server serves.", multiprocess_mode="max", registry=r)
        # monitoring (docs/monitoring.md): the served-value log, and gauges set at each scrape
        self.served_rows = Counter("feature_store_served_log_rows_total",
                                   "Entity rows of online reads written to the served-value log.", registry=r)
        self.served_dropped = Counter("feature_store_served_log_dropped_total",
                                      "Online reads not logged because the log's queue was full.", registry=r)
        self.watermark_age = Gauge("feature_store_view_watermark_age_seconds",
                                   "Age of each view's online watermark (every event before it is online).",
                                   ["view"], multiprocess_mode="mostrecent", registry=r)
        self.last_push_age = Gauge("feature_store_view_last_push_age_seconds",
                                   "Time since the last push to each push-source view.", ["view"],
                                   multiprocess_mode="mostrecent", registry=r)
        self.drift_psi = Gauge("feature_store_feature_drift_psi",
                               "The last drift score (PSI) of each feature, as feature-store monitor recorded it.",
                               ["feature"], multiprocess_mode="mostrecent", registry=r)
        self.drift_threshold = Gauge("feature_store_feature_drift_threshold",
                                     "The PSI above which each feature counts as drifted.", ["feature"],
                                     multiprocess_mode="mostrecent", registry=r)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a key each time: keep the children of each combination.
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(endpoint, method, str(status)),
                        self.latency.labels(endpoint, str(status)))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
