"""The feature server: a FastAPI app over a FeatureStore (online store and registry).

Handlers are thin: they validate the body, call the SDK, and encode its answer. Feature logic stays
in the SDK, so the server and ``store.get_online_features`` answer the same.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from feature_store.config import ApiKeyConfig, ServerConfig
from feature_store.errors import (
    FeatureStoreError,
    MethodNotAllowedError,
    OnlineStoreUnavailable,
    RouteNotFoundError,
    ServerNotReadyError,
)
from feature_store.monitoring.gauges import MonitoringGauges
from feature_store.server import models
from feature_store.server.auth import WWW_AUTHENTICATE, KeyRing
from feature_store.server.encode import JSON, datetime_z, error_response, json_response
from feature_store.server.handlers import OnlineFeatures, invalid, parse, push_id_of
from feature_store.server.metrics import Metrics
from feature_store.server.middleware import INTERNAL_ERROR, ServerMiddleware, route_of
from feature_store.server.runtime import RegistryDescriber, RegistryRefresher
from feature_store.store import FeatureStore

log = logging.getLogger("feature_store.server")
DOCS_STATIC = "/docs/static"

DESCRIPTION = """Online features over HTTP, wire-compatible with Feast's feature server (`/get-online-features`,
`/push`). Errors are `{"error": {"type", "message", "details"}}`. With API keys configured, send
`Authorization: Bearer <key>`: `read` for features, `write` for push; health, readiness, metrics and
these docs need no key."""


@dataclass(frozen=True)
class ServerSettings:
    api_keys: tuple[ApiKeyConfig, ...] = ()
    max_body_bytes: int = 10 * 1024 * 1024
    max_entities: int = 10_000
    registry_refresh_seconds: float = 10.0
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # empty: any Host header
    threadpool: bool = False  # reads in worker threads instead of on the event loop (see ServerConfig)

    @classmethod
    def from_config(cls, config: ServerConfig, **overrides: Any) -> ServerSettings:
        values = {name: getattr(config, name) for name in (
            "api_keys", "max_body_bytes", "max_entities", "registry_refresh_seconds", "cors_origins",
            "allowed_hosts", "threadpool")}
        return cls(**{**values, **overrides})


class FeatureServerApp(FastAPI):
    """FastAPI behind ``front`` (ServerMiddleware, and CORS when configured): HTTP requests enter there, so
    that the hot endpoint is answered before FastAPI's own layers (telemetry, error and body-limit middlewares
    cost ~50 us a request); every other request continues into FastAPI as usual."""

    front: Any = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def fastapi_call(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": models.ErrorResponse} for status in statuses}


def create_app(store: FeatureStore, settings: ServerSettings | None = None, close_store: bool = False) -> FastAPI:
    """The app; ``close_store`` closes the store when the app shuts down (the server owns it)."""
    settings = settings or ServerSettings.from_config(store.config.server)
    metrics = Metrics()
    keys = KeyRing(settings.api_keys)
    refresher = RegistryRefresher(store, settings.registry_refresh_seconds, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(refresher.start)
        # What is loaded by now (modules, the catalog) lives as long as the process: out of the garbage
        # collector's way, so that its full collections, which pause requests, have less to scan.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            refresher.stop()
            if close_store:
                store.close()

    app = FeatureServerApp(title="feature-store feature server", description=DESCRIPTION, lifespan=lifespan,
                           docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
                           openapi_tags=[{"name": "features"}, {"name": "push"}, {"name": "operations"}])
    online = OnlineFeatures(store, settings.max_entities, metrics, settings.threadpool)
    _feature_routes(app, store, online, metrics, keys.enabled)
    _operation_routes(app, store, refresher, metrics, keys)
    _docs_routes(app)
    _install_error_handlers(app, metrics)
    app.openapi = _openapi(app, keys.enabled)  # type: ignore[method-assign]
    front: Any = ServerMiddleware(app.fastapi_call, keys=keys, metrics=metrics, max_body_bytes=settings.max_body_bytes,
                                  allowed_hosts=settings.allowed_hosts, fast={"/get-online-features": online},
                                  cors_origins=settings.cors_origins)
    if settings.cors_origins:  # outermost, so that preflight requests are answered before the key check
        front = CORSMiddleware(front, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    app.front = front
    app.state.store, app.state.refresher, app.state.metrics = store, refresher, metrics
    return app


def _feature_routes(app: FastAPI, store: FeatureStore, online: OnlineFeatures, metrics: Metrics,
                    secured: bool) -> None:
    describer = RegistryDescriber(store)

    @app.post("/get-online-features", tags=["features"], response_model=None,
              responses={200: {"model": models.GetOnlineFeaturesResponse},
                         **_errors(400, 401, 403, 404, 413, 422, 503)},
              openapi_extra=_body(models.GetOnlineFeaturesRequest, secured))
    async def get_online_features(request: Request) -> Response:
        """Feature values of entities, as Feast's feature server answers them (column-major).

        The body is read as JSON whatever its Content-Type: Feast's HTTP client sends none, and Feast's
        docs use ``curl -d`` (form-urlencoded). Browsers' requests from other origins are refused (403).
        """
        # Answered by ServerMiddleware's fast path; this route documents it, and serves without the middleware.
        return Response(await online(await request.body()), media_type=JSON)

    @app.post("/push", tags=["push"], response_model=None,
              responses={200: {"model": models.PushResponse}, **_errors(401, 403, 404, 409, 413, 422, 503)},
              openapi_extra={**_body(models.PushRequest, secured), "parameters": [IDEMPOTENCY_KEY]})
    async def push(request: Request) -> Response:
        """Write rows of a push source to the online store, the offline store, or both (Feast's request).

        The body is read as JSON whatever its Content-Type, as for /get-online-features; browsers' requests
        from other origins are refused (403).

        An `Idempotency-Key` header (or the body's `push_id`) makes a retry safe: the same key again counts once
        and answers 200 with `"duplicate": true`; the same key with other rows is a 409 (docs/push.md).
        """
        arrived = time.time()
        body = parse(models.PushRequest, await request.body())
        push_id = push_id_of(request.headers.get("idempotency-key"), body.push_id)
        # In a thread, even for one row, though the hop costs 150-300 us: a push's Redis transaction (WATCH, reads,
        # MULTI/EXEC) blocks, and on the event loop a Redis that hangs would stall every request for a timeout
        # per push.
        result = await run_in_threadpool(partial(store.push, body.push_source_name, body.df, body.to,
                                                 push_id=push_id))
        metrics.push_lag.observe(max(0.0, result.pushed_at.timestamp() - arrived))
        metrics.pushed_rows.inc(0 if result.duplicate else result.rows)
        return json_response({"rows": result.rows, "online_updates": result.online_updates,
                              "pushed_at": datetime_z(result.pushed_at), "duplicate": result.duplicate})

    @app.get("/features", tags=["features"], response_model=models.RegistryResponse,
             responses=_errors(401, 403, 503), openapi_extra=_security(secured))
    async def features() -> Response:
        """The registry: entities, feature views with their features and types, feature services."""
        return json_response(await run_in_threadpool(describer.describe))

    @app.get("/features/{view}", tags=["features"], response_model=models.FeatureViewInfo,
             responses=_errors(401, 403, 404, 503), openapi_extra=_security(secured))
    async def feature_view(view: str) -> Response:
        """One feature view; 404 when there is none of that name."""
        return json_response(await run_in_threadpool(describer.view, view))


def _operation_routes(app: FastAPI, store: FeatureStore, refresher: RegistryRefresher, metrics: Metrics,
                      keys: KeyRing) -> None:
    readiness = Readiness(store, refresher)
    gauges = MonitoringGauges(store, metrics)

    @app.get("/health", tags=["operations"], response_model=models.HealthResponse)
    async def health() -> Response:
        """Liveness: 200 while the process runs."""
        return json_response({"status": "ok"})

    @app.get("/ready", tags=["operations"], response_model=models.ReadyResponse, responses=_errors(503))
    async def ready(request: Request) -> Response:
        """Readiness: a registry is loaded and the online store answers; else 503 saying which. Why (with
        addresses) only to a caller with the read scope: probes need no key; the server log has it too."""
        detailed = keys.check(request.headers.get("authorization", "").encode("latin-1"), "read") is None
        return json_response(await run_in_threadpool(readiness.check, detailed))

    @app.get("/metrics", tags=["operations"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
    async def metrics_endpoint() -> Response:
        """Prometheus metrics: requests, latencies, entities per request, online store errors, push lag; served-log
        rows and drops, each view's watermark and last-push age, each feature's last drift score."""
        await run_in_threadpool(gauges.update)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


class Readiness:
    """GET /ready. A failure's cause names hosts, ports and URLs of the registry and the online store: it goes
    to the log (once per distinct cause, as probes call every few seconds) and to callers with the read scope,
    while an anonymous probe learns only which part is not ready."""

    def __init__(self, store: FeatureStore, refresher: RegistryRefresher) -> None:
        self.store, self.refresher = store, refresher
        self._logged: str | None = None

    def check(self, detailed: bool) -> dict[str, Any]:
        if self.refresher.version is None:
            cause = self.refresher.last_error
            why = f": {getattr(cause, 'message', cause)}" if cause else "."
            raise self._not_ready("no registry loaded yet", why, cause, detailed)
        online = self.store.online.store
        try:
            online.ping()
        except FeatureStoreError as exc:
            raise self._not_ready("the online store does not answer", f": {exc.message}", exc, detailed) from exc
        self._logged = None
        return {"status": "ready", "project": self.store.project, "registry_version": self.refresher.version,
                "online_store": online.name}

    def _not_ready(self, what: str, why: str, cause: Exception | None, detailed: bool) -> ServerNotReadyError:
        kind = type(cause).__name__ if cause else None
        if what + why != self._logged:  # the registry refresher logs its own failures already
            self._logged = what + why
            log.warning("not ready: %s%s", what, why)
        if detailed:
            return ServerNotReadyError(what + why, cause=kind)
        return ServerNotReadyError(f"{what}{f' ({kind})' if kind else ''}; the server log says why (or send an API "
                                   "key with the read scope).", cause=kind)


def _docs_routes(app: FastAPI) -> None:
    """Swagger UI at /docs from files this package ships (static/swagger-ui), not from a CDN as FastAPI's own
    page loads them: the documentation works offline and behind firewalls, and the page runs no third-party
    script. No online validator either (validatorUrl: null): the page makes no request beyond this server."""
    app.mount(DOCS_STATIC, StaticFiles(directory=Path(__file__).parent / "static" / "swagger-ui"), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(FeatureStoreError)
    async def feature_store_error(request: Request, exc: FeatureStoreError) -> Response:
        if isinstance(exc, OnlineStoreUnavailable):
            metrics.online_errors.labels(route_of(request.url.path)[0]).inc()
        return error_response(exc, WWW_AUTHENTICATE if exc.http_status == 401 else None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return error_response(invalid(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(RouteNotFoundError(f"no endpoint {request.url.path!r}; see /docs.",
                                                     path=request.url.path))
        if exc.status_code == 405:
            return error_response(MethodNotAllowedError(
                f"{request.method} is not allowed on {request.url.path!r}; see /docs.", method=request.method,
            ), headers=dict(exc.headers or {}))
        content = {"error": {"type": "HTTPError", "message": str(exc.detail), "details": {}}}
        return json_response(content, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_response(INTERNAL_ERROR, 500)


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                   "description": "The push's idempotency key (push id), e.g. a UUID: a retry with the same key counts "
                                  "once and answers `duplicate: true`; the same key with other rows is a 409."}


def _security(enabled: bool) -> dict[str, Any]:
    return {"security": [{"bearer": []}]} if enabled else {}


def _body(model: type[BaseModel], secured: bool) -> dict[str, Any]:
    """The request body in the OpenAPI document: handlers parse it themselves (one pass, in Rust)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {JSON: {"schema": ref}}}, **_security(secured)}


def _openapi(app: FastAPI, secured: bool) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes,
                                 tags=app.openapi_tags)
            _, defs = models_json_schema(
                [(models.GetOnlineFeaturesRequest, "validation"), (models.PushRequest, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(defs.get("$defs", {}))
            if secured:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
