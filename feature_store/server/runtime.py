"""What the server keeps besides the SDK: the background registry refresh and the registry description."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from feature_store.catalog import Catalog
from feature_store.definitions import FeatureView, PushSource
from feature_store.durations import format_duration
from feature_store.query import FeatureRequest, compile_view
from feature_store.references import ResolvedFeature
from feature_store.server.metrics import Metrics
from feature_store.store import FeatureStore
from feature_store.types import sql_name

log = logging.getLogger("feature_store.server")


class RegistryRefresher:
    """Reloads the serving catalog every ``interval`` seconds in a daemon thread, so that requests never
    touch the registry database; a failed reload keeps the previous catalog and logs a warning."""

    def __init__(self, store: FeatureStore, interval: float, metrics: Metrics) -> None:
        self.store, self.interval, self.metrics = store, interval, metrics
        self.version: int | None = None  # of the catalog being served; None until a load succeeded
        self.last_error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        store.registry_refresh_seconds = math.inf  # from now on only this thread reloads

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="feature-store-registry-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> bool:
        try:
            version = self.store.refresh_serving()
        except Exception as exc:  # a background thread must survive any failure of the registry
            self.last_error = exc
            self.metrics.refreshes.labels("error").inc()
            log.warning("registry refresh failed, still serving registry version %s: %s: %s", self.version,
                        type(exc).__name__, getattr(exc, "message", exc))
            return False
        if version != self.version:
            log.info("serving registry version %s of project %r", version, self.store.project)
        self.version, self.last_error = version, None
        self.metrics.refreshes.labels("ok").inc()
        self.metrics.registry_version.set(version)
        return True


class RegistryDescriber:
    """The registry as JSON for GET /features, computed once per registry version."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self._cache: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        version, catalog = self.store.serving_catalog()
        cached = self._cache
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            views = {name: self._view(catalog, view) for name, view in catalog.views.items()}
            result = {
                "project": self.store.project,
                "registry_version": version,
                "entities": [{"name": e.name, "join_keys": list(e.join_keys), "description": e.description}
                             for e in catalog.entities.values()],
                "feature_views": list(views.values()),
                "feature_services": [
                    {"name": s.name, "description": s.description,
                     "features": [f"{p.view}:{f}" for p in s.projections for f in p.features]}
                    for s in catalog.services.values()
                ],
                "push_sources": [{"name": s.name, "batch_source": s.batch_source_name, "description": s.description}
                                 for s in catalog.sources.values() if isinstance(s, PushSource)],
            }
            self._cache = (version, result)
        return result

    def view(self, name: str) -> dict[str, Any]:
        _version, catalog = self.store.serving_catalog()
        catalog.view(name)  # FeatureNotFoundError (404) naming the closest view
        found: dict[str, Any] = next(v for v in self.describe()["feature_views"] if v["name"] == name)
        return found

    def _view(self, catalog: Catalog, view: FeatureView) -> dict[str, Any]:
        items = [ResolvedFeature(view, f, f) for f in view.feature_names]
        # types from the columns recorded at apply: the offline data is never read
        query = compile_view(catalog, view, items)
        return {
            "name": view.name,
            "kind": "aggregation" if view.is_aggregation else "snapshot",
            "entities": list(view.entity_names),
            "join_keys": list(catalog.join_keys(view)),
            "source": view.source_name,
            "ttl": format_duration(view.ttl) if view.ttl else None,
            "description": view.description,
            "tags": dict(view.tags),
            "features": [_feature(view, request) for request in query.features],
        }


def _feature(view: FeatureView, request: FeatureRequest) -> dict[str, Any]:
    described: dict[str, Any] = {"name": request.name, "reference": f"{view.name}:{request.name}",
                                 "type": sql_name(request.output_type)}
    feature = request.definition
    if feature is not None:
        return {**described, "function": feature.function, "column": feature.column,
                "window": format_duration(feature.window) if feature.window else None,
                "hop": format_duration(feature.effective_hop(view.hop))}
    return {**described, "function": "latest", "column": request.name, "window": None, "hop": None}
