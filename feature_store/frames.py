"""DataFrames of other libraries as users hand them in: polars is optional (the extra ``feature-store[polars]``).

A polars frame is told apart by its type's module, so nothing here imports polars unless a polars result is
asked for (``to_polars``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from feature_store.errors import MissingDependencyError

if TYPE_CHECKING:
    import polars as pl


def is_polars(value: Any) -> bool:
    """A polars DataFrame or LazyFrame (polars itself need not be installed to ask)."""
    return type(value).__module__.startswith("polars.") and hasattr(value, "lazy")


def polars_to_arrow(frame: Any) -> pa.Table:
    """A polars DataFrame or LazyFrame (collected) as Arrow: strings as large_string, times as timestamps."""
    table: pa.Table = (frame.collect() if hasattr(frame, "collect") else frame).to_arrow()
    return table


def polars_columns(frame: Any) -> dict[str, list[Any]]:
    """A polars DataFrame or LazyFrame as {column: [Python values]}: online entity rows, pushed rows."""
    columns: dict[str, list[Any]] = (frame.collect() if hasattr(frame, "collect") else frame).to_dict(
        as_series=False)
    return columns


def arrow_to_polars(table: pa.Table) -> pl.DataFrame:
    """An Arrow table as a polars DataFrame; polars is the optional extra ``feature-store[polars]``."""
    try:
        import polars as pl
    except ImportError as exc:
        raise MissingDependencyError(
            "to_polars() needs polars, which is optional: install it with pip install 'feature-store[polars]' "
            "(or use to_arrow() or to_df()).", package="polars", extra="polars",
        ) from exc
    frame = pl.from_arrow(table)  # typed DataFrame | Series: a Series only of an Arrow array, not a table
    return frame if isinstance(frame, pl.DataFrame) else frame.to_frame()
