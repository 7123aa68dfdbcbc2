"""JSON bodies of the feature server: orjson, and Feast's column-major online response.

Kept free of FastAPI so that the hot path is plain functions over the SDK's ``OnlineResponse``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from starlette.responses import Response

from feature_store.errors import FeatureStoreError
from feature_store.monitoring.served_spool import dumps as dumps  # one JSON encoding: bodies, their log
from feature_store.online.read.reader import OnlineResponse

EPOCH_Z = "1970-01-01T00:00:00Z"  # what Feast answers where a value has no event time
JSON = "application/json"


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status_code, media_type=JSON, headers=headers)


def error_content(exc: FeatureStoreError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


def error_response(exc: FeatureStoreError, headers: dict[str, str] | None = None) -> Response:
    return json_response(error_content(exc), exc.http_status, headers)


def iso_z(micros: int) -> str:
    """Epoch microseconds as ISO-8601 UTC with a Z, fractions as protobuf's JSON writes them (0, 3 or 6
    digits), so Feast clients parse it with ``datetime.fromisoformat(s.replace("Z", "+00:00"))``."""
    seconds, fraction = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction == 0:
        return text + "Z"
    if fraction % 1000 == 0:
        return f"{text}.{fraction // 1000:03d}Z"
    return f"{text}.{fraction:06d}Z"


def datetime_z(value: datetime) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return iso_z(int(value.timestamp()) * 1_000_000 + value.microsecond)


def iso_z_many(micros: Sequence[int]) -> list[str]:
    """``iso_z`` of many times at once: numpy formats them in C (a few times faster from ~20 values on)."""
    if len(micros) < 20:
        return [iso_z(us) for us in micros]
    texts: list[str] = np.datetime_as_string(np.array(micros, dtype="datetime64[us]"), unit="us").tolist()
    out = []
    for us, text in zip(micros, texts, strict=True):
        fraction = us % 1_000_000
        out.append(text[:-7] + "Z" if fraction == 0 else text[:-3] + "Z" if fraction % 1000 == 0 else text + "Z")
    return out


def online_body(response: OnlineResponse) -> bytes:
    """Feast's response: ``metadata.feature_names`` (join keys first) and one result per name, each with
    values, statuses and event timestamps indexed by entity row. Join-key columns are PRESENT with the
    epoch as timestamp, as Feast's server answers them."""
    columns = response.entity_columns
    n = len(next(iter(columns.values()))) if columns else 0
    key_statuses, key_stamps = ["PRESENT"] * n, [EPOCH_Z] * n
    results: list[dict[str, Any]] = [
        {"values": values, "statuses": key_statuses, "event_timestamps": key_stamps} for values in columns.values()
    ]
    # Features of one view (or one window) share their stamps list: format each time once, each list once.
    lists = {id(stamps): stamps for stamps in response.stamps_us.values()}
    distinct = list({us for stamps in lists.values() for us in stamps if us is not None})
    text: dict[int | None, str] = dict(zip(distinct, iso_z_many(distinct), strict=True))
    text[None] = EPOCH_Z
    formatted = {key: [text[us] for us in stamps] for key, stamps in lists.items()}
    for name, values in response.values.items():
        results.append({"values": values, "statuses": response.statuses[name],
                        "event_timestamps": formatted[id(response.stamps_us[name])]})
    return dumps({"metadata": {"feature_names": [*columns, *response.values]}, "results": results})
