"""The Spark session the engine runs on: built from ``offline_store`` (master, conf), or one handed in.

Spark needs Java (17 or newer): without it, starting a session fails with a JVM launcher trace; this module checks
first and says how to fix it.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from typing import TYPE_CHECKING, Any

from feature_store.errors import MissingDependencyError, OfflineStoreError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from feature_store.config import SparkOfflineConfig

NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
# The engine's needs: times in UTC (naive timestamps are UTC, docs/semantics.md), Arrow to move batches to Python
DEFAULTS = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    # Spark reads no nanosecond parquet timestamps (PARQUET_TYPE_ILLEGAL) but as longs: sources.py makes them
    # microsecond timestamps again, truncated as docs/semantics.md says
    NANOS_AS_LONG: "true",
}


def check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if shutil.which("java") is None and not (java_home and os.path.exists(os.path.join(java_home, "bin", "java"))):
        raise MissingDependencyError(
            "the Spark engine (offline_store.type: spark) needs Java 17 or newer, and none was found: install a "
            "JDK or JRE (e.g. 'apt-get install openjdk-17-jre-headless') and put 'java' on PATH or set JAVA_HOME.")


def import_pyspark() -> Any:
    try:
        import pyspark.sql
    except ImportError as exc:
        raise MissingDependencyError("the Spark engine needs pyspark: pip install 'feature-store[spark]'") from exc
    return pyspark.sql


def quiet_pandas_warning() -> None:
    """pyspark warns on every Arrow UDF that it does not yet support pandas 3; the engine moves Arrow batches only."""
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def build_session(config: SparkOfflineConfig) -> SparkSession:
    """A session for ``master`` with the engine's defaults under the user's ``conf``."""
    sql = import_pyspark()
    check_java()
    quiet_pandas_warning()
    # Python workers run the engine's kernel: the interpreter that has feature_store installed, unless told
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = sql.SparkSession.builder.master(config.master).appName(config.app_name)
    for key, value in {**DEFAULTS, **config.conf}.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j and pyspark raise many kinds; the first line says what happened
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OfflineStoreError(f"cannot start Spark with master {config.master!r}: {first}. Check "
                                "offline_store.master and offline_store.conf.") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


def adopt_session(session: SparkSession) -> SparkSession:
    """A session handed in (a notebook's, Databricks'): the engine's times are UTC, whatever its default, and
    nanosecond parquet timestamps read as longs (which sources.py turns into timestamps)."""
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.conf.set(NANOS_AS_LONG, "true")
    quiet_pandas_warning()
    return session
