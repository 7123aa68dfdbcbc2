"""Teardown: remove everything a project stored, in an order a killed run can repeat.

Online values go first (every layout's keys of the project in the configured online store), then the offline
engine's materialized tables, then the push log of the project's push sources and its served-value log, and the
registry rows (saved profiles and drift scores included) last: a run killed at any point leaves the registry in
place, so a rerun still knows the project and finishes the job.
Nothing of the user's own data (source files, DuckDB tables of theirs) is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from feature_store.definitions import PushSource

if TYPE_CHECKING:
    from feature_store.monitoring.served_log import ServedLog
    from feature_store.store import FeatureStore


@dataclass(frozen=True)
class TeardownTarget:
    """What a teardown of the project would remove, described for a confirmation prompt."""

    project: str
    online: str  # the online store, e.g. "redis redis://127.0.0.1:6379/0 (keys fs:v*:demo:*)"
    offline: str  # the offline engine's database
    push_sources: tuple[str, ...]
    registry: str  # its URL without password
    served_log: str = ""  # the folder of the project's served-value log


@dataclass(frozen=True)
class TeardownReport:
    project: str
    online_keys: int  # objects deleted from the online store (Redis: hashes, one per entity)
    offline_tables: tuple[str, ...]
    push_log_files: int
    registry_rows: int
    served_log_files: int = 0


def target(store: FeatureStore) -> TeardownTarget:
    config = store.config
    online = config.online_store
    if online.type == "redis":
        from feature_store.online.stores.redis.store import safe_url

        where = f"{safe_url(online.url)} (keys {online.key_prefix}:v*:{store.project}:*)"
    else:
        where = str(online.path)
    return TeardownTarget(store.project, f"{online.type} {where}",
                          f"{config.offline_store.type} {_offline_where(config.offline_store)}", _push_sources(store),
                          store.registry.safe_url(), str(_served_log(store).directory))


def teardown(store: FeatureStore) -> TeardownReport:
    """Remove the project's online values, materialized tables, push log and registry rows (see module doc)."""
    sources = _push_sources(store)
    online_keys = store.online.teardown()
    tables = tuple(store.offline.drop_materialized())
    files = store.push_log.remove(sources)
    served = _served_log(store).remove()
    rows = store.registry.teardown()
    store._serving = None
    return TeardownReport(store.project, online_keys, tables, files, rows, served)


def _served_log(store: FeatureStore) -> ServedLog:
    from feature_store.config import served_log_dir
    from feature_store.monitoring.served_log import ServedLog

    return store.served_log or ServedLog(served_log_dir(store.config, store.repo_path))


def _push_sources(store: FeatureStore) -> tuple[str, ...]:
    _, catalog = store.registry.catalog()
    return tuple(sorted(name for name, source in catalog.sources.items() if isinstance(source, PushSource)))


def _offline_where(config: Any) -> str:
    return str(getattr(config, "path", None) or getattr(config, "warehouse", ""))
