"""Spark's types and the engine-neutral ones (feature_store/types.py), both ways, and the Arrow types of results."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyspark.sql import types as T

from feature_store import types

_NEUTRAL: dict[type, str] = {
    T.ByteType: "int8", T.ShortType: "int16", T.IntegerType: "int32", T.LongType: "int64",
    T.FloatType: "float32", T.DoubleType: "float64", T.StringType: "string", T.BooleanType: "bool",
    T.BinaryType: "binary", T.DateType: "date", T.TimestampType: "timestamp_tz", T.TimestampNTZType: "timestamp",
}
_SPARK = {neutral: spark for spark, neutral in _NEUTRAL.items()}
_ARROW = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
    "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_(), "binary": pa.binary(), "date": pa.date32(),
    "timestamp_tz": pa.timestamp("us", tz="UTC"), "timestamp": pa.timestamp("us"),
}


def neutral(kind: T.DataType) -> str:
    if isinstance(kind, T.ArrayType):
        return types.list_of(neutral(kind.elementType))
    if isinstance(kind, T.DecimalType):
        return f"decimal({kind.precision},{kind.scale})"
    name = _NEUTRAL.get(type(kind))
    return name if name is not None else f"other({kind.simpleString()})"


def spark(kind: str) -> Any:
    """The Spark type of an engine-neutral one."""
    if kind.startswith("list<"):
        return T.ArrayType(spark(types.element(kind)))
    if types.is_decimal(kind):
        inside = kind.partition("(")[2].rstrip(")")
        precision, _, scale = inside.partition(",")
        return T.DecimalType(int(precision), int(scale or 0))
    if types.read_as_float(kind):
        return T.DoubleType()
    return _SPARK[kind]()


def arrow(kind: str) -> pa.DataType:
    """The Arrow type a result column of this type has in the batches the kernel hands back to Spark."""
    if kind.startswith("list<"):
        return pa.list_(arrow(types.element(kind)))
    if types.read_as_float(kind):
        return pa.float64()
    return _ARROW[kind]
