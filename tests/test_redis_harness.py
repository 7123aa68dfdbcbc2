"""The suite's Redis harness: a real server is reachable, and a throwaway one can be started."""

from __future__ import annotations

import redis

from tests.conftest import _free_port, start_redis


def test_redis_is_reachable(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{key_prefix}:ping"
    try:
        client.set(key, b"pong", ex=60)
        assert client.get(key) == b"pong"
    finally:
        client.delete(key)


def test_throwaway_redis_server_starts_and_stops() -> None:
    port = _free_port()
    proc = start_redis(port)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        assert client.ping()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
