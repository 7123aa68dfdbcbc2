"""Offline tiles on Spark: per view and hop, the partial aggregates of each (keys, tile) of on-time events, as
parquet under ``warehouse``, incremental and crash-safe as DuckDB's (offline/duckdb/materialize.py).

Layout, for the view ``spend`` and the hop 1h (3,600,000,000 us)::

    <warehouse>/tiles/spend/hop=3600000000/
        _manifest/000000000007.json        the committed state: watermark, signature, source fingerprint, buckets
        run-<uuid>/bucket=<start us>/part-*.parquet

A tile row holds the keys, ``__pos`` (the tile's start, epoch us) and one column per field of the hop's partials
(``TileHop`` of the compiled plan, computed by Spark aggregates: ``compute_col``), from the events created before
the tile ends, exactly as DuckDB's ``tiles_sql``. Rows are partitioned by *bucket*: a whole number of hops of at
least a day. A run computes the tiles of the bucket holding the previous watermark and every later one, up to the
new watermark (the end rounded down to the hop), writes them into a new ``run-*`` folder, and only then commits a
new manifest naming, per bucket, the run folder that holds it (older buckets keep theirs). A manifest is written
whole to a temporary name and renamed, never overwritten: a run killed at any point leaves the previous manifest in
force, and the rerun starts from its watermark. Readers (training sets) read only the folders the newest manifest
names, and only if its signature (the view's definition) and the fingerprint of the source files still hold; a
changed definition, a changed file or ``--full`` makes the next run start over from the first event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from feature_store.aggregations import FLOAT, INT
from feature_store.config import resolve_path
from feature_store.durations import format_duration
from feature_store.errors import OfflineStoreError
from feature_store.kernel.tile_fields import computed_by_kernel
from feature_store.offline.engine import MaterializeResult, ProgressCallback, from_us, still_valid, to_us
from feature_store.offline.spark.online_tiles import compute_col, floor_col
from feature_store.offline.spark.warehouse import Warehouse
from feature_store.query import TileHop, ViewQuery

if TYPE_CHECKING:
    from feature_store.offline.spark.engine import SparkOfflineEngine

VERSION = 1  # of the manifest and the tile layout: bump when either changes, older data is then rebuilt
DAY = 86_400_000_000
MANIFESTS = "_manifest"
KEEP_MANIFESTS = 2  # the newest and the one before it, with their data: a training set that began reading the
# previous state while a run committed a new one still finds its files


@dataclass(frozen=True)
class Manifest:
    view: str
    hop: int
    signature: str
    files: dict[str, list[int]]  # the source fingerprint the tiles were computed from
    watermark: int  # epoch us: every tile ending by it is complete
    schema: str  # the tile rows' Spark schema: tiles of another version of this code are rebuilt
    buckets: dict[str, str] = field(default_factory=dict)  # bucket start (us) -> run folder holding its tiles
    version: int = VERSION

    def usable(self, signature: str, files: dict[str, list[int]]) -> bool:
        return self.version == VERSION and self.signature == signature and still_valid(self.files, files)


@dataclass(frozen=True)
class StoredTiles:
    """A hop's committed tiles: complete below ``watermark``."""

    hop: int
    watermark: int
    paths: tuple[str, ...]  # the bucket folders to read
    fields: tuple[str, ...]


def bucket_span(hop: int) -> int:
    """A partition's width: whole hops (a tile is never split), at least a day."""
    return hop * max(1, -(-DAY // hop))


def tile_fields(tiles: TileHop) -> list[tuple[str, Column]]:
    """(field, Spark aggregate) of the hop's partials, each cast to the type its storage keeps (as DuckDB's
    ``partials_sql``)."""
    out: list[tuple[str, Column]] = []
    for partial in tiles.partials:
        if computed_by_kernel(partial):  # functions with kernel partials read events (offline_tiles is False)
            raise OfflineStoreError(f"partial {partial.kind} has no offline tile on Spark")
        storages = partial.storage(tiles.input_types.get(partial.fields[0]))
        for k, name in enumerate(partial.fields):
            value = compute_col(partial.of.compute(partial)[k])
            if storages[k] in (INT, FLOAT):
                value = value.cast("long" if storages[k] == INT else "double")
            out.append((name, value.alias(name)))
    return out


def tile_frame(events: DataFrame, plan: ViewQuery, tiles: TileHop, since: int | None, until: int) -> DataFrame:
    """Tiles of on-time events starting in [since, until), with their bucket."""
    hop = tiles.hop
    rows = events.where(F.col("__ts") < until)
    if since is not None:
        rows = rows.where(F.col("__ts") >= since)
    rows = rows.withColumn("__pos", floor_col(F.col("__ts"), hop)).where(F.col("__cr") < F.col("__pos") + hop)
    aggregates = [value for _, value in tile_fields(tiles)]
    grouped = rows.groupBy(*plan.keys, "__pos").agg(*aggregates)
    return grouped.withColumn("bucket", floor_col(F.col("__pos"), bucket_span(hop)))


class SparkTiles:
    """The offline tiles of a Spark engine's warehouse."""

    def __init__(self, engine: SparkOfflineEngine) -> None:
        self.engine = engine
        root = engine.config.warehouse
        root = root if "://" in root else str(resolve_path(engine.repo, root))
        self.store = Warehouse(root, lambda: engine.spark)

    def folder(self, view: str, hop: int) -> str:
        return self.store.join("tiles", view, f"hop={hop}")

    # --- reading ------------------------------------------------------------------------------------------------

    def _manifests(self, folder: str) -> list[int]:
        names = self.store.list(f"{folder}/{MANIFESTS}")
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def manifest(self, view: str, hop: int) -> Manifest | None:
        """The newest committed manifest (one of another layout version counts as none)."""
        folder = self.folder(view, hop)
        for number in reversed(self._manifests(folder)):
            text = self.store.read_text(f"{folder}/{MANIFESTS}/{number:012d}.json")
            try:
                data = json.loads(text or "")
                return Manifest(**data) if data.get("version") == VERSION else None
            except (ValueError, TypeError):
                continue  # unreadable: written by no committed run; the one before it holds
        return None

    def stored(self, plan: ViewQuery, signature: str, files: dict[str, list[int]]) -> dict[int, StoredTiles]:
        """The requested hops' usable tiles: same definition, same source files, at least one tile."""
        out = {}
        for tiles in plan.tile_hops:
            manifest = self.manifest(plan.name, tiles.hop)
            if manifest is None or not manifest.usable(signature, files) or not manifest.buckets:
                continue
            fields = tuple(name for name, _ in tile_fields(tiles))
            if not all(f"{name}:" in manifest.schema for name in fields):  # written by another version of the code
                continue
            folder = self.folder(plan.name, tiles.hop)
            paths = tuple(f"{folder}/{run}/bucket={bucket}" for bucket, run in sorted(manifest.buckets.items()))
            out[tiles.hop] = StoredTiles(tiles.hop, manifest.watermark, paths, fields)
        return out

    def read(self, stored: StoredTiles) -> DataFrame:
        return self.engine.spark.read.parquet(*stored.paths)

    # --- writing ------------------------------------------------------------------------------------------------

    def run(self, plan: ViewQuery, signature: str, files: dict[str, list[int]], end: datetime, full: bool,
            progress: ProgressCallback | None) -> list[MaterializeResult]:
        end_us = min(to_us(end), to_us(datetime.now(UTC)))  # rows not yet available cannot be final
        columns = sorted({r.column for r in plan.features if r.column})
        events = self.engine.events(plan, columns=columns)
        results = []
        for tiles in plan.tile_hops:
            label = f"hop {format_duration(timedelta(microseconds=tiles.hop))}"
            result = self._hop(plan, tiles, events, signature, files, end_us - end_us % tiles.hop, full, label)
            if progress:
                progress(f"{plan.name} {label}", 1, 1)
            results.append(result)
        return results

    def _hop(self, plan: ViewQuery, tiles: TileHop, events: DataFrame, signature: str,
             files: dict[str, list[int]], watermark: int, full: bool, label: str) -> MaterializeResult:
        hop, folder = tiles.hop, self.folder(plan.name, tiles.hop)
        schema = tile_frame(events, plan, tiles, None, 0).schema.simpleString()  # analysed, not run
        old = self.manifest(plan.name, hop)
        usable = old is not None and old.usable(signature, files) and old.schema == schema
        previous = old.watermark if old is not None and usable and not full else None
        kept: dict[str, str] = {}
        if previous is None:  # first run, changed definition or files, --full: start over
            first = events.agg(F.min("__ts")).first()
            start = None if first is None or first[0] is None else int(first[0]) - int(first[0]) % hop
        else:
            start, watermark = previous, max(watermark, previous)  # a watermark never moves backwards
        if previous is not None and watermark == previous:
            return MaterializeResult(plan.name, label, folder, from_us(previous), from_us(watermark), 0, False)
        written, buckets = 0, {}
        if start is not None and watermark > start:
            since = start - start % bucket_span(hop)  # the bucket holding the previous watermark is written again
            if old is not None and previous is not None:
                kept = {b: run for b, run in old.buckets.items() if int(b) < since}
            run = f"run-{uuid.uuid4().hex}"
            target = f"{folder}/{run}"
            tile_frame(events, plan, tiles, since, watermark).write.mode("errorifexists") \
                .partitionBy("bucket").parquet(target)
            buckets = {name.split("=", 1)[1]: run for name in self.store.list(target) if name.startswith("bucket=")}
            if buckets:
                written = self.engine.spark.read.parquet(target).where(F.col("__pos") >= start).count()
        manifest = Manifest(plan.name, hop, signature, files, watermark, schema, {**kept, **buckets})
        self._commit(folder, manifest)
        return MaterializeResult(plan.name, label, folder, None if previous is None else from_us(previous),
                                 from_us(watermark), written, previous is None)

    def _commit(self, folder: str, manifest: Manifest) -> None:
        """The new state in force at once (one atomic rename), then what no kept manifest names is removed."""
        numbers = self._manifests(folder)
        number = (numbers[-1] + 1) if numbers else 1
        self.store.create_text(f"{folder}/{MANIFESTS}/{number:012d}.json", json.dumps(asdict(manifest)))
        self._clean(folder)

    def _clean(self, folder: str) -> None:
        numbers = self._manifests(folder)
        keep, drop = numbers[-KEEP_MANIFESTS:], numbers[:-KEEP_MANIFESTS]
        runs: set[str] = set()
        for number in keep:
            text = self.store.read_text(f"{folder}/{MANIFESTS}/{number:012d}.json")
            try:
                runs.update(json.loads(text or "{}").get("buckets", {}).values())
            except ValueError:
                continue
        for number in drop:
            self.store.delete(f"{folder}/{MANIFESTS}/{number:012d}.json")
        for name in self.store.list(folder):
            if name.startswith("run-") and name not in runs:  # a killed run's, or one no kept manifest names
                self.store.delete(f"{folder}/{name}")

    def drop(self, views: Sequence[str] | None = None) -> list[str]:
        """Remove every view's tiles (teardown); return what was removed, as ``tiles/<view>/hop=<us>``."""
        names = []
        for view in views if views is not None else self.store.list(self.store.join("tiles")):
            for hop in self.store.list(self.store.join("tiles", view)):
                names.append(f"tiles/{view}/{hop}")
        self.store.delete(self.store.join("tiles"))
        return names
