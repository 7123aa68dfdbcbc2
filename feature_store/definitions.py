"""Feature definitions: frozen pydantic models with no I/O.

Users build these in the Python files of a feature repo; the registry stores them as JSON
specs (``to_spec``) in which references to other objects are by name.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from feature_store.aggregations import DEFINITIONS, Aggregation, aggregation_from_spec
from feature_store.durations import format_duration, parse_duration
from feature_store.errors import DefinitionError, FeatureNotFoundError, closest, validation_problems
from feature_store.identifiers import validate_identifier
from feature_store.types import FIELD_TYPES

# Every registered function's definition, told apart by its kind: a new function module needs no change here.
if TYPE_CHECKING:
    AnyAggregation = Aggregation
else:
    AnyAggregation = Annotated[Union[tuple(DEFINITIONS.values())], Discriminator("kind")]  # noqa: UP007


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DefinitionError(f"invalid {type(self).__name__}: {validation_problems(exc)}") from exc


class Entity(_Frozen):
    """What features are about (a customer), identified by one or more join-key columns."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> Entity:
        validate_identifier(self.name, "entity name")
        if not self.join_keys:
            raise DefinitionError(f"entity {self.name!r} needs at least one join key, e.g. join_keys=['id'].")
        for key in self.join_keys:
            validate_identifier(key, f"join key of entity {self.name!r}")
        return self


class Field(_Frozen):
    """A column of a snapshot view: ``Field("age", "int64")``."""

    name: str
    dtype: str = "string"

    def __init__(self, name: str | None = None, dtype: str | None = None, /, **data: Any) -> None:
        if name is not None:
            data["name"] = name
        if dtype is not None:
            data["dtype"] = dtype
        super().__init__(**data)

    @model_validator(mode="after")
    def _check(self) -> Field:
        validate_identifier(self.name, "field name")
        if self.dtype not in FIELD_TYPES:
            raise DefinitionError(
                f"field {self.name!r}: unknown dtype {self.dtype!r}; use one of {sorted(FIELD_TYPES)}."
            )
        return self


class _Source(_Frozen):
    name: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check_names(self) -> _Source:
        validate_identifier(self.name, "source name")
        validate_identifier(self.timestamp_field, f"timestamp_field of source {self.name!r}")
        if self.created_timestamp_field is not None:
            validate_identifier(self.created_timestamp_field, f"created_timestamp_field of source {self.name!r}")
        return self


class FileSource(_Source):
    """Parquet or CSV files (globs allowed), read by DuckDB. Relative paths are relative to the repo."""

    type: Literal["file"] = "file"
    path: str
    file_format: Literal["parquet", "csv"] | None = None

    @model_validator(mode="after")
    def _format(self) -> FileSource:
        if self.file_format is None:
            fmt = "csv" if self.path.lower().endswith((".csv", ".csv.gz")) else "parquet"
            object.__setattr__(self, "file_format", fmt)
        return self


class DuckDBSource(_Source):
    """A table of the offline DuckDB database, or a SQL query over it."""

    type: Literal["duckdb"] = "duckdb"
    table: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> DuckDBSource:
        if (self.table is None) == (self.query is None):
            raise DefinitionError(f"DuckDBSource {self.name!r}: give exactly one of table= or query=.")
        if self.table is not None:
            validate_identifier(self.table, f"table of source {self.name!r}")
        return self


class SparkSource(_Source):
    """A table of the Spark session's catalog (``db.table`` allowed), or a Spark SQL query over it; read by the
    Spark engine only (offline_store type spark, docs/spark.md)."""

    type: Literal["spark"] = "spark"
    table: str | None = None
    query: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SparkSource:
        if (self.table is None) == (self.query is None):
            raise DefinitionError(f"SparkSource {self.name!r}: give exactly one of table= or query=.")
        if self.table is not None:
            for part in self.table.split("."):
                validate_identifier(part, f"table of source {self.name!r}")
        elif not self.query or not self.query.strip():
            raise DefinitionError(f"SparkSource {self.name!r}: query= is empty; give one SELECT statement.")
        return self


class PushSource(_Frozen):
    """Events pushed at run time (``store.push`` / ``POST /push``), read together with a batch source.

    Its columns and timestamp fields are the batch source's; views over it see the batch rows plus
    every pushed event, each available from the moment the push arrived.
    """

    type: Literal["push"] = "push"
    name: str
    batch_source: FileSource | DuckDBSource | SparkSource | str
    description: str = ""
    nullable: tuple[str, ...] = ()  # batch columns a push may leave out (null); every other one must be sent

    @model_validator(mode="after")
    def _check(self) -> PushSource:
        validate_identifier(self.name, "push source name")
        if self.batch_source_name == self.name:
            raise DefinitionError(f"push source {self.name!r} cannot be its own batch source; name them apart.")
        for column in self.nullable:
            validate_identifier(column, f"nullable column of push source {self.name!r}")
        return self

    @property
    def batch_source_name(self) -> str:
        return self.batch_source if isinstance(self.batch_source, str) else self.batch_source.name

    def to_spec(self) -> dict[str, Any]:
        # without nullable when empty: specs (hence plans and signatures) of push sources made before it stay as
        # they were
        spec = self.model_dump(mode="json", exclude={"batch_source", *(() if self.nullable else ("nullable",))})
        spec["batch_source"] = self.batch_source_name
        return spec


Source = Annotated[FileSource | DuckDBSource | SparkSource, Discriminator("type")]


class FeatureView(_Frozen):
    """Features of one entity from one source.

    With aggregations (``Sum``, ``Mean``, ...) it is an *aggregation view* computed over windows
    of raw events; with ``Field``s it is a *snapshot view*: the latest value of those columns.
    """

    name: str
    entities: tuple[Entity | str, ...]
    source: FileSource | DuckDBSource | SparkSource | PushSource | str
    features: tuple[AnyAggregation, ...] | tuple[Field, ...]
    hop: timedelta | None = None
    ttl: timedelta | None = None
    description: str = ""
    tags: dict[str, str] = {}
    # PSI above which `feature-store monitor` calls a feature drifted (default 0.2), by feature name
    drift_thresholds: dict[str, float] = {}

    @field_validator("features", mode="before")
    @classmethod
    def _features(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            has_aggregation = any(isinstance(item, Aggregation) for item in value)
            has_field = any(isinstance(item, Field) for item in value)
            if has_aggregation and has_field:
                raise DefinitionError(
                    "a feature view holds either aggregations (Sum, Mean, ...) or Fields, not both; "
                    "split them into two views."
                )
        return value

    @field_validator("hop", "ttl", mode="before")
    @classmethod
    def _durations(cls, value: object, info: ValidationInfo) -> timedelta | None:
        what = f"feature view {info.data.get('name')!r} {info.field_name}"
        return None if value is None else parse_duration(value, what)

    @field_serializer("hop", "ttl")
    def _dump_duration(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    @model_validator(mode="after")
    def _check(self) -> FeatureView:
        validate_identifier(self.name, "feature view name")
        if not self.entities:
            raise DefinitionError(f"feature view {self.name!r} needs at least one entity.")
        if not self.features:
            raise DefinitionError(f"feature view {self.name!r} has no features.")
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"feature view {self.name!r} defines {dupes} more than once; rename one.")
        if self.is_aggregation and self.ttl is not None:
            raise DefinitionError(
                f"feature view {self.name!r}: ttl applies to snapshot views (Fields); an aggregation view's "
                "windows already bound how far back it looks."
            )
        if not self.is_aggregation and self.hop is not None:
            raise DefinitionError(f"feature view {self.name!r}: hop applies to aggregation views only.")
        for feature, threshold in self.drift_thresholds.items():
            if feature not in names:
                raise DefinitionError(f"feature view {self.name!r}: drift_thresholds names {feature!r}, which is "
                                      f"not one of its features.{closest(feature, names)}")
            if not threshold > 0:
                raise DefinitionError(f"feature view {self.name!r}: the drift threshold of {feature!r} must be a "
                                      f"PSI above 0 (0.1 small, 0.2 the default, 0.25 large), not {threshold}.")
        return self

    @property
    def is_aggregation(self) -> bool:
        return isinstance(self.features[0], Aggregation)

    @property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(e if isinstance(e, str) else e.name for e in self.entities)

    @property
    def source_name(self) -> str:
        return self.source if isinstance(self.source, str) else self.source.name

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> Aggregation | Field:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise FeatureNotFoundError(
            f"feature view {self.name!r} has no feature {name!r}.{closest(name, self.feature_names)}",
            view=self.name,
            feature=name,
        )

    def __getitem__(self, names: list[str] | tuple[str, ...]) -> FeatureViewProjection:
        """``view[["age"]]``: a subset of this view's features, for a FeatureService."""
        for name in names:
            self.feature(name)
        return FeatureViewProjection(view=self.name, features=tuple(names))

    def to_spec(self) -> dict[str, Any]:
        # without drift_thresholds when empty: specs (hence plans) of views made before it stay as they were
        spec = self.model_dump(mode="json", exclude={"entities", "source",
                                                     *(() if self.drift_thresholds else ("drift_thresholds",))})
        spec["entities"] = list(self.entity_names)
        spec["source"] = self.source_name
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureView:
        data = dict(spec)
        features = data.pop("features")
        if features and "kind" in features[0]:
            data["features"] = tuple(aggregation_from_spec(f) for f in features)
        else:
            data["features"] = tuple(Field(**f) for f in features)
        return cls(**data)


class FeatureViewProjection(_Frozen):
    """Some features of one view, by name."""

    view: str
    features: tuple[str, ...]


class FeatureService(_Frozen):
    """A named set of features, e.g. the inputs of one model version."""

    name: str
    features: tuple[FeatureView | FeatureViewProjection, ...]
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> FeatureService:
        validate_identifier(self.name, "feature service name")
        if not self.features:
            raise DefinitionError(f"feature service {self.name!r} lists no features.")
        return self

    @property
    def projections(self) -> tuple[FeatureViewProjection, ...]:
        return tuple(
            FeatureViewProjection(view=item.name, features=item.feature_names) if isinstance(item, FeatureView)
            else item
            for item in self.features
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "features": [p.model_dump(mode="json") for p in self.projections],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureService:
        return cls(
            name=spec["name"],
            description=spec.get("description", ""),
            features=tuple(FeatureViewProjection(**p) for p in spec["features"]),
        )


Definition = Entity | FileSource | DuckDBSource | SparkSource | PushSource | FeatureView | FeatureService

KINDS: dict[type, str] = {
    Entity: "entity", FileSource: "source", DuckDBSource: "source", SparkSource: "source", PushSource: "source",
    FeatureView: "feature_view", FeatureService: "feature_service",
}


def kind_of(obj: object) -> str:
    for cls, kind in KINDS.items():
        if isinstance(obj, cls):
            return kind
    raise DefinitionError(f"{obj!r} is not a feature store definition.")


def to_spec(obj: Definition) -> dict[str, Any]:
    if isinstance(obj, FeatureView | FeatureService | PushSource):
        return obj.to_spec()
    return obj.model_dump(mode="json")


def from_spec(kind: str, spec: dict[str, Any]) -> Definition:
    if kind == "entity":
        return Entity(**spec)
    if kind == "source":
        kinds: dict[str, type[FileSource | DuckDBSource | SparkSource | PushSource]] = {
            "duckdb": DuckDBSource, "spark": SparkSource, "push": PushSource, "file": FileSource}
        return kinds.get(spec.get("type", "file"), FileSource)(**spec)
    if kind == "feature_view":
        return FeatureView.from_spec(spec)
    if kind == "feature_service":
        return FeatureService.from_spec(spec)
    raise DefinitionError(f"unknown object kind {kind!r} in a stored spec.")
