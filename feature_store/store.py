"""FeatureStore: the thin facade users hold. It delegates every job to the module that owns it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_store.catalog import Catalog
from feature_store.config import RepoConfig, load_config
from feature_store.definitions import Definition, FeatureService, FeatureView, PushSource
from feature_store.errors import EntityDataFrameError, NotAppliedError
from feature_store.plan import Plan, make_plan
from feature_store.references import FeatureRefs, resolve_features
from feature_store.registry import Registry
from feature_store.repo import load_repo

if TYPE_CHECKING:  # the engines import DuckDB, pandas, pyarrow and the online stores: loaded when first used
    import pandas as pd

    from feature_store.monitoring.freshness import ViewFreshness
    from feature_store.monitoring.monitor import MonitorResult
    from feature_store.monitoring.served_log import ServedLog
    from feature_store.monitoring.skew import SkewReport
    from feature_store.offline.engine import MaterializeResult, OfflineEngine, ProgressCallback, RetrievalJob
    from feature_store.offline.push_log import CompactResult, PushLog
    from feature_store.online.read.reader import OnlineResponse
    from feature_store.online.service import OnlineService, PushResult, PushTo
    from feature_store.teardown import TeardownReport
    from feature_store.verify import VerifyReport

REGISTRY_REFRESH_SECONDS = 2.0
SQL_STARTS = ("SELECT", "WITH", "FROM", "VALUES", "(", "TABLE")


def is_sql(text: str) -> bool:
    """Entity rows given as text are SQL when they start with a query keyword (else a parquet path)."""
    stripped = text.strip()
    return bool(stripped) and stripped.split(None, 1)[0].upper() in SQL_STARTS


class FeatureStore:
    """A feature repo: its config, its registry, and the engines behind them.

    ``FeatureStore("feature_repo")`` reads ``feature_repo/feature_store.yaml``.
    """

    def __init__(self, repo_path: str | Path = ".", config: RepoConfig | None = None, spark: Any = None) -> None:
        """``spark``: a running SparkSession for the Spark engine (``offline_store.type: spark``) to use, as in a
        notebook or on Databricks; by default the engine builds one from ``offline_store.master`` and ``conf``."""
        self.repo_path = Path(repo_path).resolve()
        self._spark = spark
        self.config = config or load_config(self.repo_path)
        self.registry = Registry(self.config.registry_url(self.repo_path), self.config.project)
        self._offline: OfflineEngine | None = None
        self._online: OnlineService | None = None
        self._push_log: PushLog | None = None
        self._engines_lock = threading.Lock()
        self._serving: tuple[float, int, Catalog] | None = None
        # How stale the serving catalog may get before a read reloads it; a server that refreshes in the
        # background (refresh_serving) sets this to math.inf so that no request ever touches the registry.
        self.registry_refresh_seconds = REGISTRY_REFRESH_SECONDS
        self.served_log: ServedLog | None = None  # monitoring.log_served: what online reads answer is logged
        if self.config.monitoring.log_served:
            from feature_store.config import served_log_dir
            from feature_store.monitoring.served_log import ServedLog

            self.served_log = ServedLog.from_config(self.config.monitoring, served_log_dir(self.config,
                                                                                           self.repo_path))

    @property
    def project(self) -> str:
        return self.config.project

    # The engines are built on first use, so that what only reads the registry (list, describe) never imports
    # DuckDB, pandas or the online stores, and serving never builds the offline engine at all. Under a lock: the
    # feature server's threads may ask at the same time.
    @property
    def push_log(self) -> PushLog:
        if self._push_log is None:
            with self._engines_lock:
                if self._push_log is None:
                    from feature_store.offline.push_log import create_push_log

                    self._push_log = create_push_log(self.config.offline_store, self.repo_path)
        return self._push_log

    @property
    def offline(self) -> OfflineEngine:
        """The offline engine ``offline_store.type`` names (offline/engine.py: the only door to one)."""
        if self._offline is None:
            push_log = self.push_log
            with self._engines_lock:
                if self._offline is None:
                    from feature_store.offline.engine import create_engine

                    self._offline = create_engine(self.config.offline_store, self.repo_path, push_log, self._spark)
        return self._offline

    @property
    def online(self) -> OnlineService:
        if self._online is None:
            push_log = self.push_log
            with self._engines_lock:
                if self._online is None:
                    from feature_store.online.service import OnlineService

                    self._online = OnlineService(self.config, self.repo_path, self.registry, push_log)
        return self._online

    # --- definitions --------------------------------------------------------------------------

    def load_definitions(self, objects: Iterable[Definition] | None = None) -> Catalog:
        """The desired definitions: the given objects, or every definition in the repo's *.py files."""
        return load_repo(self.repo_path) if objects is None else Catalog.build(objects)

    def plan(self, objects: Iterable[Definition] | None = None) -> Plan:
        """The diff between the registry and the desired definitions, checked against the data sources, whose
        columns the plan records (serving reads them from the registry, never from the data)."""
        from feature_store.query import check_view

        desired = self.load_definitions(objects)
        desired = desired.with_schemas({name: self.offline.source_schema(source)
                                        for name, source in desired.batch_sources().items()})
        for view in desired.views.values():
            check_view(desired, view)
        version, current = self.registry.catalog()
        return make_plan(self.project, version, current, desired)

    def apply(self, objects: Iterable[Definition] | Plan | None = None) -> Plan:
        """Register the desired definitions (the full set: what is not in it is removed) in one transaction."""
        plan = objects if isinstance(objects, Plan) else self.plan(objects)
        if not plan.is_empty:
            self.registry.apply(plan)
            self._serving = None
        return plan

    def catalog(self) -> Catalog:
        version, catalog = self.registry.catalog()
        if version == 0:
            raise NotAppliedError(
                f"project {self.project!r} has no registered definitions; run 'feature-store apply' first.",
                project=self.project,
            )
        return catalog

    def offline_catalog(self) -> Catalog:
        """The registry's catalog, with the columns of sources the registry has none recorded for (an earlier
        version did not record them) read from the data: offline work reads it anyway."""
        catalog = self.catalog()
        missing = {name: source for name, source in catalog.batch_sources().items() if name not in catalog.schemas}
        if not missing:
            return catalog
        return catalog.with_schemas({name: self.offline.source_schema(source) for name, source in missing.items()})

    def get_feature_view(self, name: str) -> FeatureView:
        return self.catalog().view(name)

    def get_feature_service(self, name: str) -> FeatureService:
        return self.catalog().service(name)

    def list_feature_views(self) -> list[FeatureView]:
        return list(self.catalog().views.values())

    # --- training sets ------------------------------------------------------------------------

    def get_historical_features(
        self, entity_df: Any, features: FeatureRefs, full_feature_names: bool = False,
        available_before: datetime | None = None, *, pushed_before: datetime | None = None,
    ) -> RetrievalJob:
        """Point-in-time-correct feature values for each entity row, as of its event_timestamp.

        ``available_before`` computes them over the data as it was at that time: only source rows whose
        timestamp and created time are earlier count (what an online store materialized then holds).
        ``pushed_before`` (with it) lets events pushed to a PushSource count up to that later time: what
        an online value holds after materializing at ``available_before`` and pushing since.
        """
        catalog = self.offline_catalog()
        resolved = resolve_features(catalog, features, full_feature_names)
        if isinstance(entity_df, str) and is_sql(entity_df) and not self.offline.capabilities.sql_entity_rows:
            raise EntityDataFrameError(
                f"the {self.offline.name} offline engine cannot run SQL for entity rows; pass a DataFrame, an Arrow "
                "table or a parquet path.", engine=self.offline.name,
            )
        return self.offline.historical_features(catalog, entity_df, resolved, available_before, pushed_before)

    # --- materialization ----------------------------------------------------------------------

    def materialize(
        self,
        end: datetime | None = None,
        views: Sequence[str] | None = None,
        full: bool = False,
        progress: ProgressCallback | None = None,
        online: bool = True,
    ) -> list[MaterializeResult]:
        """Materialize up to ``end`` (default now): per-hop tiles and snapshot history into the offline
        store, then (unless ``online=False``) per-entity values into the online store."""
        catalog = self.offline_catalog()
        names = list(views) if views else list(catalog.views)
        for name in names:
            catalog.view(name)
        end = end or datetime.now(UTC)
        # Compacting first keeps the log materialization reads small; its values do not change by it
        pushed = {catalog.source_of(catalog.view(n)).name for n in names} & self._push_source_names(catalog)
        for source in sorted(pushed):  # checked push sources of the catalog in hand: no second registry read
            self.push_log.compact(source)
        results: list[MaterializeResult] = []
        if self.offline.capabilities.materialized_tiles:  # an engine without offline tiles computes from events
            results.extend(self.offline.materialize(catalog, names, end, full, progress))
        if online:
            results.extend(self.online.materialize(self.offline, catalog, names, end, full, progress))
            self._serving = None  # a generation may have gone live: reads see it at once
        return results

    def compact(self, sources: Sequence[str] | None = None) -> list[CompactResult]:
        """Fold the push log's sealed tail into parquet parts partitioned by day (docs/push.md, "The push log"), for
        these push sources (default: every registered one, and any with a log left behind). Safe to kill at any
        point and to run beside pushes, materializations and other compactions."""
        if sources is None:
            names = sorted(self._push_source_names(self.catalog()) | set(self.push_log.sources()))
        else:
            catalog = self.catalog()
            names = [catalog.push_source(s).name for s in sources]
        return [self.push_log.compact(name) for name in names]

    @staticmethod
    def _push_source_names(catalog: Catalog) -> set[str]:
        return {name for name, source in catalog.sources.items() if isinstance(source, PushSource)}

    # --- online serving ----------------------------------------------------------------------

    def get_online_features(
        self, features: FeatureRefs, entity_rows: Any, full_feature_names: bool = False,
        now: datetime | None = None,
    ) -> OnlineResponse:
        """Feature values for entity rows at ``now`` (default: the current time), from the online store.

        ``entity_rows``: ``[{join_key: value}, ...]``, ``{join_key: [values]}`` or a polars DataFrame.

        The registry is consulted at most every ``REGISTRY_REFRESH_SECONDS``, not per request.
        """
        version, catalog = self._serving_catalog()
        response = self.online.get(catalog, version, features, entity_rows, full_feature_names, now)
        if self.served_log is not None:  # its body on a deque (its request time: the response's)
            self.served_log.record(features, full_feature_names, response, self.online.current_state)
        return response

    async def get_online_features_async(
        self, features: FeatureRefs, entity_rows: Any, full_feature_names: bool = False,
        now: datetime | None = None,
    ) -> OnlineResponse:
        """``get_online_features`` for asyncio code: the event loop runs other tasks while Redis answers,
        and concurrent calls share one pipelined connection per loop. Same values, statuses and errors."""
        version, catalog = self._serving_catalog()
        response = await self.online.get_async(catalog, version, features, entity_rows, full_feature_names, now)
        if self.served_log is not None:
            self.served_log.record(features, full_feature_names, response, self.online.current_state)
        return response

    def online_body(self, features: FeatureRefs, entity_rows: Any, full_feature_names: bool,
                    now: datetime | None, encode: Callable[[OnlineResponse], bytes]) -> bytes:
        """For servers: ``get_online_features`` encoded by ``encode``; the served-value log keeps the encoded
        body itself, so a logged read costs the serving process no second encoding."""
        version, catalog = self._serving_catalog()
        response = self.online.get(catalog, version, features, entity_rows, full_feature_names, now)
        body = encode(response)
        if self.served_log is not None:
            self.served_log.record_body(features, full_feature_names, response, body, self.online.current_state)
        return body

    async def online_body_async(self, features: FeatureRefs, entity_rows: Any, full_feature_names: bool,
                                now: datetime | None, encode: Callable[[OnlineResponse], bytes]) -> bytes:
        """``online_body`` on an event loop."""
        version, catalog = self._serving_catalog()
        response = await self.online.get_async(catalog, version, features, entity_rows, full_feature_names, now)
        body = encode(response)
        if self.served_log is not None:
            self.served_log.record_body(features, full_feature_names, response, body, self.online.current_state)
        return body

    def _serving_catalog(self) -> tuple[int, Catalog]:
        if self._serving is None or time.monotonic() - self._serving[0] > self.registry_refresh_seconds:
            self.refresh_serving()
        if self._serving is None:  # refresh_serving raised or set it
            raise NotAppliedError(f"project {self.project!r} has no registered definitions.")
        return self._serving[1], self._serving[2]

    def refresh_serving(self) -> int:
        """Reload the catalog that serving uses from the registry now; returns the registry version.

        Raises NotAppliedError when nothing is applied (and keeps the previous catalog, if any).
        """
        version, catalog = self.registry.catalog()
        if version == 0:
            self.catalog()  # raises the 'run apply first' error
        self.online.refresh()  # and which generation of each view the online store serves
        self._serving = (time.monotonic(), version, catalog)
        return version

    def serving_catalog(self) -> tuple[int, Catalog]:
        """The (version, catalog) that online reads use, reloaded as ``registry_refresh_seconds`` says."""
        return self._serving_catalog()

    def push(self, push_source_name: str, df: Any, to: PushTo = "online_and_offline", *,
             push_id: str | None = None) -> PushResult:
        """Feed events to a PushSource: ``df`` is a pandas or polars DataFrame, ``{column: [values]}`` or a list
        of row dicts.

        With ``to="online_and_offline"`` (the default) the rows are first appended durably to the offline
        log (training sets see them at any later time), then merged into the online values of every view
        over the source, atomically per entity: readable as soon as this returns. ``"offline"`` only
        logs them (online at the next materialize); ``"online"`` skips the log, so training sets never
        see them and the next materialize of their entities drops them, as Feast's online-only pushes.

        ``push_id`` (an idempotency key, e.g. a UUID per push) makes a retry safe: a push with the id of one made
        before counts once, online and in training sets, whatever point the earlier attempt reached, and its result
        says ``duplicate=True``; the same id with other rows raises PushIdConflictError (docs/push.md).
        """
        version, catalog = self._serving_catalog()
        return self.online.push(catalog, version, push_source_name, df, to, push_id)

    def verify(self, sample: int = 1000, views: Sequence[str] | None = None,
               now: datetime | None = None) -> VerifyReport:
        """Prove serving equals training: sampled entities read online vs computed offline at ``now``."""
        from feature_store.verify import verify

        return verify(self, sample, views, now)

    # --- monitoring (feature_store/monitoring/) ----------------------------------------------------

    def profile(self, table: Any) -> dict[str, Any]:
        """Statistics per feature of a table (DataFrame, Arrow table, parquet path); entity keys left out."""
        from feature_store.monitoring.profiles import profile_for

        return profile_for(self, table)

    def save_profile(self, name: str, table: Any) -> dict[str, Any]:
        """Profile ``table`` and save it in the registry under ``name`` (a reference for ``monitor``)."""
        from feature_store.monitoring.profiles import save_profile

        return save_profile(self, name, table)

    def load_profile(self, name: str) -> dict[str, Any]:
        from feature_store.monitoring.profiles import load_profile

        return load_profile(self, name)

    def served_features(self, start: datetime, end: datetime) -> pd.DataFrame:
        """The logged online reads served in [start, end) (``monitoring.log_served``): one row per entity row,
        with request_time, the entity keys, ``view__feature`` values and ``view__feature__status``."""
        return self.served_value_log().read(start, end)

    def compact_served_log(self) -> int:
        """Replace the served-value log's spool files (what serving processes write) by parquet files; returns
        how many. Reading the log does it too, for the days it reads."""
        return self.served_value_log().compact()

    def served_value_log(self) -> ServedLog:
        """The project's served-value log, for reading (this process's queued reads written first)."""
        from feature_store.config import served_log_dir
        from feature_store.monitoring.served_log import ServedLog

        log = self.served_log or ServedLog(served_log_dir(self.config, self.repo_path))
        if self.served_log is not None:
            log.flush()  # what this process served so far counts too
        return log

    def monitor(self, reference: str, current: str, record: bool = True) -> MonitorResult:
        """Drift of ``current`` against ``reference`` (each a parquet path, a saved profile name or
        ``served:START..END``) per feature, with each view's freshness; ``record`` keeps the PSIs for /metrics."""
        from feature_store.monitoring.monitor import monitor

        return monitor(self, reference, current, record)

    def skew(self, start: datetime, end: datetime, sample: int | None = None) -> SkewReport:
        """Logged reads of [start, end) recomputed offline at their request times: mismatches per feature."""
        from feature_store.monitoring.skew import skew

        return skew(self, start, end, sample)

    def freshness(self, now: datetime | None = None) -> list[ViewFreshness]:
        """Per view: its source's newest event, its online watermark and its last push, with their ages."""
        from feature_store.monitoring.freshness import freshness

        return freshness(self, now)

    def teardown(self) -> TeardownReport:
        """Remove everything the project stored: its online values (every layout's keys in the configured online
        store), the offline engine's materialized tables, its push sources' log and its registry rows. Source
        data is never touched. Safe to rerun after a crash (teardown.py); stop feature servers first."""
        from feature_store.teardown import teardown

        return teardown(self)

    def close(self) -> None:
        if self.served_log is not None:
            self.served_log.close()
        if self._online is not None:
            self._online.close()
        if self._offline is not None:
            self._offline.close()
        self.registry.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

