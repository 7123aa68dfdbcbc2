"""Many one-slot transactions of a Redis Cluster at once: a push over entities of many slots.

A cluster runs WATCH/MULTI/EXEC over the keys of one slot, so a push of 64 entities is up to 64 transactions. One
after the other, each two round trips, that took 17.7 ms where one Redis takes 0.5 (benchmarks in docs/online.md).
Here each transaction of a wave has a connection of its own (from its node's pool, WATCH being a connection's
state): every WATCH and read is sent before any reply is read, then every MULTI/EXEC: two round trips for the
wave. A transaction that lost to another writer (EXEC answered nil) runs again in the next pass; one refused
before EXEC (the slot moved: MOVED, ASK, TRYAGAIN) too, after a topology refresh. A connection that fails raises
OnlineStoreUnavailable once every other connection of the pass is released (EXEC may have run on it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.connection import Connection
from redis.exceptions import RedisError, ResponseError

from feature_store.errors import OnlineStoreConflict
from feature_store.online.stores.redis.resp import resp_hsets
from feature_store.online.stores.writes import Compute

WAVE = 32  # transactions in flight at once: connections held from the nodes' pools
ATTEMPTS = 100  # passes, as UPDATE_ATTEMPTS of one transaction
_MULTI, _EXEC = b"*1\r\n$5\r\nMULTI\r\n", b"*1\r\n$4\r\nEXEC\r\n"
REFUSED = ("MOVED", "ASK", "TRYAGAIN", "EXECABORT")  # refused before anything ran: safe to run again


@dataclass
class _Open:
    """One transaction of a pass: its connection (and pool, to give it back) and what it read."""

    index: int
    connection: Connection
    pool: Any
    reads: Any
    current: list[bytes | None] | None = None
    count: int = 0  # the commands of its MULTI
    clean: bool = False  # EXEC's reply read: no WATCH pending, nothing unread: the connection may be reused


def update_each(store: Any, updates: Sequence[tuple[Sequence[bytes], Compute]]) -> None:
    """Run each (keys of one slot, compute) atomically on its own (see the module docstring)."""
    for start in range(0, len(updates), WAVE):
        wave = updates[start:start + WAVE]
        left = [i for i, (keys, _) in enumerate(wave) if keys]
        for attempt in range(ATTEMPTS):
            if not left:
                break
            left, refused = _pass(store, wave, left)
            if refused:
                store._refresh(force=True)
            if left:
                time.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))  # spread the retries
        if left:
            raise OnlineStoreConflict(
                f"updating {len(left)} slot(s) of the Redis Cluster online store at {store.url} lost to concurrent "
                f"writers {ATTEMPTS} times in a row; retry later.", url=store.url)


def _pass(store: Any, wave: Sequence[tuple[Sequence[bytes], Compute]], left: list[int]) -> tuple[list[int], bool]:
    """One try of the transactions ``left``: returns those to run again, and whether one was refused."""
    from feature_store.online.stores.redis.store import _bulk, _Reads

    opened: list[_Open] = []
    failure: Exception | None = None
    again: list[int] = []
    refused = False
    try:
        for i in left:
            reads = _Reads.of(wave[i][0])
            client = store.cluster.get_redis_connection(store._node_of(reads.names[0]))
            pool = client.connection_pool
            opened.append(_Open(i, pool.get_connection(), pool, reads))
        scripted = store._expiry_by_script()
        for one in opened:  # WATCH is in effect before the HMGETs run
            names = one.reads.names
            one.connection.send_packed_command([b"*%d\r\n$5\r\nWATCH\r\n%b%b" % (  # one buffer: one sendall
                1 + len(names), b"".join(map(_bulk, names)), one.reads.command)])
        for one, replies in _collect(opened, lambda one: 1 + one.reads.count):
            error = _error(replies)
            if error is None:
                one.current = one.reads.values(replies[1:])
            elif str(error).startswith(REFUSED):
                again.append(one.index)
                refused = True
            else:
                failure = error
        for one in opened:
            if one.current is not None:
                commands = resp_hsets(wave[one.index][1](one.current), scripted)
                one.count = commands.count
                one.connection.send_packed_command([_MULTI + commands.data + _EXEC])
        for one, replies in _collect([o for o in opened if o.current is not None], lambda one: one.count + 2):
            error = _error(replies)
            if error is not None and str(error).startswith(REFUSED):
                again.append(one.index)
                refused = True
            elif error is not None:
                failure = error
            elif replies[-1] is None:  # a watched key changed: nothing written
                again.append(one.index)
            one.clean = error is None
    except RedisError as exc:
        failure = exc
    finally:
        for one in opened:
            if not one.clean:
                one.connection.disconnect()  # a WATCH may be pending, replies unread
            one.pool.release(one.connection)
    if failure is not None:
        if isinstance(failure, ResponseError):
            raise store._unavailable(failure) from failure
        store._refresh()
        raise store._unavailable(failure) from failure
    return sorted(again), refused


def _collect(opened: list[_Open], count: Callable[[_Open], int]) -> list[tuple[_Open, list[Any]]]:
    """Every connection's replies, read after all were sent; a connection that fails raises once all are read."""
    from feature_store.online.stores.redis.store import read_replies

    out: list[tuple[_Open, list[Any]]] = []
    failure: RedisError | None = None
    for one in opened:
        try:
            out.append((one, read_replies(one.connection, count(one))))
        except RedisError as exc:
            one.connection.disconnect()
            failure = failure or exc
    if failure is not None:
        raise failure
    return out


def _error(replies: list[Any]) -> ResponseError | None:
    """The first error reply, looking into EXEC's own replies too."""
    for reply in replies:
        if type(reply) is ResponseError:
            return reply
        if type(reply) is list:
            inner = next((r for r in reply if type(r) is ResponseError), None)
            if inner is not None:
                return inner
    return None
