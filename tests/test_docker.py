"""Docker: the build context, docker-compose.yml checked against the official compose-spec schema, and the
compose feature server's start script run as a real process (no Docker engine here: what Docker would do
with these files is checked with the tools Docker's own formats come with).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from docker.utils.build import exclude_paths

from tests.server_fixtures import ROOT, run_server

pytestmark = pytest.mark.slow  # real server processes: the full suite (make test), not make test-fast

COMPOSE = ROOT / "docker-compose.yml"
VALIDATE = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_compose_file_follows_the_compose_spec(tmp_path: Path) -> None:
    """What `make validate-compose` (in .ci/run) runs; and it does fail on a broken file."""
    done = subprocess.run([*VALIDATE, str(COMPOSE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    assert subprocess.run([*VALIDATE, str(broken)], capture_output=True).returncode != 0


def test_compose_needs_no_environment_and_publishes_only_the_server_on_loopback() -> None:
    text = COMPOSE.read_text()
    variables = re.findall(r"(?<!\$)\$\{([^}]*)\}", text)
    assert variables and all(re.fullmatch(r"\w+:?-.*", v) for v in variables), variables  # each has a default
    services = compose()["services"]
    for name in ("redis", "postgres", "demo"):  # they would clash with servers running on the host
        assert "ports" not in services[name], name
    server = services["feature-server"]
    assert server["ports"] and all(str(p).startswith("127.0.0.1:") for p in server["ports"])
    # It serves on 0.0.0.0 in its container, which needs an API key: the start script gives it one.
    assert server["entrypoint"] == ["sh", "/app/serve.sh"]
    assert "COPY docker/serve.sh ./serve.sh" in (ROOT / "Dockerfile").read_text()


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(ROOT), patterns, "Dockerfile")  # docker-py's implementation of the rules
    copied = [line.split()[1:-1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    for source in (s for sources in copied for s in sources):
        assert source in context, source
        if (ROOT / source).is_dir():
            tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", source], capture_output=True, text=True,
                                     check=True).stdout.split()
            assert tracked and set(tracked) <= context, set(tracked) - context
    for left_out in (".venv", ".git", "tests", "benchmarks", "feature_repo/data", ".pytest_cache"):
        assert not any(p == left_out or p.startswith(left_out + "/") for p in context), left_out
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in context)


def test_the_compose_server_starts_without_environment_with_a_key_of_its_own(example_repo: Path,
                                                                              tmp_path: Path) -> None:
    """docker/serve.sh as the container runs it (a real process, 0.0.0.0): no FS_API_KEY, so it makes a key,
    keeps it, and requires it; a given FS_API_KEY is used instead."""
    key_file = tmp_path / "keys" / "api_key"
    env = {k: v for k, v in os.environ.items() if k not in ("FS_API_KEY", "FEATURE_STORE_API_KEYS")}
    env.update(FS_REPO=str(example_repo), FS_API_KEY_FILE=str(key_file),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    command = ["sh", str(ROOT / "docker" / "serve.sh")]
    served_keys = []
    for attempt in range(2):
        with run_server(example_repo, tmp_path / f"serve{attempt}.log", "--workers", "1", "--log-level", "warning",
                        env=env, command=command) as server:
            key = key_file.read_text().strip()
            assert len(key) >= 32 and oct(key_file.stat().st_mode)[-3:] == "600"
            assert httpx.get(f"{server.url}/features").status_code == 401
            with_key = httpx.get(f"{server.url}/features", headers={"Authorization": f"Bearer {key}"})
            assert with_key.status_code == 404 and with_key.json()["error"]["type"] == "NotAppliedError"
            assert key not in server.output()  # where to read it is logged, not the key
            served_keys.append(key)
    assert served_keys[0] == served_keys[1]  # made once, kept
    given = "g" * 24
    with run_server(example_repo, tmp_path / "given.log", "--workers", "1", env={**env, "FS_API_KEY": given},
                    command=command) as server:
        assert httpx.get(f"{server.url}/features", headers={"Authorization": f"Bearer {given}"}).status_code == 404
        refused = httpx.get(f"{server.url}/features", headers={"Authorization": f"Bearer {served_keys[0]}"})
        assert refused.status_code == 401


def test_ci_validates_the_compose_file() -> None:
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nvalidate-compose:"):]
    assert "check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml" in target
    steps = [shlex.split(line) for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith("#")]
    assert ["make", "validate-compose"] in steps and ["make", "test"] in steps and ["make", "lint"] in steps
