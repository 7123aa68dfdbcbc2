"""Reads of the Redis online store on an asyncio event loop, for the feature server.

A blocking read on the server's event loop leaves its process idle while Redis answers (about 70 us
on loopback here), and no other request moves meanwhile. Here each event loop has one connection
whose replies arrive through the loop: a read sends its commands (an HMGET per entity) and awaits
their replies, other requests run meanwhile, and concurrent reads share the connection, pipelined
(Redis answers in order, so a queue of waiting reads, each knowing how many replies it expects,
matches replies to reads).

The connection is made, authenticated and its database selected by redis-py's own code (so every URL
option redis-py knows applies), in a thread since that blocks, then its socket is handed to the event loop.
A Redis that hangs thus holds no loop: reads fail after the timeout, connecting included. TLS connections
are not handed over (asyncio would need to redo the handshake): stores with a ``rediss://`` URL read as
the SDK does, in a thread (redis_store.py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

HANDED_OVER = (Connection, UnixDomainSocketConnection)  # plain sockets; an SSL socket stays with redis-py


class _Waiting:
    """A read's future and the replies it still expects; the first error reply among them is its outcome.
    ``framed``: its replies come as one array (see _Replies.send)."""

    __slots__ = ("error", "framed", "future", "left", "replies")

    def __init__(self, future: asyncio.Future[Any], count: int, framed: bool) -> None:
        self.future, self.framed = future, framed
        self.left = 1 if framed else count
        self.replies: list[Any] = []
        self.error: Exception | None = None

    def take(self, reply: Any) -> bool:
        """Count the reply in; True when it was the last one expected."""
        if self.framed:
            self.replies = reply
            self.error = first_error(reply)
        elif type(reply) is ResponseError:
            self.error = self.error or reply
        else:
            self.replies.append(reply)
        self.left -= 1
        if self.left:
            return False
        if not self.future.done():  # else its read timed out, and the connection is being dropped
            if self.error is not None:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(self.replies)
        return True


class _Replies(asyncio.Protocol):
    """One Redis connection on the loop: replies resolve the oldest waiting read, in order."""

    def __init__(self) -> None:
        self.reader = reply_reader()
        self.waiting: deque[_Waiting] = deque()
        self.transport: asyncio.Transport | None = None
        self.unsent: list[bytes] = []  # commands sent before the loop took the socket over
        self.closed = False
        self.handing_over: asyncio.Task[Any] | None = None
        self.sock: socket.socket | None = None  # to close it when its loop was closed without closing it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.unsent:
            transport.write(b"".join(self.unsent))  # type: ignore[attr-defined]
            self.unsent = []

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if self.waiting[0].take(reply):
                    self.waiting.popleft()
        except (InvalidResponse, IndexError) as exc:  # garbage on the socket: nothing after it can be trusted
            self.fail(RedisConnectionError(f"unreadable reply from Redis: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))

    def send(self, command: bytes, count: int, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        """Send ``count`` commands; the future gets their ``count`` replies.

        A read of many entities gets one reply per entity, and a ``gets`` per reply costs tens of microseconds
        in all. With nothing in flight, the reader holds no byte and the next ones are this read's replies:
        an array header for them is fed first, so they are parsed as one array, in one call, in C."""
        future = loop.create_future()
        framed = count > 1 and not self.waiting
        if framed:
            self.reader.feed(b"*%d\r\n" % count)
        self.waiting.append(_Waiting(future, count, framed))
        if self.transport is None:
            self.unsent.append(command)
        else:
            self.transport.write(command)
        return future

    def fail(self, exc: Exception) -> None:
        """Every waiting read fails with ``exc``, and the connection is dropped: replies still on their way
        would otherwise answer the next reads."""
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft().future
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class AsyncReads:
    """Reads of one Redis store from any number of event loops, each over its own pipelined connection."""

    def __init__(self, make_connection: Callable[[], Connection], timeout: float,
                 unavailable: Callable[[Exception], Exception]) -> None:
        self.make_connection, self.timeout, self.unavailable = make_connection, timeout, unavailable
        self._connections: dict[int, tuple[asyncio.AbstractEventLoop, int, _Replies]] = {}
        self._connecting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Task[_Replies]]] = {}
        self._lock = threading.Lock()  # loops in several threads may connect at once

    async def request(self, command: bytes, count: int) -> list[Any]:
        """The replies of ``count`` commands (in RESP, back to back), or the store's error within the timeout,
        connecting included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        found = self._connections.get(id(loop))
        if found is not None and found[0] is loop and found[1] == os.getpid() and not found[2].closed:
            replies = found[2]
        else:
            replies = await self._connected(loop, deadline)
        future = replies.send(command, count, loop)
        timer = loop.call_at(deadline, self._expire, replies, future)
        try:
            values: list[Any] = await future
        except RedisError as exc:
            raise self.unavailable(exc) from exc
        finally:
            timer.cancel()
        return values

    async def _connected(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Replies:
        """The loop's connection once made: by one attempt at a time, in a thread, since redis-py's connect
        blocks (TCP, then AUTH, SELECT and CLIENT SETINFO, each waiting up to the timeout: a Redis that hangs
        accepts the TCP connection and answers nothing). A read waits for the attempt until its deadline; an
        attempt that succeeds later serves the next reads, and one begun before this read that fails is made
        again for it (Redis may be back by now)."""
        while True:
            with self._lock:
                self._forget_closed_loops()
                found = self._connecting.get(id(loop))
                if found is not None and found[0] is loop and not found[1].done():
                    attempt, mine = found[1], False
                else:
                    attempt, mine = loop.create_task(self._connect(loop)), True
                    attempt.add_done_callback(_retrieved)
                    self._connecting[id(loop)] = (loop, attempt)
            try:
                return await asyncio.wait_for(asyncio.shield(attempt), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise self.unavailable(RedisTimeoutError(f"no connection to Redis within {self.timeout} s")) from None
            except Exception:
                if mine or loop.time() >= deadline:
                    raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        sock = await loop.run_in_executor(None, self._open)
        replies = _Replies()
        replies.sock = sock
        # Reads sent before the loop has taken the socket over wait in replies.unsent.
        replies.handing_over = loop.create_task(self._hand_over(loop, replies, sock))
        with self._lock:
            self._connections[id(loop)] = (loop, os.getpid(), replies)
        return replies

    def _open(self) -> socket.socket:
        """A socket connected and set up by redis-py (blocking: run in a thread)."""
        connection = self.make_connection()
        try:
            connection.connect()
        except RedisError as exc:
            connection.disconnect()
            raise self.unavailable(exc) from exc
        sock, connection._sock = connection._sock, None  # the loop owns the socket from now on
        connection._parser.on_disconnect()
        if sock is None:  # redis-py connected without raising, so it has one; the type says it may not
            raise self.unavailable(RedisConnectionError("redis-py returned no socket after connecting"))
        return sock

    async def _hand_over(self, loop: asyncio.AbstractEventLoop, replies: _Replies, sock: socket.socket) -> None:
        try:
            if sock.family == socket.AF_UNIX:
                await loop.create_unix_connection(lambda: replies, sock=sock)
            else:
                await loop.create_connection(lambda: replies, sock=sock)
        except OSError as exc:
            sock.close()
            replies.fail(RedisConnectionError(f"handing the Redis connection to the event loop failed: {exc}"))

    def _expire(self, replies: _Replies, future: asyncio.Future[Any]) -> None:
        if not future.done():
            replies.fail(RedisTimeoutError(f"no reply from Redis within {self.timeout} s"))

    def _forget_closed_loops(self) -> None:
        for key, (loop, _task) in list(self._connecting.items()):
            if loop.is_closed():
                del self._connecting[key]
        for key, (loop, pid, replies) in list(self._connections.items()):
            if loop.is_closed() or replies.closed or pid != os.getpid():
                del self._connections[key]
                if loop.is_closed() and pid == os.getpid() and replies.sock is not None:
                    replies.sock.close()  # nothing runs on a closed loop: its transport cannot close it

    def close(self) -> None:
        """Close the connections of this process's loops (from any thread: the loop closes the transport)."""
        with self._lock:
            for loop, pid, replies in self._connections.values():
                if pid == os.getpid() and not loop.is_closed() and replies.transport is not None:
                    loop.call_soon_threadsafe(replies.transport.close)
            self._connections.clear()
            self._connecting.clear()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Take a connection attempt's outcome, which every read waiting for it may have stopped waiting for: else
    asyncio logs 'exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


def reply_reader() -> hiredis.Reader:
    """A parser of Redis replies: error replies come out as ResponseError values, garbage raises
    InvalidResponse (redis-py's own exceptions, so callers handle them as any Redis error)."""
    return hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)


def first_error(replies: list[Any]) -> ResponseError | None:
    """The first error among replies read as one array (hiredis gives an error reply as a value)."""
    return next((reply for reply in replies if type(reply) is ResponseError), None)
