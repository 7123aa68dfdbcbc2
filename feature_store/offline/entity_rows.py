"""Entity rows for a training set, engine-neutral: a pandas or polars DataFrame, an Arrow table or a parquet path as
Arrow, checked, with the row id that keeps input order; and a training set's Arrow result as pandas. Each engine
adds its own forms (DuckDB: a SQL query; Spark: a Spark DataFrame or query).

polars is optional (the extra ``feature-store[polars]``): a polars frame is told apart by its type's module,
so nothing here imports polars unless a polars result is asked for (``to_polars``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store import types
from feature_store.errors import EntityDataFrameError
from feature_store.frames import arrow_to_polars, is_polars, polars_to_arrow

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from feature_store.query import ViewQuery

TIMESTAMP_COLUMN = "event_timestamp"
ROW_ID = "__row_id"


def to_arrow(entity_df: Any, run_query: Callable[[str], pa.Table] | None = None, engine: str = "") -> pa.Table:
    """The entity rows as Arrow; a string that is not a parquet path is a query ``run_query`` runs (if given)."""
    import pandas as pd  # here, not at the top: the engine checks sources (feature-store plan) without pandas

    if isinstance(entity_df, pd.DataFrame):
        try:
            return pa.Table.from_pandas(entity_df, preserve_index=False)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise EntityDataFrameError(f"the entity DataFrame cannot be converted to Arrow: {exc}") from exc
    if isinstance(entity_df, pa.Table):
        return entity_df
    if is_polars(entity_df):
        try:
            return polars_to_arrow(entity_df)
        except Exception as exc:  # polars raises its own exception classes, which this module does not import
            raise EntityDataFrameError(f"the entity polars DataFrame cannot be converted to Arrow: {exc}") from exc
    if isinstance(entity_df, Path) or (isinstance(entity_df, str) and _looks_like_path(entity_df)):
        path = Path(entity_df)
        if not path.is_file():
            raise EntityDataFrameError(
                f"entity rows file {str(path)!r} does not exist (a string is read as a parquet path unless it "
                "is a SQL query starting with SELECT, WITH or FROM).", path=str(path),
            )
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise EntityDataFrameError(f"entity rows file {str(path)!r} is not a readable parquet file: {exc}") from exc
    if isinstance(entity_df, str) and run_query is not None:
        return run_query(entity_df)
    raise EntityDataFrameError(
        f"entity rows must be a pandas or polars DataFrame, a pyarrow Table, a parquet path{engine} or a SQL "
        f"query; got {_type_name(entity_df)}."
    )


def _type_name(value: Any) -> str:
    """``list``, or ``modin.pandas.dataframe.DataFrame``: which DataFrame it was, when it is one."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _looks_like_path(text: str) -> bool:
    """SQL starts with a query keyword; any other string that names a file, or has no space, is a path."""
    stripped = text.strip()
    if not stripped or stripped.split(None, 1)[0].upper() in ("SELECT", "WITH", "FROM", "VALUES", "(", "TABLE"):
        return False
    return Path(stripped).is_file() or " " not in stripped


def prepare(table: pa.Table, join_keys: Sequence[str]) -> pa.Table:
    """Check the columns a training set needs and add the row id that keeps input order."""
    names = set(table.column_names)
    reserved = sorted(n for n in names if n.startswith("__"))
    if reserved:
        raise EntityDataFrameError(f"entity columns {reserved}: names starting with '__' are reserved; rename them.")
    missing = [c for c in [*join_keys, TIMESTAMP_COLUMN] if c not in names]
    if missing:
        raise EntityDataFrameError(
            f"the entity rows lack column(s) {missing}; they need the join keys {list(join_keys)} of the "
            f"requested views and an {TIMESTAMP_COLUMN!r} column (the time each training row is 'as of'). "
            f"Columns present: {sorted(names)}.",
            missing=missing,
        )
    ts_type = table.schema.field(TIMESTAMP_COLUMN).type
    if not (pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type)):
        raise EntityDataFrameError(
            f"entity column {TIMESTAMP_COLUMN!r} has type {ts_type}, not a timestamp; convert it, e.g. "
            f"df[{TIMESTAMP_COLUMN!r}] = pd.to_datetime(df[{TIMESTAMP_COLUMN!r}], utc=True).",
            column=TIMESTAMP_COLUMN,
        )
    nulls = table.column(TIMESTAMP_COLUMN).null_count
    if nulls:
        first = int(np.flatnonzero(table.column(TIMESTAMP_COLUMN).is_null().to_numpy(zero_copy_only=False))[0])
        raise EntityDataFrameError(
            f"{nulls} entity row(s) have a null {TIMESTAMP_COLUMN!r} (first at row {first}); every training "
            "row needs the time it is as of. Drop or fill those rows.",
            null_rows=nulls, first_row=first,
        )
    for key in join_keys:  # pandas categoricals arrive dictionary-encoded: join on the values
        field = table.schema.field(key)
        if pa.types.is_dictionary(field.type):
            index = table.schema.get_field_index(key)
            table = table.set_column(index, key, table.column(key).cast(field.type.value_type))
    return table.append_column(ROW_ID, pa.array(np.arange(table.num_rows, dtype=np.int64)))




def check_key_types(plan: ViewQuery, given_types: dict[str, str]) -> None:
    """Each join key of the entity rows (``given_types``: column -> the engine's or Arrow's type name) can match the
    source's."""
    for key, wanted in zip(plan.keys, plan.key_types, strict=True):
        given = given_types[key]
        if types.key_family(given) != types.key_family(wanted):
            raise EntityDataFrameError(
                f"join key {key!r} is {given} in the entity rows but {types.sql_name(wanted)} in source "
                f"{plan.source.name!r} (view {plan.name!r}), so no row could match; convert the entity "
                "column to the source's type.",
                column=key, view=plan.name,
            )


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """pandas; an int or bool column with nulls becomes nullable (Int64, boolean) instead of float/object."""
    import pandas as pd

    nullable = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
                pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    df = table.to_pandas()
    for name in table.column_names:
        column = table.column(name)
        if column.null_count and column.type in nullable:
            df[name] = column.to_pandas(types_mapper=nullable.get)
    return df


class ArrowResult:
    """``to_df`` and ``to_polars`` of a training-set job, from its ``to_arrow``."""

    def to_arrow(self) -> pa.Table:
        raise NotImplementedError

    def to_df(self) -> pd.DataFrame:
        """pandas; an int or bool column with nulls becomes nullable (Int64, boolean) instead of float/object."""
        return to_pandas(self.to_arrow())

    def to_polars(self) -> pl.DataFrame:
        """polars (the optional extra ``feature-store[polars]``); nullable integers stay integers."""
        return arrow_to_polars(self.to_arrow())
