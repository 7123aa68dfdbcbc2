"""Entity rows of an online read: columns of equal length, and join-key values coerced as every store keys them."""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from feature_store.errors import EntityDataFrameError
from feature_store.frames import is_polars, polars_columns


def entity_columns(entity_rows: Any) -> dict[str, list[Any]]:
    """[{"customer_id": 1}, ...], {"customer_id": [1, 2]}, or a pandas or polars DataFrame, as columns of equal
    length."""
    if type(entity_rows) is list and len(entity_rows) == 1 and type(entity_rows[0]) is dict:
        return {k: [v] for k, v in entity_rows[0].items()}  # one entity row: the commonest online read
    if is_polars(entity_rows):
        return polars_columns(entity_rows)
    if isinstance(entity_rows, Mapping):
        many = (list, tuple, np.ndarray)
        # a pandas Series counts as many values too (told apart without importing pandas)
        columns = {k: list(v) if isinstance(v, many) or type(v).__name__ == "Series" else [v]
                   for k, v in entity_rows.items()}
    elif isinstance(entity_rows, Sequence) and all(type(r) is dict or isinstance(r, Mapping) for r in entity_rows):
        names: dict[str, None] = {}
        for row in entity_rows:
            names.update(dict.fromkeys(row))
        columns = {n: [r.get(n) for r in entity_rows] for n in names}
    else:
        raise EntityDataFrameError("entity_rows must be a list of {join_key: value} dicts or {join_key: [values]}.")
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        sizes = {k: len(v) for k, v in columns.items()}
        raise EntityDataFrameError(f"entity columns have different lengths: {sizes}.")
    return columns


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what a stored key can hold (msgpack's integers)
_DIGITS = re.compile(r"[+-]?[0-9]+")


def coerced(values: list[Any], kind: str, key: str) -> list[Any]:
    if kind == "integer":  # ints in range pass as they are (bool is not int); the rest is checked
        return [v if type(v) is int and _INT_MIN <= v <= _INT_MAX else _coerce(v, kind, key) for v in values]
    return [v if type(v) is str else _coerce(v, kind, key) for v in values]


def _coerce(value: Any, kind: str, key: str) -> Any:
    """One rule for every store: integer keys accept ints and ASCII digit strings in the 64-bit range,
    string keys accept anything."""
    if value is None:
        raise EntityDataFrameError(f"join key {key!r} is null in an entity row; every row needs a value.")
    if kind != "integer":
        return str(value)
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)  # numpy ints too
    if integral:
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        # int() refuses strings of over 4,300 digits, leading zeros included: convert the significant ones,
        # and only when they may fit (more than 20 is beyond 64 bits).
        significant = value.lstrip("+-").lstrip("0") or "0"
        number = _INT_MAX + 1 if len(significant) > 20 else int(significant)
        number = -number if value.startswith("-") else number
    else:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but got {_shown(value)}, which is not an integer.", key=key,
        )
    if not _INT_MIN <= number <= _INT_MAX:
        raise EntityDataFrameError(
            f"join key {key!r} is an integer key but {_shown(value)} is outside the 64-bit range.", key=key,
        )
    return number


def _shown(value: Any) -> str:
    """A value for a message: the repr, cut short when long (a request may send megabytes in one key)."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text):,} characters)"
