"""A real standalone Spark cluster: a master and 2 workers started with the pyspark distribution's own
``bin/spark-class`` on loopback ports; a driver process with ``offline_store: {type: spark, master: spark://...}``
computes a training set and materializes the online store on it, and both equal what DuckDB gives."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from feature_store import FeatureStore
from tests.server_fixtures import make_repo
from tests.spark_fixtures import spark_available
from tests.spark_standalone import standalone

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
FEATURES = ["customer_spend:avg_spend_90d", "customer_spend:txn_count_30d", "customer_spend:last_category",
            "customer_habits:categories_30d", "customer_profile:segment"]
DRIVER = """
import json, sys
from datetime import datetime, timezone
import pandas as pd
from feature_store import FeatureStore
repo, out = sys.argv[1], sys.argv[2]
with FeatureStore(repo) as store:
    when = datetime.fromisoformat(sys.argv[3])
    rows = pd.DataFrame({"customer_id": list(range(1, 31)), "event_timestamp": [when] * 30})
    frame = store.get_historical_features(rows, json.loads(sys.argv[4])).to_df()
    frame.to_parquet(out + "/training.parquet")
    store.materialize()
    values = store.get_online_features(json.loads(sys.argv[4]), {"customer_id": list(range(1, 31))}).to_dict()
    json.dump(values, open(out + "/online.json", "w"), default=str)
    json.dump({"executors": store.offline.spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size()},
              open(out + "/cluster.json", "w"))
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """spark://127.0.0.1:<port> with two registered workers of one core each."""
    reason = spark_available()
    if reason:
        pytest.skip(reason)
    with standalone(2, tmp_path) as master:
        yield master


def test_a_training_set_and_a_materialization_on_a_standalone_cluster(cluster: str, tmp_path: Path) -> None:
    duck_repo = make_repo(tmp_path / "duck", "", "", customers=30, push=False,
                          online_store={"type": "sqlite", "path": "data/online.db"})
    spark_repo = tmp_path / "spark"
    shutil.copytree(duck_repo, spark_repo)
    (spark_repo / "data" / "online.db").unlink()
    config = spark_repo / "feature_store.yaml"
    config.write_text(config.read_text().replace(
        "offline_store: {type: duckdb, path: data/offline.duckdb}",
        f'offline_store: {{type: spark, master: "{cluster}", conf: {{spark.cores.max: "2", spark.executor.cores: "1", '
        f'spark.executor.memory: 512m, spark.driver.host: 127.0.0.1, spark.sql.shuffle.partitions: "4"}}}}'))
    when = pd.Timestamp.now(tz="UTC").floor("s")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.run([sys.executable, "-c", DRIVER, str(spark_repo), str(out), when.isoformat(),
                          json.dumps(FEATURES)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((out / "cluster.json").read_text())["executors"] == 3, "the driver and two executors"
    with FeatureStore(duck_repo) as duck:
        rows = pd.DataFrame({"customer_id": list(range(1, 31)), "event_timestamp": [when.to_pydatetime()] * 30})
        expected = duck.get_historical_features(rows, FEATURES).to_df()
        online = duck.get_online_features(FEATURES, {"customer_id": list(range(1, 31))}).to_dict()
    got = pd.read_parquet(out / "training.parquet")
    pd.testing.assert_frame_equal(expected, got, check_dtype=False, rtol=1e-12)
    served = json.loads((out / "online.json").read_text())
    for name, values in online.items():
        assert [v if not isinstance(v, float) else round(v, 9) for v in values] == \
            [v if not isinstance(v, float) else round(v, 9) for v in served[name]], name
