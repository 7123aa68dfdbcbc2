"""One Spark session per test process (Spark keeps one per JVM anyway): started on first use, local[2] with few
shuffle partitions so that the small test data stays cheap; skipped where pyspark or Java is missing."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest

SPARK_YAML = 'offline_store: {type: spark, master: "local[2]", conf: {spark.sql.shuffle.partitions: "2"}}\n'


def spark_available() -> str | None:
    """Why Spark cannot run here, or None."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install 'feature-store[spark]')"
    if shutil.which("java") is None:
        return "no java on PATH (Spark needs Java 17+)"
    return None


@functools.lru_cache(maxsize=1)
def spark_session() -> Any:
    reason = spark_available()
    if reason:
        pytest.skip(reason)
    from feature_store.config import SparkOfflineConfig
    from feature_store.offline.spark.session import build_session

    return build_session(SparkOfflineConfig(type="spark", master="local[2]",
                                            conf={"spark.sql.shuffle.partitions": "2",
                                                  "spark.default.parallelism": "2"}))


def kill_seed() -> int:
    """The seed that picks a run's kill -9 trials: ``KILL_SEED``, else the day's number (so CI covers every trial
    over days; a failure names its seed)."""
    return int(os.environ.get("KILL_SEED", datetime.now(UTC).date().toordinal()))


def kill_trials(default: int) -> int:
    """How many kill -9 trials a run takes: ``KILL_TRIALS``, else the test's default (each starts a JVM)."""
    return int(os.environ.get("KILL_TRIALS", str(default)))
