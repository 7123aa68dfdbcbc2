"""The small protocol an offline engine implements, and the lazy result of a training-set query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from feature_store.catalog import Catalog
from feature_store.references import ResolvedFeature

if TYPE_CHECKING:  # annotations only: importing pandas costs the CLI's start-up a tenth of a second or more
    import pandas as pd
    import polars as pl
    import pyarrow as pa

ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class MaterializeResult:
    view: str
    part: str  # "hop 1h" or "snapshot"
    table: str
    previous_watermark: datetime | None
    watermark: datetime
    rows_written: int
    rebuilt: bool


class RetrievalJob(Protocol):
    def to_arrow(self) -> pa.Table: ...
    def to_df(self) -> pd.DataFrame: ...
    def to_polars(self) -> pl.DataFrame: ...
    def to_parquet(self, path: str | Path) -> None: ...
    def sql(self) -> str: ...


class OfflineEngine(Protocol):
    """What the store needs from an offline engine; DuckDB is the one built in."""

    name: ClassVar[str]

    def source_schema(self, catalog: Catalog, source_name: str) -> dict[str, str]: ...

    def check_view(self, catalog: Catalog, view_name: str) -> None: ...

    def historical_features(
        self, catalog: Catalog, entity_df: Any, features: Sequence[ResolvedFeature],
        available_before: datetime | None = None, pushed_before: datetime | None = None,
    ) -> RetrievalJob: ...

    def materialize(
        self, catalog: Catalog, views: Sequence[str], end: datetime, full: bool,
        progress: ProgressCallback | None = None,
    ) -> list[MaterializeResult]: ...

    def close(self) -> None: ...
