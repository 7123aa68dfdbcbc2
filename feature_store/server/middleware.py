"""One plain ASGI middleware for what every request needs: Host check, API key, body size, metrics;
and the fast path of the hot endpoint.

A single layer, decided on the path before routing, costs a few microseconds; a stack of Starlette
middlewares and FastAPI dependencies would cost more on every request of the hot endpoints. POST
endpoints given in ``fast`` are answered here, without FastAPI's routing (their FastAPI routes stay,
for the OpenAPI document, and call the same handler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from feature_store.errors import (
    ClientDisconnectedError,
    CrossSiteRequestError,
    FeatureStoreError,
    OnlineStoreUnavailable,
    RequestTooLargeError,
    UntrustedHostError,
)
from feature_store.server.auth import WWW_AUTHENTICATE, KeyRing
from feature_store.server.encode import JSON, dumps, error_content
from feature_store.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
FastHandler = Callable[[bytes], Awaitable[bytes]]
log = logging.getLogger("feature_store.server")
INTERNAL_ERROR = {"error": {"type": "InternalServerError",
                            "message": "an unexpected error; the server log has the details.", "details": {}}}

# path -> (metrics label, scope the API key needs or None). Health, readiness, metrics and docs are open:
# orchestrators and scrapers call them without credentials, and they reveal no feature data.
ROUTES: dict[str, tuple[str, str | None]] = {
    "/get-online-features": ("/get-online-features", "read"),
    "/push": ("/push", "write"),
    "/features": ("/features", "read"),
    "/health": ("/health", None),
    "/ready": ("/ready", None),
    "/metrics": ("/metrics", None),
    "/docs": ("/docs", None),
    "/openapi.json": ("/openapi.json", None),
}
VIEW_ROUTE = ("/features/{view}", "read")
OTHER_ROUTE = ("other", None)  # one label for every unknown path, so scanners cannot blow up label counts
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
CROSS_SITE = (b"cross-site", b"same-site")  # Sec-Fetch-Site values of a request from another origin
_JSON_BYTES = JSON.encode()


def route_of(path: str) -> tuple[str, str | None]:
    found = ROUTES.get(path)
    if found is not None:
        return found
    if path.startswith("/features/"):
        return VIEW_ROUTE
    if path.startswith("/docs/"):  # Swagger UI's files
        return ROUTES["/docs"]
    return OTHER_ROUTE


TIMED_OUT = "feature_store.timed_out"  # in the scope of a request the protocol timed out (protocol.py)


class _Disconnected(Exception):
    """The client went away before sending its whole body."""


class _Body:
    """Whether a request's body is still (partly) to come. An answer sent before it has all arrived closes the
    connection: else uvicorn would go on reading, and dropping, the rest of a body already refused."""

    __slots__ = ("pending",)

    def __init__(self, pending: bool) -> None:
        self.pending = pending


class ServerMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing, metrics: Metrics, max_body_bytes: int,
                 allowed_hosts: tuple[str, ...] = (), fast: Mapping[str, FastHandler] | None = None,
                 cors_origins: tuple[str, ...] = ()) -> None:
        self.app, self.keys, self.metrics = app, keys, metrics
        self.max_body_bytes = max_body_bytes
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.cors_origins = frozenset(o.lower().encode("latin-1") for o in cors_origins)
        self.fast = dict(fast or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        label, needed = route_of(scope["path"])
        status = 500  # unless a response starts
        rejection, body = self._reject(scope, needed)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if body.pending:
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            handler = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
            if rejection is not None:
                await _send_error(send_wrapper, rejection)
            elif handler is not None:
                await self._answer(handler, label, receive, send_wrapper, body)
            else:
                await self.app(scope, self._limited(receive, body), send_wrapper)
        except _Disconnected:
            status = 499  # nginx's "client closed request", for the metrics only: nobody reads an answer
        finally:
            if status == 499 and scope.get(TIMED_OUT):
                status = 408  # the protocol answered 408 and closed the connection
            self.metrics.observe_request(label, scope["method"], status, time.perf_counter() - started)

    async def _answer(self, handler: FastHandler, label: str, receive: Receive, send: Send, body: _Body) -> None:
        """What FastAPI's exception handlers do for the other routes, for a fast-path handler."""
        try:
            answer = await handler(await self._body(receive, body))
        except FeatureStoreError as exc:
            if isinstance(exc, OnlineStoreUnavailable):
                self.metrics.online_errors.labels(label).inc()
            await _send_error(send, exc)
            return
        except _Disconnected:
            raise
        except Exception:
            log.exception("unexpected error on POST %s", label)
            await _send(send, 500, dumps(INTERNAL_ERROR))
            return
        await _send(send, 200, answer)

    async def _body(self, receive: Receive, body: _Body) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                body.pending = False
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _reject(self, scope: Scope, needed: str | None) -> tuple[FeatureStoreError | None, _Body]:
        """The error to answer with before reading the body, if any; and whether a body is to come."""
        host, authorization, length, origin, fetch_site, chunked = None, None, None, None, None, False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                fetch_site = value
            elif name == b"transfer-encoding":
                chunked = True
        body = _Body(chunked or (length is not None and length.strip(b"0 ") != b""))
        if self.allowed_hosts and _host_name(host) not in self.allowed_hosts:
            return UntrustedHostError(
                "this Host header is not accepted; the server answers only to "
                f"{sorted(self.allowed_hosts)} (server.allowed_hosts in feature_store.yaml).",
            ), body
        if (origin is not None or fetch_site is not None) and scope["method"] not in SAFE_METHODS:
            refused = self._cross_site(origin, fetch_site, host, scope)
            if refused is not None:
                return refused, body
        if needed is not None:
            denied = self.keys.check(authorization, needed)
            if denied is not None:
                return denied, body
        # By its declared size, before a byte of it is read (a streamed body is counted as it comes: _limited).
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(), body
        return None, body

    def _cross_site(self, origin: bytes | None, fetch_site: bytes | None, host: bytes | None,
                    scope: Scope) -> CrossSiteRequestError | None:
        """A browser request with side effects from a page of another origin. Bodies are read as JSON whatever
        their Content-Type (Feast's client sends none, its docs use curl -d), and a page can send any body
        without a preflight (text/plain, a form, or no Content-Type at all): what a page cannot choose or forge
        is the Origin its browser sends with every cross-origin POST (and Sec-Fetch-Site). Clients that are not
        browsers send neither and are unaffected."""
        if origin is not None:
            origin = origin.strip().lower()
            if origin in self.cors_origins or _same_origin(origin, host):
                return None
        elif fetch_site is None or fetch_site.strip().lower() not in CROSS_SITE:
            return None
        shown = origin.decode("latin-1") if origin is not None else "another site"
        return CrossSiteRequestError(
            f"a browser request from {shown!r} to {scope['method']} {scope['path']}: the server accepts browser "
            "requests with side effects only from its own origin and from server.cors_origins. Add the page's "
            "origin to server.cors_origins in feature_store.yaml (with an API key), or call the server from a "
            "backend.", origin=shown,
        )

    def _too_large(self) -> RequestTooLargeError:
        return RequestTooLargeError(
            f"the request body exceeds {self.max_body_bytes:,} bytes (server.max_body_bytes); send fewer rows "
            "per request.", max_body_bytes=self.max_body_bytes,
        )

    def _limited(self, receive: Receive, body: _Body) -> Receive:
        """Count the bytes of a streamed (chunked) body too: Content-Length may be absent or lie. A client gone
        before its body arrived is a ClientDisconnectedError (499, quietly), not Starlette's ClientDisconnect,
        which would reach FastAPI's handler of unexpected errors (a 500 and a traceback in the log)."""
        received = 0

        async def wrapped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large()  # answered by the app's FeatureStoreError handler
                if not message.get("more_body", False):
                    body.pending = False
            elif message["type"] == "http.disconnect" and body.pending:
                raise ClientDisconnectedError("the client closed the connection before its request body arrived.")
            return message

        return wrapped


async def _send_error(send: Send, exc: FeatureStoreError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in WWW_AUTHENTICATE.items()] if exc.http_status == 401 else []
    await _send(send, exc.http_status, dumps(error_content(exc)), extra)


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", _JSON_BYTES), (b"content-length", str(len(body)).encode()), *(extra or ())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _same_origin(origin: bytes, host: bytes | None) -> bool:
    """Whether ``Origin: scheme://host[:port]`` names the host (and port) the request was sent to, as the
    server's own /docs page does. The scheme is not compared: a proxy in front may terminate TLS."""
    if host is None:
        return False
    _scheme, separator, authority = origin.partition(b"://")
    return bool(separator) and authority == host.strip().lower()


def _host_name(host: bytes | None) -> str:
    """'example.com:6566' -> 'example.com'; '[::1]:6566' -> '::1'."""
    if not host:
        return ""
    text = host.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].partition("]")[0]
    return text.rpartition(":")[0] if text.count(":") == 1 else text
