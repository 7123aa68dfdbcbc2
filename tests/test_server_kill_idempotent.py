"""kill -9 of feature servers, again and again, while clients push with push ids and retry every push until it is
acknowledged: each push counts exactly once, online and in training sets, on SQLite and Redis, whatever point
of a push (claimed, logged, partly merged, acknowledged but the answer lost) each kill cut short."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from feature_store import FeatureStore
from tests.server_fixtures import make_repo, run_server
from tests.test_server_kill import children

pytestmark = pytest.mark.slow  # real server processes killed: the full suite (make test), not make test-fast

FEATURE = "customer_live:txn_count_1h_live"
FIRST = 20_000_000  # customers no batch row has: each push is one event of each of two customers of its own
CLIENTS, KILLS = 8, 6


def push_body(number: int) -> dict[str, Any]:
    customers = [FIRST + 2 * number, FIRST + 2 * number + 1]
    stamp = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    return {"push_source_name": "transactions_push", "df": {
        "transaction_id": customers, "customer_id": customers, "event_timestamp": [stamp] * 2,
        "created": [stamp] * 2, "amount": [1.0, 2.0], "category": ["grocery"] * 2}}


def pusher(url: Callable[[], str | None], numbers: list[int], stop: threading.Event, done: list[int],
           duplicates: list[int], problems: list[str]) -> None:
    """Pushes each number's body with its push id until a 200 answers it, through kills and restarts; stops
    starting new pushes once ``stop`` is set."""
    for number in numbers:
        if stop.is_set():
            return
        body, key = push_body(number), f"push-{number}"
        while True:
            base = url()
            if base is None:
                time.sleep(0.05)
                continue
            try:
                response = httpx.post(f"{base}/push", json=body, headers={"Idempotency-Key": key}, timeout=30)
            except httpx.TransportError:
                time.sleep(0.05)
                continue  # the server died before answering: retry the same push, with the same key
            if response.status_code == 200:
                done.append(number)
                if response.json()["duplicate"]:
                    duplicates.append(number)
                break
            if response.status_code != 503:  # a worker without its online store, or a stalled push: retry
                problems.append(f"push {number}: {response.status_code} {response.text}")
                break
            time.sleep(0.05)


def kill_all(pid: int) -> None:
    for each in [pid, *children(pid)]:  # the whole server, workers included
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def test_pushes_retried_through_kills_count_exactly_once(tmp_path: Path, online_store: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo", "", "", customers=30, online_store=online_store)
    current: dict[str, str | None] = {"url": None}
    stop = threading.Event()
    done: list[int] = []
    duplicates: list[int] = []
    problems: list[str] = []
    numbers = list(range(100_000))
    threads = [threading.Thread(target=pusher, args=(lambda: current["url"], numbers[i::CLIENTS], stop, done,
                                                     duplicates, problems)) for i in range(CLIENTS)]
    rng = random.Random(7)
    for thread in threads:
        thread.start()
    try:
        for kill in range(KILLS + 1):
            with run_server(repo, tmp_path / f"server{kill}.log", "--workers", "2") as server:
                current["url"] = server.url
                # the random time before the kill runs from this server's first answered push, not from its start:
                # a loaded machine (a Spark JVM beside) spent whole windows starting workers, 16 pushes in 6 servers
                landed, deadline = len(done), time.monotonic() + 60
                while len(done) == landed and time.monotonic() < deadline:
                    time.sleep(0.02)
                if kill == KILLS:  # the last server lives: every push started gets its answer
                    time.sleep(1.0)
                    stop.set()
                    for thread in threads:
                        thread.join(timeout=120)
                    break
                time.sleep(rng.uniform(0.3, 1.5))
                current["url"] = None
                kill_all(server.proc.pid)
    finally:
        stop.set()
        current["url"] = None
    assert not problems, problems[:5]
    assert not any(thread.is_alive() for thread in threads)
    assert len(done) > 20, "too few pushes to say anything"
    customers = sorted(FIRST + 2 * n + i for n in done for i in (0, 1))
    with FeatureStore(repo) as store:
        for when in ("before", "after a materialization"):
            online = store.get_online_features([FEATURE], {"customer_id": customers}).values["txn_count_1h_live"]
            offline = store.get_historical_features(
                pd.DataFrame({"customer_id": customers, "event_timestamp": [datetime.now(UTC)] * len(customers)}),
                [FEATURE]).to_df().set_index("customer_id")["txn_count_1h_live"]
            wrong = [(c, o, int(offline[c])) for c, o in zip(customers, online, strict=True)
                     if (o, int(offline[c])) != (1, 1)]
            assert not wrong, f"{when}: (customer, online, offline) not counted once: {wrong[:10]} " \
                              f"({len(duplicates)} retries answered as duplicates)"
            store.push_log.settle_seconds = 0.0
            store.materialize()
    print(f"{len(done)} pushes, {len(duplicates)} answered as duplicates of an attempt a kill cut short")
