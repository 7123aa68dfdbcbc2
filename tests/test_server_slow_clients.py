"""Clients that send slowly, too much, or leave halfway, over real sockets against a real server process.

A request must arrive whole (headers and body) within ``server.body_timeout_seconds`` (408, connection closed),
connections are capped by ``server.max_connections`` (uvicorn's 503 beyond), a body too large by its
Content-Length is refused before it is read (413, connection closed), and a client that leaves mid-body is a
quiet 499 in the metrics, with no traceback in the log.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.server_fixtures import SERVER_REDIS_DB, Server, delete_keys, make_repo, run_server, unique_prefix, with_db

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

MAX_BODY = 50_000
PATHS = ["/get-online-features", "/push"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    path = make_repo(tmp_path_factory.mktemp("slow") / "repo", with_db(redis_url, SERVER_REDIS_DB), unique_prefix(),
                     customers=20)
    yield path
    delete_keys(path)


def configured(repo: Path, tmp_path: Path, server_yaml: str) -> Path:
    """The module's repo (its registry and data, shared) with another server: section."""
    copy = tmp_path / "repo"
    copy.mkdir()
    (copy / "feature_store.yaml").write_text((repo / "feature_store.yaml").read_text() + server_yaml)
    for name in ("features.py", "push.py"):
        (copy / name).write_text((repo / name).read_text())
    (copy / "data").symlink_to(repo / "data")
    return copy


@pytest.fixture(scope="module")
def quick(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that gives a request 1 s to arrive."""
    base = tmp_path_factory.mktemp("quick")
    path = configured(repo, base, f"server: {{body_timeout_seconds: 1, max_body_bytes: {MAX_BODY}}}\n")
    with run_server(path, base / "server.log") as server:
        yield server


def connect(server: Server) -> socket.socket:
    port = urlsplit(server.url).port
    assert port is not None
    return socket.create_connection(("127.0.0.1", port), timeout=20)  # a liveness bound, far above the timeouts


def head(path: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout here fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.parametrize("path", PATHS)
def test_a_body_that_never_finishes_is_408_and_closed(quick: Server, path: str) -> None:
    with connect(quick) as sock:
        sock.sendall(head(path, 1000) + b'{"features": [')
        answer = until_closed(sock)
    assert status_of(answer) == 408, answer
    assert b"RequestTimeoutError" in answer and b"body_timeout_seconds" in answer


def test_headers_that_never_finish_and_silent_connections_are_closed(quick: Server) -> None:
    with connect(quick) as silent, connect(quick) as slow_headers:
        slow_headers.sendall(b"POST /push HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for sock in (slow_headers, silent):
            answer = until_closed(sock)
            assert answer == b"" or status_of(answer) == 408, answer


def response_of(sock: socket.socket) -> bytes:
    """One response (its headers and its Content-Length of body), leaving the connection as it is."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head_end = data.index(b"\r\n\r\n") + 4
    length = next(int(line.split(b":")[1]) for line in data[:head_end].split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(data) < head_end + length:
        data += sock.recv(65536)
    return data


def closed_while_sending(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes the connection while the client goes on sending a body (bounded in time)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"1," * 512)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return True
    return False


@pytest.mark.parametrize("path", PATHS)
def test_a_body_too_large_by_its_length_is_413_before_it_is_read_and_the_connection_closed(quick: Server,
                                                                                           path: str) -> None:
    with connect(quick) as sock:
        sock.sendall(head(path, 10**9))  # the headers alone: the answer cannot wait for the body
        answer = response_of(sock)
        assert status_of(answer) == 413, answer  # not 408: refused by its size, before any of it arrived
        assert b"RequestTooLargeError" in answer and b"connection: close" in answer.lower()
        # The server does not go on reading (and dropping) a gigabyte it has refused.
        assert closed_while_sending(sock, 20)


@pytest.mark.parametrize("path", PATHS)
def test_a_client_leaving_mid_body_is_a_quiet_499(quick: Server, path: str) -> None:
    with connect(quick) as sock:
        sock.sendall(head(path, 1000) + b'{"push_source_name": "transactions_push", "df": {')
        time.sleep(0.2)  # the server is waiting for the rest of the body
    deadline = time.monotonic() + 20
    line = f'feature_store_server_requests_total{{endpoint="{path}",method="POST",status="499"}}'
    while line not in (metrics := httpx.get(f"{quick.url}/metrics").text):
        assert time.monotonic() < deadline, metrics
        time.sleep(0.1)
    assert f'endpoint="{path}",method="POST",status="500"' not in metrics
    assert "Traceback" not in quick.output() and "Exception in ASGI" not in quick.output(), quick.output()


def test_connections_are_capped_and_the_cap_frees_up(repo: Path, tmp_path: Path) -> None:
    path = configured(repo, tmp_path, "server: {body_timeout_seconds: 60, max_connections: 20}\n")
    with run_server(path, tmp_path / "server.log") as server, ExitStack() as held:
        slow = [held.enter_context(connect(server)) for _ in range(30)]
        # Headers that never end: each connection holds a slot and no request of theirs is ever checked against the
        # cap. (Whole headers would race: uvicorn checks the cap as each request's headers complete, counting open
        # connections; when it has accepted all 30 before reading any headers, as on a loaded machine, it answers
        # all 30 with 503 and closes them, and the cap is free again before the test looks.)
        for sock in slow:
            sock.sendall(head("/push", 1000)[:-2])
        deadline = time.monotonic() + 20  # until the server has taken them all in
        while httpx.get(f"{server.url}/health", timeout=20).status_code != 503:
            assert time.monotonic() < deadline, "30 connections open, and the server still takes more"
            time.sleep(0.1)
        held.close()  # the slow clients go
        deadline = time.monotonic() + 20
        while (answer := httpx.get(f"{server.url}/health", timeout=20)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
    assert "Traceback" not in server.output(), server.output()
