"""The work behind the feature server's endpoints, free of FastAPI: body bytes in, JSON bytes out.

The hot endpoint, POST /get-online-features, is answered by ``ServerMiddleware`` calling ``OnlineFeatures``
directly: FastAPI's routing and dependency solving cost about 80 us a request, a fifth of a read.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from feature_store.errors import InvalidRequestError, PushDataError, RequestTooLargeError
from feature_store.server.encode import online_body
from feature_store.server.metrics import Metrics
from feature_store.server.models import GetOnlineFeaturesRequest
from feature_store.store import FeatureStore

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Parse and validate in one pass (pydantic's Rust JSON parser); errors become a 422 naming the fields."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid(exc.errors(include_url=False, include_input=False)) from None


def invalid(errors: Any) -> InvalidRequestError:
    problems = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
                for e in errors]
    summary = "; ".join(f"{'.'.join(p['loc']) or 'body'}: {p['msg']}" for p in problems[:5])
    return InvalidRequestError(f"invalid request body: {summary}", errors=problems)


class OnlineFeatures:
    """POST /get-online-features: Feast's request in, Feast's response out, values from the SDK."""

    def __init__(self, store: FeatureStore, max_entities: int, metrics: Metrics, threadpool: bool) -> None:
        self.store, self.max_entities, self.metrics, self.threadpool = store, max_entities, metrics, threadpool

    async def __call__(self, body: bytes) -> bytes:
        request = parse(GetOnlineFeaturesRequest, body)
        rows = max((len(v) for v in request.entities.values()), default=0)
        if rows > self.max_entities:
            raise RequestTooLargeError(
                f"{rows:,} entity rows in one request; the server accepts at most {self.max_entities:,} "
                "(server.max_entities): split the request.", rows=rows, max_entities=self.max_entities,
            )
        self.metrics.entities.observe(rows)
        # A thread hop costs 150-300 us on a 2-core machine, as much as the read itself: reads run on the
        # event loop unless configured otherwise (server.threadpool).
        if self.threadpool:
            return await run_in_threadpool(self.read, request)
        return await self.store.online_body_async(self._features(request), request.entities,
                                                  request.full_feature_names, request.now, online_body)

    def read(self, request: GetOnlineFeaturesRequest) -> bytes:
        return self.store.online_body(self._features(request), request.entities, request.full_feature_names,
                                      request.now, online_body)

    def _features(self, request: GetOnlineFeaturesRequest) -> Any:
        if request.feature_service is not None:
            # From the serving catalog, not store.get_feature_service: a request never reads the registry.
            return self.store.serving_catalog()[1].service(request.feature_service)
        return request.features


def push_id_of(header: str | None, field: str | None) -> str | None:
    """A push's idempotency key: the Idempotency-Key header or the body's push_id (the same when both are sent)."""
    if header is not None and field is not None and header != field:
        raise PushDataError(  # not InvalidRequestError: the OpenAPI document allows both, it cannot say "equal"
            f"the Idempotency-Key header ({header[:60]!r}) and the body's push_id ({field[:60]!r}) differ; send one "
            "key per push, in either place.", header=header[:200], push_id=field[:200])
    return header if header is not None else field
