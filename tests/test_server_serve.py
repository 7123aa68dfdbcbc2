"""``feature-store serve`` as a user starts it: off loopback it refuses to serve without API keys, unless told
``--insecure``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server_fixtures import free_port, run_server

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast


def serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FEATURE_STORE_API_KEYS"}


def test_serving_off_loopback_without_keys_is_refused(example_repo: Path) -> None:
    command = [sys.executable, "-m", "feature_store", "--repo", str(example_repo), "serve", "--host", "0.0.0.0",
               "--port", str(free_port())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=serve_env())
    except subprocess.TimeoutExpired as exc:  # it served: the bug
        raise AssertionError(f"serve --host 0.0.0.0 without keys started serving:\n{exc.stderr!r}") from None
    assert done.returncode == 1, done
    message = " ".join(done.stderr.split())
    for fix in ("0.0.0.0", "server.api_keys", "FEATURE_STORE_API_KEYS", "--insecure", "127.0.0.1"):
        assert fix in message, message
    assert "Traceback" not in done.stderr


def test_insecure_serves_off_loopback_without_keys_with_a_warning(example_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with run_server(example_repo, log, "--host", "0.0.0.0", "--insecure", env=serve_env()) as server:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert "WITHOUT API KEYS" in server.output()


def test_keys_from_the_environment_allow_a_public_address(example_repo: Path, tmp_path: Path) -> None:
    env = {**serve_env(), "FEATURE_STORE_API_KEYS": "k" * 32}
    with run_server(example_repo, tmp_path / "server.log", "--host", "0.0.0.0", env=env) as server:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/features", timeout=10).status_code == 401
        assert "WITHOUT API KEYS" not in server.output()
