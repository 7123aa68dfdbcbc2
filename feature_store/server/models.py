"""Request and response bodies of the feature server, as pydantic models.

Requests are validated with these models (``model_validate_json``: parsing and validation in one
pass, in Rust). Responses of the hot endpoints are built as plain dicts and encoded with orjson;
their models here only describe them in the OpenAPI document.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

Status = Literal["PRESENT", "NOT_FOUND", "NULL_VALUE", "OUTSIDE_MAX_AGE"]


def _integral_number(value: Any) -> Any:
    """1.0 is an integer to JSON Schema (and so to the OpenAPI document): take it as 1, as 1.5 is not."""
    return int(value) if type(value) is float and value.is_integer() else value


# Integer keys are 64-bit in every store; None is refused by the SDK with a message naming the key.
EntityValue = (Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1), BeforeValidator(_integral_number)]
               | StrictStr | None)


class _Request(BaseModel):
    # Unknown fields are ignored, as Feast's server does: Feast clients send allow_registry_cache and others.
    model_config = ConfigDict(extra="ignore", frozen=True)


# What the model validator below enforces, said in the document: a body with both, or neither (null counts as
# absent), is not one the schema allows.
EXACTLY_ONE_OF_FEATURES_OR_SERVICE: list[JsonValue] = [
    {"required": ["features"], "properties": {"features": {"type": "array"}}},
    {"required": ["feature_service"], "properties": {"feature_service": {"type": "string"}}},
]
# ISO-8601 with a date and a time: what `format: date-time` promises (a naive time is read as UTC). pydantic
# alone would also take numbers and digit strings as Unix times, and a date without a time.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


class GetOnlineFeaturesRequest(_Request):
    """Feast's request: features (``view:feature`` references) or a feature service, for entity columns."""

    model_config = ConfigDict(extra="ignore", frozen=True,
                              json_schema_extra={"oneOf": EXACTLY_ONE_OF_FEATURES_OR_SERVICE})

    entities: dict[str, list[EntityValue]] = Field(
        description="Join-key columns of equal length: {\"customer_id\": [1, 2]}.",
        examples=[{"customer_id": [1, 2]}],
    )
    features: Annotated[list[StrictStr], Field(min_length=1)] | None = Field(
        None, description="'view:feature' references; give this or feature_service.",
        examples=[["customer_spend:avg_spend_90d", "customer_profile:age"]],
    )
    feature_service: StrictStr | None = Field(None, description="A feature service name; or give features.")
    full_feature_names: bool = Field(False, description="Name output columns 'view__feature'.")
    now: datetime | None = Field(
        None, description="Read as of this ISO-8601 date and time (replay, tests), e.g. '2026-11-27T10:00:00Z'; "
        "a time without offset is UTC. Default: now.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> GetOnlineFeaturesRequest:
        if (self.features is None) == (self.feature_service is None):
            raise ValueError("give exactly one of 'features' and 'feature_service'")
        return self

    @field_validator("now", mode="before")
    @classmethod
    def _date_time_text(cls, value: Any) -> Any:
        if value is None or isinstance(value, datetime) or (isinstance(value, str) and _DATE_TIME.match(value)):
            return value
        raise ValueError("now must be an ISO-8601 date and time string, e.g. '2026-11-27T10:00:00Z'")

    @field_validator("now")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class FeatureVector(BaseModel):
    values: list[Any] = Field(description="One value per entity row.")
    statuses: list[Status]
    event_timestamps: list[str] = Field(
        description="ISO-8601 UTC ('...Z'); 1970-01-01T00:00:00Z where there is none (join keys, missing values)."
    )


class ResponseMetadata(BaseModel):
    feature_names: list[str] = Field(description="Join keys first, then features, in request order.")


class GetOnlineFeaturesResponse(BaseModel):
    """Feast's response: column-major, one result per name in metadata.feature_names."""

    metadata: ResponseMetadata
    results: list[FeatureVector]


class PushRequest(_Request):
    """Feast's push request: rows for a push source, as columns."""

    push_source_name: StrictStr
    df: dict[str, list[Any]] = Field(
        description="Columns of equal length: join keys, the event timestamp and the source's columns.",
        examples=[{"customer_id": [1], "event_timestamp": ["2026-11-27T10:00:00Z"], "amount": [12.5]}],
    )
    to: Literal["online", "offline", "online_and_offline"] = "online_and_offline"
    push_id: StrictStr | None = Field(
        None, description="An idempotency key (e.g. a UUID per push): a retry with the same id counts once. The "
        "Idempotency-Key header does the same.", examples=["5b0c7f1e-1f7a-4a57-9a3c-3f9b8c2d8e11"])


class PushResponse(BaseModel):
    rows: int = Field(description="Rows pushed.")
    online_updates: int = Field(description="Online values written: one per entity and view over the source.")
    pushed_at: str = Field(description="When the rows were written (ISO-8601 UTC).")
    duplicate: bool = Field(False, description="True when the push id was pushed before: a retry, counted once.")


class ErrorBody(BaseModel):
    type: str = Field(description="The error class, e.g. FeatureNotFoundError.", examples=["FeatureNotFoundError"])
    message: str = Field(description="What failed, on which object, and how to fix it.")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    error: ErrorBody


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    project: str
    registry_version: int
    online_store: str


class FeatureInfo(BaseModel):
    name: str
    reference: str = Field(description="'view:feature', as requests name it.")
    type: str = Field(description="The DuckDB type of its values, e.g. DOUBLE, BIGINT, VARCHAR.")
    function: str = Field(description="The aggregation (sum, mean, ...), or 'latest' for a snapshot field.")
    column: str | None = Field(None, description="The source column it reads (None: Count of rows).")
    window: str | None = Field(None, description="Aggregation window, e.g. '90d'; None: unbounded or snapshot.")
    hop: str | None = None


class FeatureViewInfo(BaseModel):
    name: str
    kind: Literal["aggregation", "snapshot"]
    entities: list[str]
    join_keys: list[str]
    source: str
    ttl: str | None = None
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    features: list[FeatureInfo]


class EntityInfo(BaseModel):
    name: str
    join_keys: list[str]
    description: str = ""


class FeatureServiceInfo(BaseModel):
    name: str
    description: str = ""
    features: list[str] = Field(description="'view:feature' references.")


class PushSourceInfo(BaseModel):
    name: str
    batch_source: str
    description: str = ""


class RegistryResponse(BaseModel):
    project: str
    registry_version: int
    entities: list[EntityInfo]
    feature_views: list[FeatureViewInfo]
    feature_services: list[FeatureServiceInfo]
    push_sources: list[PushSourceInfo]
