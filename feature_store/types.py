"""Engine-neutral column types: the names definitions, the compiled plan and the registry use.

Each engine maps its own types to these (offline/duckdb/types.py for DuckDB); nothing above the engines sees
an engine's type names. A type is a short string: ``int8`` ... ``int64``, ``int128``, ``uint8`` ... ``uint64``,
``float32``, ``float64``, ``decimal(p,s)``, ``string``, ``bool``, ``date``, ``timestamp`` (naive, read as UTC),
``timestamp_tz`` (an instant), ``binary``, ``list<T>`` (T a type), or ``other(<engine's name>)`` for anything
else, which a source may hold but no feature can use.
"""

from __future__ import annotations

SIGNED = ("int8", "int16", "int32", "int64")
UNSIGNED = ("uint8", "uint16", "uint32", "uint64")
INTEGERS = frozenset({*SIGNED, *UNSIGNED, "int128"})
WORD_INTEGERS = frozenset({*SIGNED, "uint8", "uint16", "uint32"})  # integer types every int64 holds
FLOATS = frozenset({"float32", "float64"})
TIMES = frozenset({"date", "timestamp", "timestamp_tz"})
SCALARS = frozenset({*INTEGERS, *FLOATS, "string", "bool", "binary", *TIMES})

# Field(dtype=...) names of snapshot columns
FIELD_TYPES = {
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "float32": "float32", "float64": "float64", "float": "float64", "double": "float64",
    "string": "string", "bool": "bool", "timestamp": "timestamp_tz", "date": "date",
}

_SQL_NAMES = {
    "int8": "TINYINT", "int16": "SMALLINT", "int32": "INTEGER", "int64": "BIGINT", "int128": "HUGEINT",
    "uint8": "UTINYINT", "uint16": "USMALLINT", "uint32": "UINTEGER", "uint64": "UBIGINT",
    "float32": "FLOAT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN", "binary": "BLOB",
    "date": "DATE", "timestamp": "TIMESTAMP", "timestamp_tz": "TIMESTAMP WITH TIME ZONE",
}


def base(kind: str) -> str:
    """``decimal(18,2)`` -> ``decimal``, ``list<int64>`` -> ``list``; other names as they are."""
    return kind.partition("(")[0].partition("<")[0]


def is_integer(kind: str) -> bool:
    return kind in INTEGERS


def is_float(kind: str) -> bool:
    return kind in FLOATS


def is_decimal(kind: str) -> bool:
    return base(kind) == "decimal"


def is_numeric(kind: str) -> bool:
    return kind in INTEGERS or kind in FLOATS or is_decimal(kind)


def is_orderable(kind: str) -> bool:
    """Numbers, strings, booleans and times: what Min and Max compare."""
    return is_numeric(kind) or kind in ("string", "bool") or kind in TIMES


def is_time(kind: str) -> bool:
    return kind in TIMES


def read_as_float(kind: str) -> bool:
    """Decimals and 128-bit integers are read as float64, so every numeric aggregate has one float type."""
    return is_decimal(kind) or kind == "int128"


def value_type(kind: str) -> str:
    """The type events carry for a column of this type (decimals and 128-bit integers as float64)."""
    return "float64" if read_as_float(kind) else kind


def decimal_scale(kind: str) -> int:
    """The scale s of ``decimal(p,s)`` (3 when not given, as DuckDB's default DECIMAL)."""
    inside = kind.partition("(")[2].rstrip(")")
    return int(inside.split(",")[1]) if "," in inside else 3


def list_of(kind: str) -> str:
    return f"list<{kind}>"


def element(kind: str) -> str:
    """T of ``list<T>``."""
    return kind[len("list<"):-1] if kind.startswith("list<") else kind


def sql_name(kind: str) -> str:
    """The SQL name of a type, for people (the feature server's /features): ``int64`` -> ``BIGINT``."""
    if kind.startswith("list<"):
        return f"{sql_name(element(kind))}[]"
    if is_decimal(kind):
        return kind.upper()
    if kind.startswith("other("):
        return kind[len("other("):-1]
    return _SQL_NAMES.get(kind, kind.upper())


def key_family(type_name: str) -> str:
    """Coarse families of key types (ours, Arrow's or an engine's names), to check that keys can match: a string key
    never equals an integer one."""
    t = type_name.upper()
    if any(x in t for x in ("INT", "DECIMAL")):
        return "integer"
    if any(x in t for x in ("FLOAT", "DOUBLE", "REAL")):
        return "float"
    if any(x in t for x in ("VARCHAR", "STRING", "UTF8", "TEXT")):
        return "string"
    return t


def describe(kinds: frozenset[str] | None) -> str:
    """What a set of accepted types is, in words, for error messages."""
    if kinds is None:
        return "any"
    if kinds == NUMERIC:
        return "numeric"
    if kinds == ORDERABLE:
        return "orderable (numbers, strings, booleans, times)"
    if kinds == VALUES:
        return "number, string or boolean"
    return ", ".join(sorted(kinds))


class _AnyOf(frozenset[str]):
    """A set of types given by a predicate (decimals have many names); ``in`` asks the predicate."""

    def __new__(cls, name: str, test: object) -> _AnyOf:
        made = super().__new__(cls, {name})
        made._test = test  # type: ignore[attr-defined]
        return made

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and bool(self._test(kind))  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


NUMERIC: frozenset[str] = _AnyOf("numeric", is_numeric)
ORDERABLE: frozenset[str] = _AnyOf("orderable", is_orderable)
VALUES: frozenset[str] = _AnyOf("values", lambda kind: is_numeric(kind) or kind in ("string", "bool"))
