"""DuckDB's types and the engine-neutral ones (feature_store/types.py), both ways."""

from __future__ import annotations

from feature_store import types

_NEUTRAL = {
    "TINYINT": "int8", "SMALLINT": "int16", "INTEGER": "int32", "BIGINT": "int64", "HUGEINT": "int128",
    "UTINYINT": "uint8", "USMALLINT": "uint16", "UINTEGER": "uint32", "UBIGINT": "uint64",
    "FLOAT": "float32", "DOUBLE": "float64", "VARCHAR": "string", "BOOLEAN": "bool", "BLOB": "binary",
    "DATE": "date", "TIMESTAMP": "timestamp", "TIMESTAMP WITH TIME ZONE": "timestamp_tz",
}
_DUCKDB = {neutral: duck for duck, neutral in _NEUTRAL.items()}


def neutral(duckdb_type: str) -> str:
    """``DECIMAL(18,2)`` -> ``decimal(18,2)``, ``TIMESTAMP_NS`` -> ``timestamp``, ``BIGINT[]`` -> ``list<int64>``."""
    text = duckdb_type.strip()
    upper = text.upper()
    if upper.endswith("[]"):
        return types.list_of(neutral(text[:-2]))
    name = upper.split("(")[0].strip()
    if name.startswith("TIMESTAMP"):  # TIMESTAMP_NS, TIMESTAMP_MS, TIMESTAMPTZ, TIMESTAMP WITH TIME ZONE, ...
        return "timestamp_tz" if "TZ" in name or "TIME ZONE" in name else "timestamp"
    if name == "DECIMAL":
        inside = upper.partition("(")[2].rstrip(")").replace(" ", "")
        return f"decimal({inside})" if inside else "decimal(18,3)"
    aliases = {"INT": "INTEGER", "INT8": "BIGINT", "INT4": "INTEGER", "INT2": "SMALLINT", "REAL": "FLOAT",
               "FLOAT8": "DOUBLE", "STRING": "VARCHAR", "TEXT": "VARCHAR", "BOOL": "BOOLEAN", "LONG": "BIGINT"}
    name = aliases.get(name, name)
    return _NEUTRAL.get(name, f"other({text})")


def duckdb(kind: str) -> str:
    """The DuckDB type of an engine-neutral one (what casts and result columns use)."""
    if kind.startswith("list<"):
        return f"{duckdb(types.element(kind))}[]"
    if types.is_decimal(kind):
        return kind.upper()
    if kind.startswith("other("):
        return kind[len("other("):-1]
    return _DUCKDB[kind]
