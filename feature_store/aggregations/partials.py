"""Partial aggregates: the shared vocabulary of tiles, offline and online alike.

A tile (the events of one entity in one hop-sized interval) keeps partial aggregates from which every
function's value over a window is finished: a count, a sum, a minimum, the latest value with its times, ...
A :class:`Partial` names one (its kind, over which column); its :class:`PartialKind` says everything about it:

* its *fields*, the stored columns (``n__amount``, ``sum__amount``, ``last__c``/``lastt__c``/``lastc__c``), the
  same names in offline tile tables and in online values;
* how each field is stored online: an int64 word (INT), a float64 word (FLOAT), or a msgpack value (OBJECT);
* how a field is computed over a tile's events, as an engine-neutral :class:`Compute` each engine compiles
  (DuckDB to SQL aggregates), and how two tiles' fields combine (:meth:`PartialKind.combine`, for engines that
  merge stored tiles with new ones in SQL);
* one event's partial (pushes), two partials merged (pushes, in Python), and the vectorized single-event
  partials and stored-tile columns the offline kernel reads.

Function modules may register kinds of their own (:func:`register_kind`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from feature_store import types

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

INT, FLOAT, OBJECT = "i", "f", "o"  # how a field is stored online: int64 word, float64 word, msgpack value
I64_MIN = -(2**63)

Index = Callable[[str], int]  # a field's position in a group's row of fields


@dataclass(frozen=True)
class Partial:
    """One partial aggregate of a tile: of ``kind`` (a key of KINDS), over ``column`` (None: over rows)."""

    kind: str
    column: str | None = None
    param: int | float | None = None  # what parametrizes the kind (a k, a sketch's size or accuracy)

    @property
    def of(self) -> PartialKind:
        return KINDS[self.kind]

    @property
    def fields(self) -> tuple[str, ...]:
        return self.of.fields(self)

    def storage(self, input_type: str | None) -> tuple[str, ...]:
        return self.of.storage(self, input_type)

    @property
    def needs(self) -> tuple[Partial, ...]:
        """Partials whose fields this one reads when it merges (a mean and M2 read their count)."""
        return self.of.needs(self)


@dataclass(frozen=True)
class Compute:
    """An aggregate over a tile's events, for an engine to compile: ``op`` over ``column``.

    ops: ``max_ts`` (latest event time), ``count`` (non-null values; rows when column is None), ``sum``, ``min``,
    ``max``, ``avg``, ``m2`` (sum of squared deviations from the mean), ``latest`` (of the latest (ts, created,
    value) among non-null values: its value ``v``, time ``t`` or created time ``c``, as ``part``), ``distinct``
    (the list of distinct non-null values), ``top_latest`` (the ``param`` latest (ts, created, value) triples of
    non-null values, latest first) and ``kernel`` (computed by the kind's own numpy code, :meth:`PartialKind.kernel`).
    """

    op: str
    column: str | None = None
    part: str | None = None
    param: int | float | None = None


def _word(input_type: str | None) -> str:
    """How a value of this type is stored: as itself in an int64 or float64 word, else as an object."""
    kind = types.value_type(input_type or "")
    return INT if kind in types.WORD_INTEGERS else FLOAT if types.is_float(kind) else OBJECT


class PartialKind:
    """The meaning of one kind of partial; one instance per kind, in KINDS."""

    name: ClassVar[str]
    prefixes: ClassVar[tuple[str, ...]]  # of its fields' names: prefix + "__" + column

    def fields(self, partial: Partial) -> tuple[str, ...]:
        tag = "" if partial.param is None else _tag(partial.param)
        return tuple(f"{prefix}{tag}__{partial.column or ''}" for prefix in self.prefixes)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        raise NotImplementedError

    def needs(self, partial: Partial) -> tuple[Partial, ...]:
        return ()

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        """Per field, its aggregate over a tile's events."""
        raise NotImplementedError

    def combine(self, partial: Partial) -> tuple[str, ...] | None:
        """Per field, how two tiles' values of it combine in an engine's SQL: ``add``, ``min``, ``max``, or
        ``latest`` (the (v, t, c) of the later of the two); None when it cannot (the engine then computes the
        group from events)."""
        return None

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        """The fields of one event's partial (a pushed event)."""
        raise NotImplementedError

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        """Into ``out``, this partial's fields of two disjoint sets of events (rows ``a`` and ``b`` of a group's
        fields); fields of other partials are read from ``a`` and ``b``, never from ``out``."""
        raise NotImplementedError

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        """The field for the single-event tiles ``events`` of an offline window (numpy, or Arrow for objects)."""
        raise NotImplementedError

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        """A materialized tile table's column of the field, as the offline kernel reads it."""
        raise NotImplementedError

    def kernel(self, partial: Partial, values: pa.Array, ts: np.ndarray, created: np.ndarray,
               starts: np.ndarray) -> list[Any]:
        """For ``kernel`` computes: the field per group of events (``values`` sorted by group, each group from
        ``starts[i]`` to ``starts[i + 1]``)."""
        raise NotImplementedError


def _tag(param: int | float) -> str:
    """A parameter as it appears in field names: 5 -> '5', 0.01 -> '0_01'."""
    text = f"{param:g}" if isinstance(param, float) else str(param)
    return text.replace(".", "_").replace("-", "m")


KINDS: dict[str, PartialKind] = {}


def register_kind(kind: PartialKind) -> PartialKind:
    if kind.name in KINDS:
        raise ValueError(f"partial kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def _np(array: pa.Array | pa.ChunkedArray, fill: object = None) -> np.ndarray:
    import pyarrow.compute as pc

    if fill is not None:
        array = pc.fill_null(array, fill)
    return array.to_numpy(zero_copy_only=False)


# --- the kinds ------------------------------------------------------------------------------------------


class MaxTs(PartialKind):
    """The latest event time of the tile: every group keeps it, for event timestamps and expiry."""

    name = "maxts"
    prefixes = ("maxts",)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (INT,)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("max_ts"),)

    def combine(self, partial: Partial) -> tuple[str, ...]:
        return ("max",)

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [ts]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        out[i] = _pick(a[i], b[i], max)


class CountOf(PartialKind):
    """Events (column None) or non-null values of a column."""

    name = "count"
    prefixes = ("n",)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (INT,)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("count", partial.column),)

    def combine(self, partial: Partial) -> tuple[str, ...]:
        return ("add",)

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [1 if partial.column is None or value is not None else 0]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        out[i] = _pick(a[i], b[i], _add)

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        import numpy as np

        if partial.column is None:
            return np.ones(len(events), dtype=np.int64)
        return window.valid(partial.column)[events].astype(np.int64)

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        import numpy as np

        return _np(column, 0).astype(np.int64)


class SumOf(PartialKind):
    """The sum of non-null values: int64 for integer columns, float64 otherwise."""

    name = "sum"
    prefixes = ("sum",)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (INT if types.value_type(input_type or "") in types.INTEGERS else FLOAT,)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("sum", partial.column),)

    def combine(self, partial: Partial) -> tuple[str, ...]:
        return ("add",)

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        if value is None:
            return [None]
        return [int(value) if storage[0] == INT else float(value)]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        out[i] = _pick(a[i], b[i], _add)

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        import numpy as np
        import pyarrow as pa

        values = window.events[partial.column]
        return _np(values, 0)[events].astype(np.int64 if pa.types.is_integer(values.type) else np.float64)

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        import numpy as np
        import pyarrow as pa

        return _np(column, 0).astype(np.int64 if pa.types.is_integer(column.type) else np.float64)


class Extreme(PartialKind):
    """The smallest (``min``) or largest (``max``) non-null value, of any orderable type."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.prefixes = (name,)  # type: ignore[misc]
        self._pick = min if name == "min" else max

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (_word(input_type),)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute(self.name, partial.column),)

    def combine(self, partial: Partial) -> tuple[str, ...]:
        return (self.name,)

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [_stored(value, storage[0])]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        out[i] = _pick(a[i], b[i], self._pick)

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        return pc.take(window.events[partial.column], pa.array(events))

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        return column


class Latest(PartialKind):
    """The latest non-null value by (ts, created), ties to the greatest value, with its ts and created."""

    name = "last"
    prefixes = ("last", "lastt", "lastc")

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (_word(input_type), INT, INT)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return tuple(Compute("latest", partial.column, part) for part in ("v", "t", "c"))

    def combine(self, partial: Partial) -> tuple[str, ...]:
        return ("latest", "latest", "latest")

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [None, None, None] if value is None else [_stored(value, storage[0]), ts, created]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        v, t, c = (at(name) for name in partial.fields)
        if b[t] is not None and (a[t] is None or (b[t], b[c], b[v]) > (a[t], a[c], a[v])):
            out[v], out[t], out[c] = b[v], b[t], b[c]
        else:
            out[v], out[t], out[c] = a[v], a[t], a[c]

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if field == 0:
            return pc.take(window.events[partial.column], pa.array(events))
        valid = window.valid(partial.column)[events]
        return np.where(valid, (window.ev_ts if field == 1 else window.ev_cr)[events], I64_MIN)

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        import numpy as np

        return column if field == 0 else _np(column, I64_MIN).astype(np.int64)


class Moments(PartialKind):
    """The mean and M2 (sum of squared deviations) of non-null values; merged with their count (Chan et al.)."""

    name = "moments"
    prefixes = ("mean", "m2")

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (FLOAT, FLOAT)

    def needs(self, partial: Partial) -> tuple[Partial, ...]:
        return (Partial("count", partial.column),)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("avg", partial.column), Compute("m2", partial.column))

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [None, None] if value is None else [float(value), 0.0]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        n = at(self.needs(partial)[0].fields[0])
        mean, m2 = (at(name) for name in partial.fields)
        out[mean], out[m2] = _chan(a[n], a[mean], a[m2], b[n], b[mean], b[m2])

    def single(self, partial: Partial, field: int, window: Any, events: np.ndarray) -> Any:
        import numpy as np

        if field == 1:
            return np.zeros(len(events), dtype=np.float64)
        return _np(window.events[partial.column], 0)[events].astype(np.float64)

    def from_table(self, partial: Partial, field: int, column: pa.Array) -> Any:
        import numpy as np

        return _np(column, 0).astype(np.float64)


class DistinctSet(PartialKind):
    """The distinct non-null values of the tile, as a list."""

    name = "set"
    prefixes = ("set",)

    def storage(self, partial: Partial, input_type: str | None) -> tuple[str, ...]:
        return (OBJECT,)

    def compute(self, partial: Partial) -> tuple[Compute, ...]:
        return (Compute("distinct", partial.column),)

    def of_event(self, partial: Partial, value: Any, ts: int, created: int, storage: Sequence[str]) -> list[Any]:
        return [None if value is None else [value]]

    def merge(self, partial: Partial, a: Sequence[Any], b: Sequence[Any], out: list[Any], at: Index) -> None:
        i = at(partial.fields[0])
        x, y = a[i], b[i]
        out[i] = y if not x else x if not y else list(dict.fromkeys([*x, *y]))


for _kind in (MaxTs(), CountOf(), SumOf(), Extreme("min"), Extreme("max"), Latest(), Moments(), DistinctSet()):
    register_kind(_kind)


# --- helpers --------------------------------------------------------------------------------------------


def _add(x: Any, y: Any) -> Any:
    return x + y


def _pick(x: Any, y: Any, both: Callable[[Any, Any], Any]) -> Any:
    """``both(x, y)``, or whichever is not None."""
    return y if x is None else x if y is None else both(x, y)


def _stored(value: Any, storage: str) -> Any:
    """A value as a field of this storage keeps it (decimals as floats, narrower ints as ints)."""
    if value is None:
        return None
    return int(value) if storage == INT else float(value) if storage == FLOAT else value


def _chan(na: int | None, ma: float | None, m2a: float | None, nb: int | None, mb: float | None,
          m2b: float | None) -> tuple[float | None, float | None]:
    """Mean and M2 of two parts (Chan et al.), each given by count, mean and M2."""
    if not nb or mb is None or m2b is None:
        return ma, m2a
    if not na or ma is None or m2a is None:
        return mb, m2b
    n = na + nb
    delta = mb - ma
    return ma + delta * nb / n, m2a + m2b + delta * delta * na * nb / n


def group_partials(partials: Sequence[Partial]) -> tuple[Partial, ...]:
    """The partials a group keeps for these: the latest event time first, then each in order of first need,
    with what each needs before it; none twice."""
    out: dict[Partial, None] = {Partial("maxts"): None}
    for partial in partials:
        for need in partial.needs:
            out.setdefault(need)
        out.setdefault(partial)
    return tuple(out)
