"""Pushed rows: checked against the push source's columns and typed as the offline store reads them.

A value is accepted only if the offline store will read back exactly the same value, so the
online update made from a push equals what a training set computes from its log line. Every
problem is reported with the column, the row and how to fix it; nothing is written before all
rows pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import numpy as np
import pandas as pd

from feature_store import types
from feature_store.errors import PushDataError
from feature_store.frames import is_polars, polars_columns
from feature_store.query import PUSH_ID, PUSH_ROW, PUSH_ROWS, PUSHED_AT

_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1), "int128": (-(2**127), 2**127 - 1), "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1), "uint32": (0, 2**32 - 1), "uint64": (0, 2**64 - 1),
}
MAX_ROWS = 1_000_000
# Pushed floats beyond this magnitude are refused: no sum of fewer than 10^8 of them can overflow a double, so a
# push never turns an entity's sums, means and deviations into infinity or NaN.
MAX_MAGNITUDE = 1e300
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class PushRows:
    """Checked rows, column by column, with values typed as the offline store reads them."""

    columns: Mapping[str, list[Any]]
    count: int
    timestamps_us: list[int]  # the event timestamp of each row, epoch microseconds

    def slice(self, start: int, stop: int) -> PushRows:
        stop = min(stop, self.count)
        return PushRows({n: v[start:stop] for n, v in self.columns.items()}, stop - start,
                        self.timestamps_us[start:stop])

    def log_lines(self, pushed_at: int, push_id: str | None = None) -> bytes:
        """One JSON object per row: each value as text the offline store casts back exactly; with a push id, the
        id, the row's index and the row count (readers count each row of a push id once)."""
        names = list(self.columns)
        texts = [[_text(v) for v in self.columns[n]] for n in names]
        out = []
        for i in range(self.count):
            row: dict[str, Any] = {n: col[i] for n, col in zip(names, texts, strict=True)}
            row[PUSHED_AT] = pushed_at
            if push_id is not None:
                row.update({PUSH_ID: push_id, PUSH_ROW: i, PUSH_ROWS: self.count})
            out.append(json.dumps(row, separators=(",", ":")))
        return ("\n".join(out) + "\n").encode()


def as_columns(data: Any) -> dict[str, list[Any]]:
    """A pandas or polars DataFrame, {column: [values]} or [{column: value}] as equal-length columns."""
    if isinstance(data, pd.DataFrame):
        return {str(c): data[c].tolist() for c in data.columns}
    if is_polars(data):
        return polars_columns(data)
    if isinstance(data, Mapping):
        columns = {str(k): list(v) if isinstance(v, list | tuple | np.ndarray | pd.Series) else [v]
                   for k, v in data.items()}
    elif isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        names = list(dict.fromkeys(k for r in data for k in r))
        columns = {str(n): [r.get(n) for r in data] for n in names}
    else:
        raise PushDataError("pushed data must be a pandas or polars DataFrame, {column: [values]} or a list of "
                            "{column: value} rows.")
    lengths = {n: len(v) for n, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise PushDataError(f"pushed columns have different lengths: {lengths}; give every column one value per row.")
    return columns


def check_rows(source: str, data: Any, schema: Mapping[str, str], timestamp_field: str,
               required: Collection[str], now_us: int, optional: Collection[str] = ()) -> PushRows:
    """Validate and type pushed rows for a push source whose batch source has ``schema``.

    ``required`` columns need a value in every row; every other column of the schema must be there too (nulls
    allowed: a value may be unknown, but a column left out is a mistake that would store nulls unseen), except
    ``optional`` ones."""
    columns = as_columns(data)
    count = len(next(iter(columns.values()))) if columns else 0
    if count == 0:
        raise PushDataError(f"push to {source!r} holds no rows.", push_source=source)
    if count > MAX_ROWS:
        raise PushDataError(f"push to {source!r} holds {count} rows; push at most {MAX_ROWS} at a time.")
    unknown = sorted(set(columns) - set(schema))
    if unknown:
        raise PushDataError(
            f"push to {source!r}: column(s) {unknown} are not columns of its batch source; its columns are "
            f"{sorted(schema)}.", push_source=source, columns=unknown,
        )
    missing = sorted(set(required) - set(columns))
    if missing:
        raise PushDataError(
            f"push to {source!r}: column(s) {missing} are missing; every pushed row needs the event timestamp and "
            "the join keys of the views over the source.", push_source=source, columns=missing,
        )
    left_out = sorted(set(schema) - set(columns) - set(optional))
    if left_out:
        raise PushDataError(
            f"push to {source!r}: column(s) {left_out} are missing; a pushed row carries every column of the batch "
            f"source (send null where a value is unknown), or declare them PushSource(nullable={left_out}) to "
            "let pushes leave them out.", push_source=source, columns=left_out,
        )
    typed = {name: _typed_column(source, name, values, schema[name]) for name, values in columns.items()}
    for name in required:
        nulls = [i for i, v in enumerate(typed[name]) if v is None]
        if nulls:
            raise PushDataError(f"push to {source!r}: column {name!r} is null in row(s) {nulls[:10]}; it needs a "
                                "value in every row.", push_source=source, column=name)
    stamps = [_epoch_us(v) for v in typed[timestamp_field]]
    late = [i for i, ts in enumerate(stamps) if ts > now_us]
    if late:
        raise PushDataError(
            f"push to {source!r}: {timestamp_field!r} of row(s) {late[:10]} is later than the time the push arrived "
            f"({datetime.fromtimestamp(now_us / 1e6, UTC).isoformat()}); push events once they have happened, "
            "and check the sender's clock.", push_source=source, column=timestamp_field,
        )
    return PushRows(typed, count, stamps)


def _typed_column(source: str, name: str, values: list[Any], kind: str) -> list[Any]:
    out: list[Any] = []
    for row, value in enumerate(values):
        if _is_null(value):
            out.append(None)
            continue
        try:
            out.append(_typed(value, kind))
        except (TypeError, ValueError, ArithmeticError, InvalidOperation) as exc:
            raise PushDataError(
                f"push to {source!r}: column {name!r} is {types.sql_name(kind)} but row {row} holds {_shown(value)} "
                f"({exc}).",
                push_source=source, column=name, row=row,
            ) from exc
    return out


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _shown(value: Any) -> str:
    """A value for a message: the repr, cut short when long (a push may send megabytes in one value)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"


def _typed(value: Any, kind: str) -> Any:
    """The value as the offline store reads it back (floats for decimals, as events are read)."""
    if kind in _INT_RANGES:
        number = _integer(value)
        low, high = _INT_RANGES[kind]
        if not low <= number <= high:
            raise ValueError(f"out of range for {kind}")
        return number
    if kind in ("float64", "float32"):
        if isinstance(value, bool) or not isinstance(value, int | float | str | np.number):
            raise TypeError("not a number")
        real = _finite(float(value))
        if kind == "float32" and abs(real) > FLOAT32_MAX:
            raise ValueError("out of range for FLOAT")
        return float(np.float32(real)) if kind == "float32" else real
    if types.is_decimal(kind):
        scale = types.decimal_scale(kind)
        if isinstance(value, bool):
            raise TypeError("not a number")
        exact = Decimal(str(value)).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
        return _finite(float(exact))
    if kind == "string":
        if not isinstance(value, str):
            raise TypeError("not a string; send strings for string columns")
        return value
    if kind == "bool":
        if not isinstance(value, bool | np.bool_):
            raise TypeError("not true or false")
        return bool(value)
    if kind in ("timestamp", "timestamp_tz"):
        instant = _instant(value)
        return instant if kind == "timestamp_tz" else instant.replace(tzinfo=None)
    if kind == "date":
        if isinstance(value, datetime) or not isinstance(value, date | str):
            raise TypeError("not a date (YYYY-MM-DD)")
        return value if isinstance(value, date) else date.fromisoformat(value)
    raise TypeError(f"pushing {types.sql_name(kind)} columns is not supported")


def _finite(real: float) -> float:
    if not math.isfinite(real):
        raise ValueError("not a finite number; send null for a missing value (NaN and infinity are refused)")
    if abs(real) > MAX_MAGNITUDE:
        raise ValueError(f"beyond ±{MAX_MAGNITUDE:g}, where sums could overflow")
    return real


def _integer(value: Any) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError("not an integer")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise TypeError("not an integer")


def _instant(value: Any) -> datetime:
    """An aware UTC datetime, to the microsecond; naive times are UTC, as offline."""
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime(warn=False)
    elif isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif not isinstance(value, datetime):
        raise TypeError("not a timestamp (ISO-8601 text or a datetime)")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_us(value: datetime | date) -> int:
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // _US


_US = pd.Timedelta(microseconds=1).to_pytimedelta()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, date):  # datetimes too: aware ones carry +00:00, naive ones are UTC already
        return value.isoformat()
    return str(value)
