"""``feature-store serve``: the app under uvicorn, with one or several worker processes."""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from fastapi import FastAPI

from feature_store.config import load_config
from feature_store.errors import InsecureServerError
from feature_store.server.app import ServerSettings, create_app
from feature_store.server.metrics import MULTIPROC_ENV
from feature_store.server.middleware import LOOPBACK_HOSTS
from feature_store.server.protocol import DeadlineHttpToolsProtocol
from feature_store.store import FeatureStore

REPO_ENV = "FEATURE_STORE_SERVER_REPO"
HOST_ENV = "FEATURE_STORE_SERVER_HOST"
log = logging.getLogger("feature_store.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def app_from_env() -> FastAPI:
    """The app of one worker process; uvicorn imports it by name (``--workers`` needs an import string)."""
    repo = Path(os.environ[REPO_ENV])
    store = FeatureStore(repo)
    # Before uvicorn opens any connection of this worker: the app is loaded first.
    DeadlineHttpToolsProtocol.request_timeout = store.config.server.body_timeout_seconds
    return create_app(store, settings_for(store, os.environ.get(HOST_ENV, "127.0.0.1")), close_store=True)


def settings_for(store: FeatureStore, host: str) -> ServerSettings:
    config = store.config.server
    hosts = config.allowed_hosts
    if not hosts and is_loopback(host):
        # A server on loopback answers only to loopback names: a web page cannot reach it by DNS rebinding.
        hosts = LOOPBACK_HOSTS
    return ServerSettings.from_config(config, allowed_hosts=hosts)


def warnings_for(repo: Path, host: str) -> list[str]:
    config = load_config(repo.resolve())
    if config.server.api_keys or is_loopback(host):
        return []
    return [f"WARNING: serving on {host}, which is not a loopback address, WITHOUT API KEYS: anyone who can "
            "reach this port can read every feature and push data. Configure server.api_keys in "
            "feature_store.yaml (or FEATURE_STORE_API_KEYS), or bind 127.0.0.1."]


def check_keys(repo: Path, host: str, insecure: bool) -> list[str]:
    """The warnings to print before serving; InsecureServerError when the server would listen beyond loopback
    without API keys and ``insecure`` was not given: anyone who reaches the port could read and push."""
    warnings = warnings_for(repo, host)
    if warnings and not insecure:
        raise InsecureServerError(
            f"refusing to serve on {host}, which is not a loopback address, without API keys: anyone who can reach "
            "this port could read every feature and push data. Configure server.api_keys in feature_store.yaml "
            "(or FEATURE_STORE_API_KEYS=\"<key>:read,write\"), bind 127.0.0.1, or pass --insecure to serve "
            "without keys anyway (e.g. behind a proxy that authenticates).", host=host,
        )
    return warnings


def serve(repo: Path, host: str, port: int, workers: int, log_level: str = "info", access_log: bool = False,
          insecure: bool = False) -> None:
    import uvicorn

    for warning in check_keys(repo, host, insecure):
        sys.stderr.write(f"\n\033[1;31m{warning}\033[0m\n\n")
        log.warning(warning)
    config = load_config(repo.resolve()).server
    os.environ[REPO_ENV] = str(repo.resolve())
    os.environ[HOST_ENV] = host
    cleanup = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker process counts for itself; /metrics adds the workers up from this folder.
        cleanup = tempfile.mkdtemp(prefix="feature-store-metrics-")
        os.environ[MULTIPROC_ENV] = cleanup
    try:
        uvicorn.run("feature_store.server.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=access_log, server_header=False,
                    http=DeadlineHttpToolsProtocol, limit_concurrency=config.max_connections)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
