"""uvicorn's HTTP protocol with a deadline for each request to arrive whole: headers and body.

uvicorn times out idle keep-alive connections but not a request in progress: a client that opens a connection
and sends nothing, or sends its headers or its body a byte at a time, holds a connection, a task and a
buffer for as long as it likes (2,000 such bodies stayed open for a minute and doubled the server's memory),
and with a connection cap (``server.max_connections``) a handful of them would lock everyone else out. Here
each connection gets ``request_timeout`` seconds from its opening, and each later request from its first
byte, to deliver the request up to its last body byte; past that the server answers 408 and closes the
connection. The handler still waiting for the body sees the client gone (a 408 in the metrics), and nothing
it answers afterwards is sent.

``feature-store serve`` passes this class to uvicorn; the app of each worker sets ``request_timeout`` from
``server.body_timeout_seconds`` before uvicorn opens any connection (serve.app_from_env).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from feature_store.errors import RequestTimeoutError
from feature_store.server.encode import JSON, dumps, error_content
from feature_store.server.middleware import TIMED_OUT


def timeout_response(seconds: float) -> bytes:
    body = dumps(error_content(RequestTimeoutError(
        f"the request did not arrive whole within {seconds:g} s (server.body_timeout_seconds); send the headers "
        "and the body without pausing, or raise the limit.", body_timeout_seconds=seconds,
    )))
    return b"HTTP/1.1 408 Request Timeout\r\ncontent-type: %b\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%b" % (
        JSON.encode(), len(body), body)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    request_timeout: ClassVar[float] = 5.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a new connection must bring its first request in time too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # the first byte of a later request on a kept-alive connection
            self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        transport: Any = self.transport
        if transport is None or transport.is_closing():
            return
        cycle: Any = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None and not cycle.response_complete:  # its handler waits for the rest of the body
                cycle.scope[TIMED_OUT] = True
                cycle.disconnected = True  # its receive() now answers http.disconnect, and its sends are dropped
                cycle.message_event.set()
            transport.write(timeout_response(self.request_timeout))
        transport.close()  # a response being written (the body was refused early) is cut short: the client stalled
