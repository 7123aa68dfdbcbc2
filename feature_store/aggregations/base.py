"""What every aggregation function is: a frozen definition users write, and the semantics behind its kind.

A function's module holds both: its definition class (``Sum("amount", window="7d")``, a pydantic model with no
I/O) and its :class:`AggregationFunction` (which partial aggregates it keeps per tile, how a value is finished
from them for many entities, for one entity and in a training set, and what an empty window gives). Modules
register their function with :func:`register`; everything else finds a function by the definition's ``kind``
(:func:`function_of`), so adding a function touches no other module.

The finishers work on a small surface of the stored tiles (:class:`ManyTiles`, :class:`OneTiles`) and of the
offline evaluation (:class:`OfflineWindow`); online/tiles and offline/kernel implement them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from feature_store.aggregations.partials import Partial
from feature_store.durations import default_hop, format_duration, parse_duration
from feature_store.errors import DefinitionError, validation_problems
from feature_store.identifiers import validate_identifier

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from feature_store.query import FeatureRequest

Duration = timedelta | str | None  # a timedelta, or "90d", "12h", "30m", "45s", "2w"; None: unbounded


class Aggregation(BaseModel):
    """A windowed aggregation over one column of an event source (or over rows, for Count)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    function: ClassVar[str]  # the kind, also the middle of default names
    needs_column: ClassVar[bool] = True

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


# --- what the finishers read ----------------------------------------------------------------------------


class Selection(Protocol):
    """The tiles of a read's batch inside one window."""

    mask: np.ndarray  # per tile
    inside: np.ndarray  # per entity: whether it has a tile in the window

    def firsts(self, batch: ManyTiles) -> list[int]: ...


class ManyTiles(Protocol):
    """One group's tiles of many entities as a matrix (online/tiles/batch.py)."""

    counts: np.ndarray  # tiles per entity
    heads: np.ndarray  # each entity's first tile
    rows: list[int]

    @property
    def index(self) -> np.ndarray: ...

    def column(self, field: int) -> np.ndarray: ...

    def keep(self, mask: np.ndarray, *fields: int) -> np.ndarray: ...

    def objects(self, field: int) -> list[Sequence[Any]]: ...

    def per_entity(self, ufunc: np.ufunc, values: np.ndarray) -> np.ndarray: ...


class OneTiles(Protocol):
    """One entity's tiles of a group as Python lists (online/tiles/entity.py)."""

    def column(self, field: int, first: int = 0) -> list[Any]: ...


class OfflineWindow(Protocol):
    """A hop group's tiles and events for a training set's queries (offline/kernel/window.py)."""

    n: int
    q_kid: np.ndarray
    q_t: np.ndarray
    t_kid: np.ndarray
    t_hi: np.ndarray
    ev_ts: np.ndarray
    ev_cr: np.ndarray
    events: dict[str, pa.Array]

    def tile(self, field: str) -> Any: ...

    def ranges(self, window: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def window_events(self, window: int | None) -> tuple[np.ndarray, np.ndarray]: ...

    def valid(self, column: str) -> np.ndarray: ...

    def raw_values(self, column: str, rq: np.ndarray, re: np.ndarray) -> tuple[np.ndarray, pa.Array]: ...


class Fields(Protocol):
    """Where a group keeps each field of its partials: ``at(field)`` its index, ``storage(index)`` INT, FLOAT or
    OBJECT."""

    def at(self, field: str) -> int: ...

    def storage(self, index: int) -> str: ...


ManyFinisher = Callable[[ManyTiles, Selection], list[Any]]  # a value per entity of the batch
OneFinisher = Callable[[OneTiles, int], Any]  # an entity's tiles, its first tile in the window -> value


class AggregationFunction:
    """The semantics of one kind of aggregation; subclasses live in one module each, with their definition."""

    kind: ClassVar[str]
    definition: ClassVar[type[Aggregation]]
    input_types: ClassVar[frozenset[str] | None] = None  # engine-neutral types (feature_store/types.py); None: any
    # Whether training sets read its partials from materialized tiles (else from the window's events).
    offline_tiles: ClassVar[bool] = True

    def partials(self, feature: Aggregation, input_type: str | None) -> tuple[Partial, ...]:
        raise NotImplementedError

    def output_type(self, feature: Aggregation, input_type: str | None) -> str:
        raise NotImplementedError

    def empty(self, output_type: str) -> Any:
        """The value of a window without events."""
        return None

    def finish_many(self, feature: Aggregation, fields: Fields, output_type: str) -> ManyFinisher:
        raise NotImplementedError

    def finish_one(self, feature: Aggregation, fields: Fields, output_type: str) -> OneFinisher:
        raise NotImplementedError

    def offline(self, window: OfflineWindow, request: FeatureRequest) -> pa.Array:
        raise NotImplementedError


FUNCTIONS: dict[str, AggregationFunction] = {}
DEFINITIONS: dict[str, type[Aggregation]] = {}


def register(function: AggregationFunction) -> AggregationFunction:
    """Make a function known by its kind: definitions, the registry, every engine and store find it here."""
    if function.kind in FUNCTIONS:
        raise ValueError(f"aggregation kind {function.kind!r} is registered twice")
    FUNCTIONS[function.kind] = function
    DEFINITIONS[function.kind] = function.definition
    return function


def function_of(feature: Aggregation) -> AggregationFunction:
    return FUNCTIONS[feature.kind]


def aggregation_from_spec(spec: dict[str, Any]) -> Aggregation:
    kind = spec.get("kind")
    if kind not in DEFINITIONS:
        raise DefinitionError(f"unknown aggregation kind {kind!r} in a stored spec; known: {sorted(DEFINITIONS)}.")
    return DEFINITIONS[kind].model_validate(spec)
