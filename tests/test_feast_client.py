"""Feast's own Python client against our feature server (wire compatibility of POST /get-online-features).

Starts ``python -m feature_store --repo <copy of the example repo> serve`` as a real process, then runs a
script with ``$FEAST_VENV/bin/python`` (Feast is never imported into our venv: it pins other versions of
pandas, pyarrow and protobuf) that declares the example repo's entity, views and feature service in a Feast
repo whose online store is ``{type: remote, path: http://127.0.0.1:<port>}`` and calls Feast's
``FeatureStore.get_online_features``. What Feast's client returns must equal what our SDK's
``get_online_features`` returns for the same request: same names, values (floats exactly, as JSON carries
them), Python types and statuses, an unknown entity included.

Skipped unless FEAST_VENV names a virtualenv with feast installed, e.g.
``FEAST_VENV=/work/feast-venv pytest -m slow tests/test_feast_client.py`` (benchmarks/README.md says how to
create one).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from feature_store import FeatureStore, example
from tests.server_fixtures import run_server

FEAST_VENV = os.environ.get("FEAST_VENV", "")
FEAST_PYTHON = Path(FEAST_VENV) / "bin" / "python" if FEAST_VENV else None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        FEAST_PYTHON is None or not FEAST_PYTHON.exists(),
        reason="set FEAST_VENV to a virtualenv with feast installed (e.g. /work/feast-venv) to run Feast's "
        "client against our feature server",
    ),
]

CUSTOMERS = 150
UNKNOWN = 999_999  # no such customer: NOT_FOUND (0 for counts and sums, null otherwise)

# The example repo's features with the Feast type of the values our store serves (benchmarks/feast_compare.py's
# FEAST_VIEWS is the same table for the benchmark; the tests import nothing from benchmarks/).
VIEWS: dict[str, dict[str, str]] = {
    "customer_spend": {
        "avg_spend_90d": "Float64",
        "spend_7d": "Float64",
        "txn_count_30d": "Int64",
        "max_spend_30d": "Float64",
        "last_category": "String",
        "lifetime_spend": "Float64",
    },
    "customer_habits": {"spend_stddev_30d": "Float64", "categories_30d": "Int64", "txn_count_1h": "Int64"},
    "customer_profile": {"age": "Int64", "segment": "String"},
}
ALL_FEATURES = [f"{view}:{name}" for view, cols in VIEWS.items() for name in cols]

# Requests, each sent by Feast's client and by our SDK: (features or "service:<name>", entity rows, full names).
REQUESTS: list[tuple[list[str] | str, Any, bool]] = [
    (ALL_FEATURES, [{"customer_id": i} for i in (*range(1, 41), UNKNOWN)], False),
    (ALL_FEATURES[:3], {"customer_id": [7, UNKNOWN, 3]}, True),
    ("service:fraud_model_v1", [{"customer_id": i} for i in (UNKNOWN, 1, 2, 150)], False),
]

# Run by $FEAST_VENV/bin/python: argv[1] is a JSON spec; prints one JSON object on stdout.
FEAST_CLIENT = r"""
import json, os, sys, traceback
from datetime import timedelta
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text())
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever Feast prints goes to stderr; stdout carries our JSON only
sys.stdout = sys.stderr
answer = {"feast_version": None, "responses": [], "error": None}
try:
    import feast
    from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast import types as ftypes
    from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

    answer["feast_version"] = feast.__version__
    repo = Path(spec["repo"])
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: demo\nprovider: local\n"
        f"registry: {repo / 'registry.db'}\n"
        f"online_store:\n  type: remote\n  path: {spec['url']}\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64)
    views = {}
    for name, cols in spec["views"].items():
        views[name] = FeatureView(
            name=name,
            entities=[customer],
            ttl=timedelta(days=365),
            schema=[Field(name="customer_id", dtype=ftypes.Int64)]
            + [Field(name=col, dtype=getattr(ftypes, t)) for col, t in cols.items()],
            # never read: the remote online store asks our server, Feast only needs a declared source
            source=FileSource(name=name + "_source", path=str(repo / "unused.parquet"), timestamp_field="ts"),
        )
    service = FeatureService(
        name="fraud_model_v1",
        features=[
            views["customer_spend"],
            views["customer_habits"][["spend_stddev_30d", "txn_count_1h"]],
            views["customer_profile"][["age"]],
        ],
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply([customer, *views.values(), service])
    for features, rows, full in spec["requests"]:
        if isinstance(features, str):
            features = store.get_feature_service(features.split(":", 1)[1])
        try:
            resp = store.get_online_features(features=features, entity_rows=rows, full_feature_names=full)
            names = list(resp.proto.metadata.feature_names.val)
            answer["responses"].append({
                "values": resp.to_dict(),
                "statuses": {n: [FieldStatus.Name(s) for s in r.statuses] for n, r in zip(names, resp.proto.results)},
            })
        except Exception as e:
            answer["responses"].append({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
except Exception as e:
    answer["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
out.write(json.dumps(answer) + "\n")
out.flush()
"""


@pytest.fixture
def served_repo(example_repo: Path) -> Path:
    """The example repo with data ending an hour before the current hour (so that windows ending now hold
    values), applied and materialized into its SQLite online store."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    example.generate(example_repo / "data", customers=CUSTOMERS, days=60, seed=3, end=end)
    store = FeatureStore(example_repo)
    store.apply()
    store.materialize()
    store.close()
    return example_repo


@pytest.fixture
def server_url(served_repo: Path, tmp_path: Path) -> Iterator[str]:
    """Our feature server as a real process (``python -m feature_store --repo REPO serve``), until /health answers."""
    with run_server(served_repo, tmp_path / "server.log") as server:
        yield server.url


def run_feast_client(url: str, tmp_path: Path) -> dict[str, Any]:
    assert FEAST_PYTHON is not None
    script, spec = tmp_path / "feast_client.py", tmp_path / "feast_client.json"
    script.write_text(FEAST_CLIENT)
    spec.write_text(
        json.dumps({"repo": str(tmp_path / "feast_repo"), "url": url, "views": VIEWS, "requests": REQUESTS})
    )
    proc = subprocess.run([str(FEAST_PYTHON), str(script), str(spec)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the Feast client printed nothing (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(lines[-1])
    assert answer["error"] is None, f"{answer['error']}\nFeast's output:\n{proc.stderr[-3000:]}"
    return answer


def ours(store: FeatureStore) -> list[dict[str, Any]]:
    """Our SDK's answers to REQUESTS, JSON-shaped like the Feast client's (a JSON round trip keeps floats exact)."""
    answers = []
    for features, rows, full in REQUESTS:
        refs = store.get_feature_service(features.split(":", 1)[1]) if isinstance(features, str) else features
        resp = store.get_online_features(refs, rows, full_feature_names=full)
        key_statuses = {k: ["PRESENT"] * len(v) for k, v in resp.entity_columns.items()}
        answers.append({"values": resp.to_dict(), "statuses": {**key_statuses, **resp.statuses}})
    return json.loads(json.dumps(answers))


def typed(values: dict[str, list[Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Values with their type names: 1 == 1.0 in Python, but an int64 feature read as a double is a bug."""
    return {name: [(type(v).__name__, v) for v in column] for name, column in values.items()}


def test_feast_client_reads_what_our_sdk_reads(served_repo: Path, server_url: str, tmp_path: Path) -> None:
    store = FeatureStore(served_repo)
    # Values are read at the wall clock: a window boundary may pass while Feast's client runs (it takes
    # seconds to import). Values of windows ending now over static data only lose events as time passes, so
    # our answers before and after the Feast call being equal means Feast's was read on the same state.
    for _attempt in range(3):
        before = ours(store)
        feast = run_feast_client(server_url, tmp_path)
        after = ours(store)
        if before == after:
            break
    else:
        pytest.fail("our own answers changed during each of 3 attempts (window boundaries); cannot compare")
    store.close()

    # the data must exercise every status Feast's client has to map (else this test proves less than it says)
    seen = {status for column in after[0]["statuses"].values() for status in column}
    assert {"PRESENT", "NULL_VALUE", "NOT_FOUND"} <= seen, f"statuses seen: {seen}"
    for i, (request, got, want) in enumerate(zip(REQUESTS, feast["responses"], after, strict=True)):
        assert "error" not in got, f"request {i} {request!r}: Feast's client failed: {got['error']}\n{got['traceback']}"
        assert list(got["values"]) == list(want["values"]), f"request {i}: names or their order differ"
        assert typed(got["values"]) == typed(want["values"]), f"request {i}: values differ"
        assert got["statuses"] == want["statuses"], f"request {i}: statuses differ"
    unknown = after[0]["statuses"]["avg_spend_90d"][-1]
    assert unknown == "NOT_FOUND" and feast["responses"][0]["values"]["customer_id"][-1] == UNKNOWN
