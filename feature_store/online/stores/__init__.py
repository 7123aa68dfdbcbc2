"""Online stores: the protocol (base.py), SQLite (sqlite.py) and Redis (redis/: one server, or a Redis Cluster),
built from typed config."""

from __future__ import annotations

from pathlib import Path

from feature_store.config import RedisOnlineConfig, SqliteOnlineConfig
from feature_store.online.stores.base import OnlineStore


def open_online_store(config: RedisOnlineConfig | SqliteOnlineConfig, repo: Path) -> OnlineStore:
    """The store ``online_store.type`` names (Redis's client is imported only for a Redis store)."""
    if isinstance(config, RedisOnlineConfig) and config.cluster:
        from feature_store.online.stores.redis.cluster import RedisClusterOnlineStore

        return RedisClusterOnlineStore(config)
    if isinstance(config, RedisOnlineConfig):
        from feature_store.online.stores.redis.store import RedisOnlineStore

        return RedisOnlineStore(config)
    from feature_store.online.stores.sqlite import SqliteOnlineStore

    return SqliteOnlineStore(config, repo)


__all__ = ["OnlineStore", "open_online_store"]
