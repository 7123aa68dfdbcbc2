"""The push log: every pushed row, durable before its push is acknowledged, read by training sets beside a push
source's batch data. Backends: local JSON-lines files (files.py, the embedded default) and PostgreSQL (postgres.py,
shared by several hosts); both fold their tail into parquet parts by day (compaction.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from feature_store.offline.push_log.base import (
    BUCKET_SECONDS,
    SETTLE_SECONDS,
    CompactResult,
    LogSnapshot,
    PushLog,
)

if TYPE_CHECKING:
    from feature_store.config import OfflineConfig

__all__ = ["BUCKET_SECONDS", "SETTLE_SECONDS", "CompactResult", "LogSnapshot", "PushLog", "create_push_log"]


def create_push_log(config: OfflineConfig, repo: Path) -> PushLog:
    """The push log ``offline_store.push_log`` configures."""
    from feature_store.config import FilePushLogConfig, push_log_dir

    log = config.push_log
    if isinstance(log, FilePushLogConfig):
        from feature_store.offline.push_log.files import FilePushLog

        return FilePushLog(push_log_dir(config, repo), fsync=config.push_fsync, rotate_seconds=log.rotate_seconds,
                           delete_grace_seconds=log.delete_grace_seconds)
    from feature_store.offline.push_log.postgres import PostgresPushLog

    return PostgresPushLog(log.url, log.table, push_log_dir(config, repo), log.delete_grace_seconds,
                           log.commit_delay_ms)
