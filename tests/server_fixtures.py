"""Helpers of the feature server tests: a materialized copy of the example repo on Redis, a real server process.

Every repo gets a key prefix of its own, in Redis database 9 of the test Redis; only keys under that
prefix are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from feature_store import FeatureStore, example

ROOT = Path(__file__).resolve().parent.parent
SERVER_REDIS_DB = 9
FEATURES_10 = [
    "customer_spend:avg_spend_90d", "customer_spend:spend_7d", "customer_spend:txn_count_30d",
    "customer_spend:max_spend_30d", "customer_spend:last_category", "customer_spend:lifetime_spend",
    "customer_habits:spend_stddev_30d", "customer_habits:txn_count_1h",
    "customer_profile:age", "customer_profile:segment",
]


# A push source over the example transactions and a view over it, next to the example repo's definitions
# (the same entity and batch source, defined identically, are one object in the registry).
PUSH_PY = '''
from datetime import timedelta

from feature_store import Count, Entity, FeatureView, FileSource, PushSource, Sum

transactions_push = PushSource(
    name="transactions_push",
    batch_source=FileSource(name="transactions", path="data/transactions.parquet",
                            timestamp_field="event_timestamp", created_timestamp_field="created"),
)
customer_live = FeatureView(
    name="customer_live",
    entities=[Entity(name="customer", join_keys=["customer_id"], description="A card holder.")],
    source=transactions_push,
    features=[Sum("amount", window="1d", name="spend_1d"), Count(window="1h", name="txn_count_1h_live")],
    hop=timedelta(minutes=5),
)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_db(redis_url: str, db: int) -> str:
    return re.sub(r"/\d*$", f"/{db}", redis_url) if re.search(r":\d+/\d*$", redis_url) else f"{redis_url}/{db}"


def make_repo(path: Path, redis_url: str, key_prefix: str, server_yaml: str = "", customers: int = 150,
              push: bool = True, online_store: dict[str, str] | None = None) -> Path:
    """A copy of feature_repo/ (plus PUSH_PY) with generated data, on Redis (or ``online_store``), applied and
    materialized."""
    path.mkdir(parents=True)
    for name in ("feature_store.yaml", "features.py"):
        shutil.copy(ROOT / "feature_repo" / name, path / name)
    if push:
        (path / "push.py").write_text(PUSH_PY)
    config = path / "feature_store.yaml"
    online = json.dumps(online_store or {"type": "redis", "url": redis_url, "key_prefix": key_prefix,
                                         "timeout_seconds": 0.5})
    text = re.sub(r"(?m)^online_store:.*$", f"online_store: {online}", config.read_text())
    config.write_text(text + server_yaml)
    example.generate(path / "data", customers=customers, days=60, seed=3)
    with FeatureStore(path) as store:
        store.apply()
        store.materialize()
    return path


def delete_keys(repo: Path) -> None:
    """Every key under the repo's own key_prefix (and nothing else) on its Redis."""
    with FeatureStore(repo) as store:
        online = store.config.online_store
        client = redis.Redis.from_url(online.url)
        try:
            keys = list(client.scan_iter(match=f"{online.key_prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.unlink(*keys[start:start + 1000])
        finally:
            client.close()


def unique_prefix() -> str:
    return f"fstest-server-{uuid.uuid4().hex[:10]}"


def at(hours_ago: float = 0) -> datetime:
    """A fixed 'now' for a request and the SDK call it is compared with."""
    return (datetime.now(UTC) - timedelta(hours=hours_ago)).replace(microsecond=0)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 10, **kwargs})

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def run_server(repo: Path, log: Path, *args: str, env: dict[str, str] | None = None,
               ready_timeout: float = 60, command: list[str] | None = None) -> Iterator[Server]:
    """``python -m feature_store --repo REPO serve --port P ARGS``, until /health answers; stopped afterwards.
    ``command``: another command that serves, to which ``--port P ARGS`` are given instead."""
    port = free_port()
    command = [*command, "--port", str(port), *args] if command else [
        sys.executable, "-m", "feature_store", "--repo", str(repo), "serve", "--port", str(port),
        "--log-level", "warning", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health within {ready_timeout} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def sdk_columns(store: FeatureStore, features: Any, entities: dict[str, list[Any]], now: datetime,
                full_feature_names: bool = False) -> dict[str, Any]:
    """What the server must answer, from the SDK: per output name, values, statuses and ISO timestamps."""
    from feature_store.server.encode import EPOCH_Z, iso_z

    response = store.get_online_features(features, entities, full_feature_names, now)
    out: dict[str, Any] = {}
    for name, values in response.entity_columns.items():
        out[name] = (values, ["PRESENT"] * len(values), [EPOCH_Z] * len(values))
    for name, values in response.values.items():
        stamps = [EPOCH_Z if us is None else iso_z(us) for us in response.stamps_us[name]]
        out[name] = (values, response.statuses[name], stamps)
    return out


def server_columns(body: dict[str, Any]) -> dict[str, Any]:
    names = body["metadata"]["feature_names"]
    return {name: (r["values"], r["statuses"], r["event_timestamps"])
            for name, r in zip(names, body["results"], strict=True)}
