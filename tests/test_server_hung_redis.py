"""A Redis that hangs (SIGSTOP: connections are accepted by the kernel, nothing is answered) must not stall the
server: /health answers at once throughout, reads and pushes fail with 503 within about the online store's
timeout, and everything works again once Redis resumes, without restarting anything.

Real processes: a throwaway redis-server (plain TCP, and TLS, whose reads take another path), the server under
uvicorn, and concurrent HTTP clients. The bounds are liveness bounds, generous for a loaded machine, and still
far below what the stall they guard against took (seconds per request, queued behind each other).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import _free_port, start_redis
from tests.server_fixtures import FEATURES_10, Server, make_repo, run_server, unique_prefix

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

TIMEOUT = 2.0  # online_store.timeout_seconds here: what a hung Redis stalled a worker for, per request
HEALTH_BOUND = 1.0  # /health must answer within this while Redis hangs (it took up to 4 s with a 1 s timeout)
FAIL_BOUND = TIMEOUT + 2.5  # a read or push must have failed by then (one timeout, and room for a loaded machine)
WINDOW = 5.0  # how long Redis stays stopped under load


@contextmanager
def tls_files(folder: Path) -> Iterator[list[str]]:
    """A self-signed certificate for redis-server's TLS port (clients do not check it: ssl_cert_reqs=none)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate for a TLS Redis")
    key, cert = folder / "redis.key", folder / "redis.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    yield ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]


def repo_on(tmp_path: Path, tls: bool) -> tuple[Path, subprocess.Popen[bytes]]:
    port = _free_port()
    if tls:
        with tls_files(tmp_path) as options:
            redis = start_redis(_free_port(), "--tls-port", str(port), *options)
        url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
    else:
        redis = start_redis(port)
        url = f"redis://127.0.0.1:{port}/0"
    repo = make_repo(tmp_path / "repo", url, unique_prefix(), customers=20)
    config = repo / "feature_store.yaml"
    config.write_text(config.read_text().replace('"timeout_seconds": 0.5', f'"timeout_seconds": {TIMEOUT}'))
    return repo, redis


class Load:
    """Clients in threads, each repeating one request until told to stop; what each request got and took."""

    def __init__(self, server: Server) -> None:
        self.server, self.stop = server, threading.Event()
        self.seen: list[tuple[str, float, float, int, str]] = []  # (kind, sent, seconds, status, error type)
        self.threads: list[threading.Thread] = []

    def start(self, kind: str, call: Callable[[httpx.Client], httpx.Response], pause: float = 0.0) -> None:
        def run() -> None:
            with self.server.client(timeout=30) as client:
                while not self.stop.is_set():
                    sent = time.monotonic()
                    try:
                        response = call(client)
                    except httpx.TransportError as exc:  # no answer within 30 s: recorded as such
                        self.seen.append((kind, sent, time.monotonic() - sent, 0, type(exc).__name__))
                        continue
                    took = time.monotonic() - sent
                    error = response.json()["error"]["type"] if response.status_code >= 400 else ""
                    self.seen.append((kind, sent, took, response.status_code, error))
                    time.sleep(pause)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a client is still waiting for an answer"

    def during(self, kind: str, start: float, end: float) -> list[tuple[float, int, str]]:
        return [(took, status, error) for k, sent, took, status, error in self.seen if k == kind and start <= sent
                and sent + took <= end]


def read(client: httpx.Client) -> httpx.Response:
    return client.post("/get-online-features", json={"features": FEATURES_10, "entities": {"customer_id": [1, 2]}})


def push(client: httpx.Client) -> httpx.Response:
    stamp = datetime.now(UTC).isoformat()
    return client.post("/push", content=json.dumps({
        "push_source_name": "transactions_push", "to": "online",
        "df": {"customer_id": [3], "event_timestamp": [stamp], "created": [stamp], "amount": [1.0],
               "category": ["grocery"], "transaction_id": [None]}}))


def health(client: httpx.Client) -> httpx.Response:
    return client.get("/health")


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_hung_redis_stalls_no_request_beyond_its_timeout(tmp_path: Path, tls: bool) -> None:
    repo, redis = repo_on(tmp_path, tls)
    try:
        with run_server(repo, tmp_path / "server.log") as server:
            with server.client() as client:
                assert read(client).status_code == 200 and push(client).status_code == 200  # connected, warm
            load = Load(server)
            for _ in range(6):
                load.start("read", read)
            for _ in range(2):
                load.start("push", push)
            load.start("health", health, pause=0.05)
            try:
                time.sleep(0.5)
                os.kill(redis.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                time.sleep(WINDOW)
                with server.client(timeout=30) as client:
                    asked = time.monotonic()
                    ready = client.get("/ready")
                    ready_took = time.monotonic() - asked
                os.kill(redis.pid, signal.SIGCONT)
                resumed = time.monotonic()
                time.sleep(0.5)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
                load.finish()
            assert ready.status_code == 503 and ready_took < FAIL_BOUND, (ready.text, ready_took)
            # Requests sent while Redis was stopped (a first one already waiting may still be answered):
            window = (stopped + 0.1, resumed)
            healths = load.during("health", *window)
            assert len(healths) >= 10 and {status for _, status, _ in healths} == {200}, healths
            slowest = max(took for took, _, _ in healths)
            assert slowest < HEALTH_BOUND, f"/health took {slowest:.2f} s while Redis hung"
            for kind in ("read", "push"):
                answered = load.during(kind, *window)
                assert answered, kind
                assert {(status, error) for _, status, error in answered} == {(503, "OnlineStoreUnavailable")}, (
                    kind, answered)
                slowest = max(took for took, _, _ in answered)
                assert slowest < FAIL_BOUND, f"a {kind} took {slowest:.2f} s to fail while Redis hung"
            # And back: the next reads and pushes succeed, with nothing restarted.
            deadline = time.monotonic() + 20
            with server.client() as client:
                while (status := (read(client).status_code, push(client).status_code)) != (200, 200):
                    assert time.monotonic() < deadline, status
                    time.sleep(0.2)
            assert server.proc.poll() is None
        assert "Traceback" not in server.output(), server.output()
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        redis.kill()
        redis.wait(timeout=10)
