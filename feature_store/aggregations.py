"""Typed aggregation objects: ``Sum("amount", window="7d")`` rather than strings.

Each class says which per-tile partial aggregates it needs and how a value is finished from
them, so the offline SQL compiler and the online reader share one description.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from feature_store.durations import default_hop, format_duration, parse_duration
from feature_store.errors import DefinitionError, validation_problems
from feature_store.identifiers import validate_identifier

Duration = timedelta | str | None  # a timedelta, or "90d", "12h", "30m", "45s", "2w"; None: unbounded

NUMERIC_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
     "FLOAT", "DOUBLE", "DECIMAL"}
)
INTEGER_TYPES = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
ORDERABLE_TYPES = NUMERIC_TYPES | {"VARCHAR", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "BOOLEAN"}


def base_type(duckdb_type: str) -> str:
    """DECIMAL(18,2) -> DECIMAL, TIMESTAMP_NS -> TIMESTAMP; what the type checks compare."""
    name = duckdb_type.split("(")[0].strip().upper()
    if name.startswith("TIMESTAMP"):  # TIMESTAMP_NS, TIMESTAMP_MS, TIMESTAMPTZ_NS, ...
        return "TIMESTAMP WITH TIME ZONE" if "TZ" in name or "TIME ZONE" in name else "TIMESTAMP"
    return name


class Aggregation(BaseModel):
    """A windowed aggregation over one column of an event source (or over rows, for Count)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    function: ClassVar[str]
    needs_column: ClassVar[bool] = True
    input_types: ClassVar[frozenset[str] | None] = None  # None: any type
    partials: ClassVar[tuple[str, ...]]

    kind: str
    column: str | None = None
    window: timedelta | None
    name: str = ""
    hop: timedelta | None = None

    def __init__(self, column: str | None = None, **data: Any) -> None:
        if column is not None:
            data["column"] = column
        data.setdefault("kind", self.function)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise DefinitionError(f"invalid {type(self).__name__}: {validation_problems(exc)}") from exc

    @field_validator("window", "hop", mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> timedelta | None:
        column = info.data.get("column")
        what = f"{cls.__name__}({column!r})" if column else f"{cls.__name__}()"
        return None if value is None else parse_duration(value, f"{what} {info.field_name}")

    @field_serializer("window", "hop")
    def _dump_duration(self, value: timedelta | None) -> str | None:
        return None if value is None else format_duration(value)

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        if self.needs_column and not self.column:
            raise DefinitionError(
                f"{type(self).__name__} needs a column: write {type(self).__name__}(\"amount\", window=...)."
            )
        if self.column is not None:
            validate_identifier(self.column, f"{type(self).__name__} column")
        if not self.name:
            object.__setattr__(self, "name", self.default_name())
        validate_identifier(self.name, "feature name")
        return self

    def default_name(self) -> str:
        prefix = f"{self.column}_" if self.column else ""
        return f"{prefix}{self.function}_{format_duration(self.window)}"

    def effective_hop(self, view_hop: timedelta | None) -> timedelta:
        return self.hop or view_hop or default_hop(self.window)

    def output_type(self, input_type: str | None) -> str:
        """The DuckDB type of the finished value (decimals are read as DOUBLE)."""
        if input_type and base_type(input_type) in ("DECIMAL", "HUGEINT"):
            return "DOUBLE"
        return input_type or "BIGINT"


class Count(Aggregation):
    """Number of events in the window (or of non-null values of ``column``); 0 when none."""

    function: ClassVar[str] = "count"
    needs_column: ClassVar[bool] = False
    partials: ClassVar[tuple[str, ...]] = ("n",)
    kind: Literal["count"] = "count"

    def __init__(self, column: str | None = None, *, window: Duration, name: str = "",
                 hop: Duration | None = None, **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)

    def output_type(self, input_type: str | None) -> str:
        return "BIGINT"


class Sum(Aggregation):
    """Sum of non-null values; 0 when none."""

    function: ClassVar[str] = "sum"
    input_types: ClassVar[frozenset[str] | None] = NUMERIC_TYPES
    partials: ClassVar[tuple[str, ...]] = ("sum",)
    kind: Literal["sum"] = "sum"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)

    def output_type(self, input_type: str | None) -> str:
        return "BIGINT" if input_type and base_type(input_type) in INTEGER_TYPES else "DOUBLE"


class Mean(Aggregation):
    """Mean of non-null values; null when none."""

    function: ClassVar[str] = "mean"
    input_types: ClassVar[frozenset[str] | None] = NUMERIC_TYPES
    partials: ClassVar[tuple[str, ...]] = ("n", "sum")
    kind: Literal["mean"] = "mean"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)

    def output_type(self, input_type: str | None) -> str:
        return "DOUBLE"


class Min(Aggregation):
    """Smallest non-null value; null when none."""

    function: ClassVar[str] = "min"
    input_types: ClassVar[frozenset[str] | None] = ORDERABLE_TYPES
    partials: ClassVar[tuple[str, ...]] = ("min",)
    kind: Literal["min"] = "min"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class Max(Aggregation):
    """Largest non-null value; null when none."""

    function: ClassVar[str] = "max"
    input_types: ClassVar[frozenset[str] | None] = ORDERABLE_TYPES
    partials: ClassVar[tuple[str, ...]] = ("max",)
    kind: Literal["max"] = "max"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class Last(Aggregation):
    """Value of the latest event by (timestamp, created) whose value is not null; null when none."""

    function: ClassVar[str] = "last"
    partials: ClassVar[tuple[str, ...]] = ("last",)
    kind: Literal["last"] = "last"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)


class StdDev(Aggregation):
    """Sample standard deviation (n-1) of non-null values; null when fewer than two."""

    function: ClassVar[str] = "stddev"
    input_types: ClassVar[frozenset[str] | None] = NUMERIC_TYPES
    partials: ClassVar[tuple[str, ...]] = ("n", "mean", "m2")
    kind: Literal["stddev"] = "stddev"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)

    def output_type(self, input_type: str | None) -> str:
        return "DOUBLE"


class CountDistinct(Aggregation):
    """Number of distinct non-null values; 0 when none."""

    function: ClassVar[str] = "count_distinct"
    partials: ClassVar[tuple[str, ...]] = ("distinct",)
    kind: Literal["count_distinct"] = "count_distinct"

    def __init__(self, column: str, *, window: Duration, name: str = "", hop: Duration | None = None,
                 **data: Any) -> None:
        super().__init__(column, window=window, name=name, hop=hop, **data)

    def output_type(self, input_type: str | None) -> str:
        return "BIGINT"


AGGREGATIONS: dict[str, type[Aggregation]] = {
    cls.function: cls for cls in (Count, Sum, Mean, Min, Max, Last, StdDev, CountDistinct)
}


def aggregation_from_spec(spec: dict[str, Any]) -> Aggregation:
    kind = spec.get("kind")
    if kind not in AGGREGATIONS:
        raise DefinitionError(f"unknown aggregation kind {kind!r} in a stored spec; known: {sorted(AGGREGATIONS)}.")
    return AGGREGATIONS[kind].model_validate(spec)
