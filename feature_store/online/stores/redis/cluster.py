"""The Redis online store on a Redis Cluster (``online_store: {type: redis, url: ..., cluster: true}``).

Keys are laid out as on one Redis (keys.py): an entity's values of every view, and their pushed deltas, are one
hash, so one slot. A read groups its HMGETs by the node that serves each hash's slot and sends every node its
commands in one buffer before reading any reply: the nodes work at once, a read costs one round trip to the
slowest node, with no thread hop (the blocking path) and one pipelined connection per node and event loop (the
asyncio path). Writes of materialization go the same way, a pipeline per node. An ``update`` is one WATCH/MULTI
transaction, which a cluster allows over the keys of one slot only: ``transaction_groups`` splits a push by slot,
and ``colocated`` gives its idempotency marker a hash tag of that slot (online/push/writer.py).

redis-py's ``RedisCluster`` keeps the topology (which node serves which slot) and refreshes it. A reply ``MOVED``
(the slot moved) sends the command again to the node named, and asks for a refresh; ``ASK`` (the slot is being
migrated) sends it to the node named after ``ASKING``. A node that does not answer (killed, or failing over)
refreshes the topology and is tried once more: while its replica is not yet promoted, reads fail with
OnlineStoreUnavailable, and they succeed again once it is, without a restart of the store.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from binascii import crc_hqx
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from feature_store.config import RedisOnlineConfig, cluster_urls
from feature_store.errors import OnlineStoreUnavailable
from feature_store.online.keys import split_key, split_prefix
from feature_store.online.stores.redis.aio import AsyncReads, first_error
from feature_store.online.stores.redis.resp import batch_rows, hdel_units, joined, resp_units
from feature_store.online.stores.redis.slots import SLOTS, slot_of, slot_tag, slots_of
from feature_store.online.stores.redis.store import RedisOnlineStore, _Reads, read_replies, safe_url
from feature_store.online.stores.redis.transactions import update_each
from feature_store.online.stores.writes import Batch, Compute, Writes

COLUMNAR_ROWS = 64  # a batch of at least this many values is routed column-wise (_write_columns)
ROUTE_ATTEMPTS = 5  # sends of one command: redirects during a resharding, a node failing over
REFRESH_SECONDS = 0.2  # at most one topology refresh per this long, however many reads find it stale
ASKING = b"*1\r\n$6\r\nASKING\r\n"
ERRORS = (RedisError, RedisClusterException)  # redis-py's cluster errors are not all RedisErrors
Unit = tuple[bytes, bytes, int]  # a hash's name, commands on it in RESP, how many (one reply each)
Pending = dict[int, tuple[ClusterNode | None, bool]]  # units to send again: to the node named (ASKING first?)


class RedisClusterOnlineStore(RedisOnlineStore):
    """Values in the hashes of a Redis Cluster: a read is a pipeline per node, sent to every node at once."""

    name: ClassVar[str] = "redis"
    optimistic_updates: ClassVar[bool] = True  # WATCH, read, MULTI/EXEC within one slot

    def __init__(self, config: RedisOnlineConfig) -> None:  # no super().__init__: no single-node client
        self.config = config
        self.urls = cluster_urls(config.url)
        self.url = ",".join(safe_url(url) for url in self.urls)
        self._tls = self.urls[0].startswith("rediss://")
        self._client: RedisCluster | None = None  # made at first use: opening a store needs no live cluster
        self._client_lock = threading.Lock()
        self._refreshed = 0.0
        self._table: list[ClusterNode | None] | None = None  # the master of each slot, from redis-py's topology
        self._owner_arrays: tuple[list[ClusterNode | None], np.ndarray, list[ClusterNode]] | None = None
        self._local = threading.local()  # each thread's connection per node, for reads and writes
        self._readers: list[Connection] = []
        self._readers_lock = threading.Lock()
        self._async_nodes: dict[str, AsyncReads] = {}
        self._scripted: bool | None = None

    # --- topology ---------------------------------------------------------------------------------

    @property
    def cluster(self) -> RedisCluster:
        """redis-py's cluster client (topology discovered at first use)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def _connect(self) -> RedisCluster:
        first, others = self.urls[0], self.urls[1:]
        nodes = []
        for url in others:
            options = redis.connection.parse_url(url)
            nodes.append(ClusterNode(options.get("host", "127.0.0.1"), options.get("port", 6379)))
        timeout = self.config.timeout_seconds
        try:
            return RedisCluster(url=first, startup_nodes=nodes, socket_timeout=timeout,
                                socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))
        except ERRORS as exc:
            raise self._unavailable(exc) from exc

    @property
    def client(self) -> redis.Redis:  # type: ignore[override]
        """A client of one master (what single-node code asks a server: its version)."""
        return self._masters()[0]

    def _refresh(self, force: bool = False) -> None:
        """Read the topology again from any node that answers; at most once per REFRESH_SECONDS."""
        with self._client_lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_SECONDS:
                return
            self._refreshed = time.monotonic()
        try:
            self.cluster.nodes_manager.initialize()
        except (*ERRORS, OnlineStoreUnavailable):
            pass  # no node answered: the next sends fail as they would have, and refresh again
        self._table = None

    def _slot_table(self) -> list[ClusterNode | None]:
        """Each slot's master: a list lookup per key, where redis-py's get_node_from_slot takes a lock and a
        deprecation wrapper (a third of a 100-entity read's time)."""
        table = self._table
        if table is None:
            table = [None] * SLOTS
            for slot, nodes in self.cluster.nodes_manager.slots_cache.items():
                if nodes:
                    table[slot] = nodes[0]
            self._table = table
        return table

    def _node_of(self, name: bytes, table: list[ClusterNode | None] | None = None) -> ClusterNode:
        node = (table or self._slot_table())[slot_of(name)]
        if node is None:  # a slot no node serves (the cluster is failing over)
            raise self._unavailable(RedisConnectionError(f"no node serves slot {slot_of(name)} now"))
        return node

    def _node_named(self, node_name: str) -> ClusterNode:
        """A node a redirect named: known, or the topology read again."""
        node = self.cluster.get_node(node_name=node_name)
        if node is None:
            self._refresh(force=True)
            node = self.cluster.get_node(node_name=node_name)
        if node is None:
            host, _, port = node_name.rpartition(":")
            raise self._unavailable(RedisConnectionError(f"redirected to {host}:{port}, a node not in the cluster"))
        return node

    def _masters(self) -> list[redis.Redis]:
        try:
            return [self.cluster.get_redis_connection(node) for node in self.cluster.get_primaries()]
        except ERRORS as exc:
            raise self._unavailable(exc) from exc

    # --- connections ------------------------------------------------------------------------------

    def _node_connection(self, node: ClusterNode) -> Connection:
        """This thread's own connection to the node (reads and writes skip the pools, as on one node)."""
        mine: dict[str, tuple[int, Connection]] | None = getattr(self._local, "nodes", None)
        if mine is None:
            mine = self._local.nodes = {}
        found = mine.get(node.name)
        if found is None or found[0] != os.getpid():
            pool = self.cluster.get_redis_connection(node).connection_pool
            connection: Connection = pool.connection_class(**pool.connection_kwargs)
            with self._readers_lock:
                self._readers.append(connection)
            found = mine[node.name] = (os.getpid(), connection)
        return found[1]

    @contextmanager
    def _pooled(self, name: bytes) -> Iterator[Connection]:
        with self._connection(self.cluster.get_redis_connection(self._node_of(name))) as connection:
            yield connection

    def _connection_for(self, name: bytes) -> Any:
        return self._pooled(name)

    # --- routing: commands sent to the nodes of their hashes ----------------------------------------

    def _route(self, units: Sequence[Unit]) -> list[Any]:
        """The units' replies, one after the other (each unit's in its order), its commands sent to the node
        serving its hash: one buffer per node, every node's sent before any reply is read, so the nodes work
        at once (no thread needed: a node's replies wait in the socket while another's are read). Redirects
        are followed; a node whose connection fails is tried once more after a topology refresh (a timeout is
        not: it would double the wait). An error reply, or a failure that outlasts that, raises
        OnlineStoreUnavailable. Only commands that may be sent twice come here (reads, writes of values)."""
        single = all(unit[2] == 1 for unit in units)  # reads: a unit's reply is at its own place in out
        out: list[Any] = [None] * (len(units) if single else sum(unit[2] for unit in units))
        pending: Pending | None = None  # None: every unit, none of them redirected yet
        failure: Exception | None = None
        lost = 0
        for _ in range(ROUTE_ATTEMPTS):
            if pending == {}:
                return out
            pending, failure, dropped = self._round(units, pending, out, single)
            if dropped:
                lost += 1
                if lost > 1 or isinstance(failure, RedisTimeoutError):
                    break
                self._refresh()
        if not pending:
            return out
        raise self._unavailable(failure or RedisConnectionError("no reply"))

    def _round(self, units: Sequence[Unit], pending: Pending | None, out: list[Any],
               single: bool) -> tuple[Pending, Exception | None, bool]:
        """One send of the pending units (to the node a redirect named, else their slot's): fills ``out``;
        returns what is left to send again, the last failure, and whether a connection failed. Every reply
        sent for is read before any is looked at, so no connection is left with replies unread."""
        groups = self._groups(units, pending)
        asking = pending is not None and any(ask for _, ask in pending.values())
        answers: list[tuple[list[int], list[Any] | RedisError]] = []
        sent: list[tuple[Connection, list[int]]] = []
        try:
            for node, members in groups.values():
                connection = self._node_connection(node)
                if asking:
                    data = b"".join(ASKING + units[i][1] if pending[i][1] else units[i][1]  # type: ignore[index]
                                    for i in members)
                else:
                    data = b"".join([units[i][1] for i in members])
                try:
                    connection.send_packed_command([data])
                except RedisError as exc:
                    connection.disconnect()
                    answers.append((members, exc))
                    continue
                sent.append((connection, members))
            for connection, members in sent:
                count = len(members) if single and not asking else sum(
                    units[i][2] + (pending[i][1] if pending else 0) for i in members)
                try:
                    answers.append((members, read_replies(connection, count)))
                except RedisError as exc:
                    connection.disconnect()
                    answers.append((members, exc))
        except BaseException:
            for connection, _ in sent:
                connection.disconnect()  # replies may be unread on it
            raise
        return self._take(units, pending or {}, answers, out, single)

    def _groups(self, units: Sequence[Unit], pending: Pending | None) -> dict[str, tuple[ClusterNode, list[int]]]:
        """The pending units by node: the one a redirect named, else their slot's master."""
        table = self._slot_table()
        by_node: dict[ClusterNode | None, list[int]] = {}
        if pending is None:
            for i, unit in enumerate(units):  # a first send: the slot inline, where a read spends its time
                name = unit[0]
                node = table[key_slot(name) if b"{" in name else crc_hqx(name, 0) & (SLOTS - 1)]
                found = by_node.get(node)
                if found is None:
                    by_node[node] = [i]
                else:
                    found.append(i)
        else:
            for i, (named, _asking) in pending.items():
                by_node.setdefault(named or table[slot_of(units[i][0])], []).append(i)
        if None in by_node:  # a slot no node serves (the cluster is failing over)
            raise self._unavailable(RedisConnectionError("no node serves some of the slots now"))
        return {node.name: (node, members) for node, members in by_node.items() if node is not None}

    def _take(self, units: Sequence[Unit], pending: Pending, answers: list[tuple[list[int], list[Any] | RedisError]],
              out: list[Any], single: bool) -> tuple[Pending, Exception | None, bool]:
        """The replies of a round into ``out``; what to send again (redirected, or its connection failed)."""
        again: Pending = {}
        failure: Exception | None = None
        dropped = False
        for members, replies in answers:
            if isinstance(replies, RedisError):
                failure, dropped = replies, True
                again.update(dict.fromkeys(members, (None, False)))
            elif single and first_error(replies) is None and len(replies) == len(members):
                for i, reply in zip(members, replies, strict=True):  # the usual case, made fast
                    out[i] = reply
            else:
                starts = None if single else list(accumulate((unit[2] for unit in units), initial=0))
                at = 0
                for i in members:
                    at += i in pending and pending[i][1]  # ASKING's OK
                    size = units[i][2]
                    own = replies[at:at + size]
                    at += size
                    redirect = self._redirect(own)
                    if redirect is None:
                        start = i if starts is None else starts[i]
                        out[start:start + size] = own
                    else:
                        failure = redirect[2]
                        again[i] = (redirect[0], redirect[1])
        return again, failure, dropped

    def _redirect(self, replies: list[Any]) -> tuple[ClusterNode, bool, ResponseError] | None:
        """Where replies redirect their command to (node, whether ASKING), None if none does; an error reply
        of another kind raises."""
        for reply in replies:
            if type(reply) is ResponseError:
                kind, _, rest = str(reply).partition(" ")
                if kind in ("MOVED", "ASK"):
                    if kind == "MOVED":
                        self._refresh()
                    return self._node_named(rest.split(" ")[-1]), kind == "ASK", reply
                raise self._unavailable(reply)
        return None

    # --- the store --------------------------------------------------------------------------------

    def transaction_groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(slot_of(split_key(key)[0]), []).append(i)
        return list(groups.values())

    def colocated(self, key: bytes, near: bytes) -> bytes:
        """``key`` with a hash tag of the slot of ``near``'s hash before its entity: the namespace has no brace
        (config.py refuses one in key_prefix), so the tag decides the slot."""
        first = key.find(b"\x00")
        second = key.find(b"\x00", first + 1)
        return key[:second + 1] + b"{" + slot_tag(slot_of(split_key(near)[0])) + b"}" + key[second + 1:]

    def update(self, keys: Sequence[bytes], compute: Compute) -> None:
        """One slot's keys in one WATCH/MULTI transaction. A redirect (the slot moved) runs it again on the right
        node: it was refused before EXEC, so nothing of it was applied. A connection lost is not retried (EXEC
        may have run): the topology is refreshed for the next call, and OnlineStoreUnavailable raised."""
        if not keys:
            return
        if len(self.transaction_groups(keys)) > 1:
            raise ValueError("a Redis Cluster updates the keys of one slot at a time: split them with "
                             "transaction_groups")
        for attempt in range(ROUTE_ATTEMPTS):
            try:
                return super().update(keys, compute)
            except OnlineStoreUnavailable as exc:
                cause = exc.__cause__
                redirected = isinstance(cause, ResponseError) and str(cause).startswith(("MOVED", "ASK", "TRYAGAIN"))
                if not redirected or attempt == ROUTE_ATTEMPTS - 1:
                    if isinstance(cause, RedisConnectionError | RedisTimeoutError):
                        self._refresh()
                    raise
                self._refresh(force=True)
                time.sleep(0.05 * attempt)

    def update_each(self, updates: Sequence[tuple[Sequence[bytes], Compute]]) -> None:
        """Transactions of one slot each, all at once: two round trips for up to WAVE of them
        (redis/transactions.py)."""
        for keys, _ in updates:
            if len(self.transaction_groups(keys)) > 1:
                raise ValueError("a Redis Cluster updates the keys of one slot at a time: split them with "
                                 "transaction_groups")
        update_each(self, updates)

    def write(self, writes: Writes) -> None:
        """Each value's commands to the node of its hash, a pipeline per node. A batch of materialization goes
        column-wise: slots computed by numpy, each node's commands taken from the Arrow column; if anything is
        redirected or lost, the whole batch is sent again value by value through _route (writes may be sent
        twice: same values, expiries only lengthen)."""
        if not len(writes):
            return
        scripted = self._expiry_by_script()
        if (isinstance(writes, Batch) and writes.prefix and len(writes.entities) >= COLUMNAR_ROWS
                and self._write_columns(writes, scripted)):
            if writes.extra:
                self.write(writes.extra)
            return
        names, commands, per_value = resp_units(writes, scripted)
        self._route([(name, command, per_value) for name, command in zip(names, commands, strict=True)])

    def _write_columns(self, batch: Batch, scripted: bool) -> bool:
        """Send each node its values of the batch in one buffer, all nodes before reading any reply; whether
        every reply was a success."""
        owners, nodes = self._owners()
        owner = owners[slots_of(split_prefix(batch.prefix)[0], batch.entities)]
        if (owner < 0).any():
            return False  # a slot no node serves: _route says so
        rows, per_value = batch_rows(batch, scripted), 2 if scripted else 3
        sent: list[tuple[Connection, int]] = []
        ok = True
        try:
            for k in np.unique(owner):
                members = np.nonzero(owner == k)[0]
                connection = self._node_connection(nodes[k])
                try:
                    connection.send_packed_command([joined(rows.take(pa.array(members)))])
                except RedisError:
                    connection.disconnect()
                    ok = False
                    continue
                sent.append((connection, len(members) * per_value))
            for connection, count in sent:
                try:
                    ok = first_error(read_replies(connection, count)) is None and ok
                except RedisError:
                    connection.disconnect()
                    ok = False
        except BaseException:
            for connection, _ in sent:
                connection.disconnect()  # replies may be unread on it
            raise
        return ok

    def _owners(self) -> tuple[np.ndarray, list[ClusterNode]]:
        """Per slot, the index of its master in the list returned (-1: none)."""
        table = self._slot_table()
        cached = self._owner_arrays
        if cached is None or cached[0] is not table:
            nodes = list({node.name: node for node in table if node is not None}.values())
            index = {node.name: k for k, node in enumerate(nodes)}
            owners = np.array([-1 if node is None else index[node.name] for node in table], dtype=np.int32)
            cached = self._owner_arrays = (table, owners, nodes)
        return cached[1], cached[2]

    def _read(self, reads: _Reads) -> list[bytes | None]:
        return reads.values(self._route([(name, command, 1) for name, command in reads.units or ()]))

    def read(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return self._read(_Reads.of(keys, units=True)) if keys else []

    def read_views(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        if not any(entities for _, entities in views):
            return []
        return self._read(_Reads.of_views(views, units=True))

    async def read_async(self, keys: Sequence[bytes]) -> list[bytes | None]:
        return await self._read_async(_Reads.of(keys, units=True)) if keys else []

    async def read_views_async(self, views: Sequence[tuple[bytes, Sequence[bytes]]]) -> list[bytes | None]:
        if not any(entities for _, entities in views):
            return []
        return await self._read_async(_Reads.of_views(views, units=True))

    async def _read_async(self, reads: _Reads) -> list[bytes | None]:
        """Every node's HMGETs over its pipelined connection of this loop, all nodes at once (asyncio.gather).
        Anything but plain replies (a redirect, a node down, TLS) takes the blocking path in a thread, which
        follows redirects and refreshes the topology."""
        if self._tls or self._client is None:
            return await asyncio.to_thread(self._read, reads)
        units = reads.units or []
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        try:
            table = self._slot_table()
            for i, (name, _) in enumerate(units):
                node = self._node_of(name, table)
                groups.setdefault(node.name, (node, []))[1].append(i)
        except (*ERRORS, OnlineStoreUnavailable):
            return await asyncio.to_thread(self._read, reads)
        requests = [self._async_reads(node).request(b"".join(units[i][1] for i in members), len(members))
                    for node, members in groups.values()]
        answers = await asyncio.gather(*requests, return_exceptions=True)
        if any(isinstance(answer, BaseException) for answer in answers):
            return await asyncio.to_thread(self._read, reads)
        replies: list[Any] = [None] * len(units)
        for (_, members), answer in zip(groups.values(), answers, strict=True):
            for i, reply in zip(members, answer, strict=True):  # type: ignore[arg-type]
                replies[i] = reply
        return reads.values(replies)

    def _async_reads(self, node: ClusterNode) -> AsyncReads:
        found = self._async_nodes.get(node.name)
        if found is None:
            pool = self.cluster.get_redis_connection(node).connection_pool

            def connect() -> Connection:
                connection: Connection = pool.connection_class(**pool.connection_kwargs)
                return connection

            with self._readers_lock:
                found = self._async_nodes.setdefault(
                    node.name, AsyncReads(connect, self.config.timeout_seconds, self._unavailable))
        return found

    def delete(self, keys: Sequence[bytes]) -> int:
        if not keys:
            return 0
        units = [(name, command, 1) for name, command in hdel_units(keys)]
        return sum(self._route(units))

    def ping(self) -> None:
        """Every master answers, and the cluster serves every slot (``cluster_state:ok``)."""
        for attempt in range(2):
            try:
                for client in self._masters():
                    info = client.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
                    state = info.get("cluster_state") if isinstance(info, dict) else None
                    if state != "ok":
                        where = client.connection_pool.connection_kwargs.get("port")
                        raise RedisConnectionError(f"cluster_state is {state} on the node at port {where}")
                return
            except ERRORS as exc:
                if attempt:
                    raise self._unavailable(exc) from exc
                self._refresh(force=True)

    def _unavailable(self, exc: Exception) -> OnlineStoreUnavailable:
        return OnlineStoreUnavailable(
            f"the Redis Cluster online store at {self.url} is unavailable ({type(exc).__name__}: {exc}); check that "
            "its nodes run and serve every slot (redis-cli --cluster check), and that online_store.url in "
            "feature_store.yaml names them.", url=self.url,
        )

    def close(self) -> None:
        with self._readers_lock:
            readers, self._readers = self._readers, []
            nodes, self._async_nodes = self._async_nodes, {}
        for connection in readers:
            connection.disconnect()
        self._local = threading.local()
        for reads in nodes.values():
            reads.close()
        if self._client is not None:
            self._client.close()
            self._client = None


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)
