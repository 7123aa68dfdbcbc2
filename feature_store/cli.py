"""The ``feature-store`` command line: acts on the repo in the current folder or --repo PATH.

Start-up time matters here (every command is a new process): this module imports only click, rich and the
light parts of the package; the store, definitions, pandas and the engines are imported by the commands
that use them (tests/test_cli_startup.py checks which modules ``--help`` loads).
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from feature_store.cli_output import Col, Grid
from feature_store.durations import format_duration
from feature_store.errors import FeatureStoreError, PushDataError

if TYPE_CHECKING:
    import pandas as pd
    from rich.progress import Progress

    from feature_store.plan import Plan
    from feature_store.store import FeatureStore

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _store(ctx: click.Context) -> FeatureStore:
    from feature_store.store import FeatureStore

    if "store" not in ctx.obj:
        ctx.obj["store"] = FeatureStore(ctx.obj["repo"])
        ctx.call_on_close(ctx.obj["store"].close)
    store: FeatureStore = ctx.obj["store"]
    return store


@contextmanager
def _errors() -> Iterator[None]:
    """A FeatureStoreError is the user's to fix: print it plainly and exit 1; the traceback only with --debug."""
    try:
        yield
    except FeatureStoreError as exc:
        context = click.get_current_context(silent=True)
        debug = bool(context and context.find_root().obj and context.find_root().obj.get("debug"))
        hint = ""
        if debug:
            err_console.print("".join(traceback.format_exception(exc)), end="", markup=False, highlight=False,
                              soft_wrap=True)
        elif exc.__cause__ is not None and not isinstance(exc.__cause__, FeatureStoreError):
            hint = " [dim](--debug prints the traceback)[/]"  # the cause is in code: user code, DuckDB, a driver
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(exc.message)}{hint}", highlight=False,
                          soft_wrap=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The feature repo (the folder holding feature_store.yaml).")
@click.option("--debug", is_flag=True, help="On an error, also print its traceback (with the causes).")
@click.version_option(package_name="feature-store")
@click.pass_context
def main(ctx: click.Context, repo: Path, debug: bool) -> None:
    """Feature store: define features once, get point-in-time-correct training sets."""
    global console, err_console
    # made again each run: a console fixes its width (COLUMNS) when made, and a process may run many commands
    console, err_console = Console(), Console(stderr=True)
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo
    ctx.obj["debug"] = debug


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=Path("feature_repo"))
@click.option("--project", help="Project name (default: the folder's name).")
@click.option("--no-data", is_flag=True, help="Do not generate the example data.")
def init(directory: Path, project: str | None, no_data: bool) -> None:
    """Scaffold a feature repo in DIRECTORY with example definitions and data."""
    with _errors():
        if (directory / "feature_store.yaml").exists():
            raise click.ClickException(f"{directory} already holds a feature_store.yaml; not overwriting it.")
        directory.mkdir(parents=True, exist_ok=True)
        template = resources.files("feature_store") / "templates" / "repo"
        for name in ("feature_store.yaml", "features.py"):
            (directory / name).write_text(template.joinpath(name).read_text())
        name = project or re.sub(r"\W", "_", directory.resolve().name).strip("_") or "demo"
        config = directory / "feature_store.yaml"
        config.write_text(config.read_text().replace("project: demo", f"project: {name}"))
        console.print(f"Created feature repo [bold]{directory}[/] (project {name!r}).")
        if not no_data:
            _generate(directory / "data", 2_000, 180, 7)
        console.print(f"Next: [bold]cd {directory} && feature-store apply[/]")


@main.command("generate-data")
@click.option("--customers", default=2_000, show_default=True, type=click.IntRange(1), help="Card holders.")
@click.option("--days", default=180, show_default=True, type=click.IntRange(1), help="Days of transactions.")
@click.option("--seed", default=7, show_default=True, help="Same seed and --end: the same files.")
@click.option("--end", type=click.DateTime(), help="When the data ends, as exported then (UTC; default: the current "
              "hour, so that windows ending now hold data).")
@click.pass_context
def generate_data(ctx: click.Context, customers: int, days: int, seed: int, end: datetime | None) -> None:
    """Write the example transactions, profiles and entity rows into the repo's data/ folder."""
    _generate(ctx.obj["repo"] / "data", customers, days, seed, end.replace(tzinfo=UTC) if end else None)


def _generate(data_dir: Path, customers: int, days: int, seed: int, end: datetime | None = None) -> None:
    from feature_store import example

    with console.status("Generating example data..."):
        data = example.generate(data_dir, customers=customers, days=days, seed=seed, end=end)
    console.print(
        f"Wrote {data.n_transactions:,} transactions of {data.n_customers:,} customers from {_time(data.start)} to "
        f"{_time(data.end)} UTC, profiles and entity rows to {data_dir}.", highlight=False,
    )


@main.command()
@click.pass_context
def plan(ctx: click.Context) -> None:
    """Show what apply would change in the registry (and which materialized data it invalidates)."""
    with _errors():
        _print_plan(_store(ctx).plan())


@main.command()
@click.pass_context
def apply(ctx: click.Context) -> None:
    """Register the repo's definitions (one transaction; what the repo no longer has is removed)."""
    with _errors():
        store = _store(ctx)
        result = store.apply()
        _print_plan(result)
        if not result.is_empty:
            console.print(f"[green]Applied.[/] Registry of project {store.project!r} is at version "
                          f"{store.registry.version()}.")


def _print_plan(plan: Plan) -> None:
    if plan.is_empty:
        console.print(f"No changes: the registry of project {plan.project!r} matches the repo.")
        return
    table = Grid(f"Plan for project {plan.project!r} (registry version {plan.base_version})",
                 "action", "kind", "name", "changed", "rebuilds materialized data of")
    colours = {"add": "green", "change": "yellow", "remove": "red"}
    for change in plan.changes:
        changed = "\n".join(d.describe() for d in change.diffs) or ", ".join(change.fields)  # a line per field
        table.add_row(Text(change.action, style=colours[change.action]), change.kind.replace("_", " "), change.name,
                      changed, ", ".join(change.invalidates))
    table.show(console)
    if plan.readers:
        readers = Grid("Until materialize builds them, online readers see", "view", "features", "read")
        for seen in plan.readers:
            for names, what in seen.rows():
                readers.add_row(seen.view, names, what)
        readers.show(console)


@main.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Tables of the registered entities, sources, feature views, features and services."""
    from feature_store.aggregations import Aggregation
    from feature_store.definitions import FileSource

    with _errors():
        catalog = _store(ctx).catalog()
        entities = Grid("Entities", "name", "join keys", "description")
        for e in catalog.entities.values():
            entities.add_row(e.name, ", ".join(e.join_keys), e.description)
        sources = Grid("Sources", "name", "reads", "timestamp", "created")
        for s in catalog.sources.values():
            b = catalog.batch_source(s)
            reads = b.path if isinstance(b, FileSource) else (b.table or "query")
            if b is not s:
                reads = f"pushed events + {b.name} ({reads})"
            sources.add_row(s.name, reads, b.timestamp_field, b.created_timestamp_field or "")
        views = Grid("Feature views", "name", "kind", "entities", "source", Col("features", right=True), "ttl")
        features = Grid("Features", "reference", "function", "column", "window", "hop")
        for v in catalog.views.values():
            views.add_row(v.name, "aggregation" if v.is_aggregation else "snapshot", ", ".join(v.entity_names),
                          v.source_name, str(len(v.features)), format_duration(v.ttl) if v.ttl else "")
            for f in v.features:
                if isinstance(f, Aggregation):
                    features.add_row(f"{v.name}:{f.name}", f.function, f.column or "*",
                                     format_duration(f.window), format_duration(f.effective_hop(v.hop)))
                else:
                    features.add_row(f"{v.name}:{f.name}", "latest", f.name, "", "")
        services = Grid("Feature services", "name", "features")
        for svc in catalog.services.values():
            services.add_row(svc.name, ", ".join(f"{p.view}:{f}" for p in svc.projections for f in p.features))
        for n, table in enumerate((entities, sources, views, features, services)):
            if n:
                console.print()
            table.show(console)


@main.command()
@click.argument("name")
@click.pass_context
def describe(ctx: click.Context, name: str) -> None:
    """Show one registered object (view, service, entity or source) in full."""
    from feature_store.definitions import kind_of, to_spec

    with _errors():
        obj = _store(ctx).catalog().find(name)
        kind = kind_of(obj).replace("_", " ")
        table = Grid(f"{kind} {name!r}", "field", "value")
        spec = to_spec(obj)
        for key, value in spec.items():
            if key == "features" and isinstance(value, list):
                value = "\n".join(_describe_feature(item) for item in value)
            table.add_row(key, str(value))
        table.show(console)


def _describe_feature(item: dict[str, Any]) -> str:
    if "kind" in item:
        window = item["window"] or "lifetime"
        return f"{item['name']} = {item['kind']}({item['column'] or '*'}) over {window}" + (
            f", hop {item['hop']}" if item.get("hop") else "")
    if "view" in item:
        return f"{item['view']}: {', '.join(item['features'])}"
    return f"{item['name']}: {item['dtype']}"


@main.command()
@click.option("--sources", help="Comma-separated push source names (default: all).")
@click.pass_context
def compact(ctx: click.Context, sources: str | None) -> None:
    """Fold the push log (and the served-value log) into parquet files partitioned by day.

    Each process's push log files are sealed a minute or so after it starts a new one; compaction folds sealed
    files (or, with a PostgreSQL push log, committed rows) into parquet, and deletes what an earlier run folded in
    once no reader can still be reading it. Training sets read the parquet files plus the tail. Safe to kill at
    any point and to run beside pushes; every materialize compacts first.
    """
    with _errors(), console.status("compacting the push log"):
        names = [s.strip() for s in sources.split(",")] if sources else None
        store = _store(ctx)
        results = store.compact(names)
        spooled = store.compact_served_log() if names is None else 0
    table = Grid("Compacted", "push source", Col("rows folded", right=True), Col("parts written", right=True),
                 Col("tail removed", right=True), Col("parts", right=True))
    for r in results:
        table.add_row(r.source, f"{r.rows:,}", str(r.parts_written), str(r.tail_removed), str(r.parts))
    table.show(console)
    if spooled:
        console.print(f"served-value log: {spooled:,} spool file(s) compacted into parquet")


@main.command()
@click.option("--end", type=click.DateTime(), help="Materialize up to this time (UTC; default now).")
@click.option("--views", help="Comma-separated view names (default: all).")
@click.option("--full", is_flag=True, help="Rebuild from scratch instead of continuing from the watermark.")
@click.pass_context
def materialize(ctx: click.Context, end: datetime | None, views: str | None, full: bool) -> None:
    """Write offline tiles and online values up to --end (default now), incrementally.

    Writes per-hop tiles and snapshot history into the offline DuckDB, then each entity's values into the
    online store (SQLite or Redis), so that get-online, verify and the feature server can read them.
    """
    with _errors(), _progress() as progress:
        tasks: dict[str, Any] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done)

        end_utc = end.replace(tzinfo=UTC) if end else None
        names = [v.strip() for v in views.split(",")] if views else None
        results = _store(ctx).materialize(end=end_utc, views=names, full=full, progress=report)
    table = Grid("Materialized", "view", "part", "from (UTC)", "to (UTC)", Col("rows written", right=True), "rebuilt")
    for r in results:
        table.add_row(r.view, r.part, _time(r.previous_watermark) if r.previous_watermark else "start",
                      _time(r.watermark), f"{r.rows_written:,}", "yes" if r.rebuilt else "")
    table.show(console)


@main.command("get-online")
@click.option("--entities", required=True,
              help="Join-key values: 'customer_id=1,2,3' (several keys: separate with ';').")
@click.option("--features", help="Comma-separated 'view:feature' references.")
@click.option("--service", help="A feature service name (instead of --features).")
@click.option("--now", type=click.DateTime(), help="Read as of this time (UTC; default now).")
@click.pass_context
def get_online(ctx: click.Context, entities: str, features: str | None, service: str | None,
               now: datetime | None) -> None:
    """Read features of entities from the online store, with statuses."""
    with _errors():
        if bool(features) == bool(service):
            raise click.UsageError("give exactly one of --features or --service")
        store = _store(ctx)
        refs: Any = store.get_feature_service(service) if service else [f.strip() for f in str(features).split(",")]
        rows: dict[str, list[str]] = {}
        for part in entities.split(";"):
            key, _, given = part.partition("=")
            rows[key.strip()] = [v.strip() for v in given.split(",")]
        response = store.get_online_features(refs, rows, now=now.replace(tzinfo=UTC) if now else None)
        table = Grid("Online features", "feature", *(Col(f"{k}={v}", right=True) for k, v in _entity_labels(rows)))
        for name, values in response.values.items():
            cells = [Text.assemble(_cell(v), " ", (s, "dim")) for v, s in zip(values, response.statuses[name],
                                                                             strict=True)]
            table.add_row(name, *cells)
        table.show(console)


def _entity_labels(rows: dict[str, list[str]]) -> list[tuple[str, str]]:
    keys = list(rows)
    return [("/".join(keys), "/".join(rows[k][i] for k in keys)) for i in range(len(rows[keys[0]]))]


@main.command("verify")
@click.option("--sample", default=1000, show_default=True, help="Entities sampled per view.")
@click.option("--views", help="Comma-separated view names (default: all).")
@click.pass_context
def verify_cmd(ctx: click.Context, sample: int, views: str | None) -> None:
    """Prove serving equals training: compare online values with offline ones at the same time.

    Exits with status 1 when any feature differs or a view has no online data.
    """
    with _errors():
        names = [v.strip() for v in views.split(",")] if views else None
        with console.status("Reading online and computing offline..."):
            report = _store(ctx).verify(sample=sample, views=names)
    examples = any(c.example for c in report.checks)  # a column only when something differs: 80 columns are few
    table = Grid(f"Online vs offline at {report.now:%Y-%m-%d %H:%M:%S} UTC", "view", "feature",
                 Col("compared", right=True), Col("mismatches", right=True), Col("null mismatches", right=True),
                 Col("mean rel. diff", right=True), *(["example"] if examples else []))
    for c in report.checks:
        style = "" if c.ok else "red"
        table.add_row(c.view, c.feature, f"{c.compared:,}", Text(str(c.mismatches), style=style),
                      Text(str(c.null_mismatches), style=style), f"{c.mean_relative_difference:.2e}",
                      *([c.example] if examples else []))
    table.show(console)
    for view, count in report.not_found.items():
        if count:
            console.print(f"[yellow]{view}: {count} sampled entities are not in the online store.[/]")
    for view in report.not_materialized:
        console.print(f"[red]{view}: not materialized online (or its definition or data changed since); "
                      "run feature-store materialize.[/]")
    if not report.ok:
        sys.exit(1)
    console.print("[green]Online values equal offline values.[/]")


@main.command()
@click.option("--reference", help="What the current table is compared with: a parquet file, a saved profile name "
              "(store.save_profile), served:START..END (logged reads) or source:VIEW:START..END (a view's source "
              "rows).")
@click.option("--current", help="The table to check, in the same forms (with --skew: served:START..END, default "
              "every logged read).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results as JSON to this file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML page with a plot per feature (opens offline).")
@click.option("--fail-on-drift", is_flag=True, help="Exit with status 3 when any feature drifted.")
@click.option("--record/--no-record", default=True, show_default=True, help="Keep each feature's PSI in the "
              "registry, where feature servers export the last one as a gauge.")
@click.option("--skew", is_flag=True, help="Instead: recompute logged served values offline at their request "
              "times and report mismatches per feature (exit status 1 when any).")
@click.option("--sample", type=click.IntRange(1), help="With --skew: at most this many logged rows per view "
              "(the latest).")
@click.pass_context
def monitor(ctx: click.Context, reference: str | None, current: str | None, json_path: Path | None,
            html_path: Path | None, fail_on_drift: bool, record: bool, skew: bool, sample: int | None) -> None:
    """Drift of features (PSI, unseen categories, null shares), freshness of views, and serve-time skew.

    Dates in served:START..END are UTC; a date as END includes that day (served:2026-12-01..2026-12-05).
    """
    with _errors():
        from feature_store.monitoring.terminal import run

        code = run(_store(ctx), console, reference, current, json_path, html_path, fail_on_drift, skew, sample,
                   record)
    if code:
        sys.exit(code)


@main.command()
@click.argument("push_source")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Rows to push: a .parquet, .csv or .json (records or JSON lines) file.")
@click.option("--to", type=click.Choice(["online_and_offline", "offline", "online"]), default="online_and_offline",
              show_default=True, help="Where the rows go; 'online' alone is never trained on.")
@click.option("--push-id", default=None, metavar="KEY",
              help="Idempotency key (e.g. a UUID): rerunning with the same key and file counts the rows once.")
@click.pass_context
def push(ctx: click.Context, push_source: str, path: Path, to: str, push_id: str | None) -> None:
    """Push the rows of a file to PUSH_SOURCE: logged offline, then merged into the online values."""
    with _errors():
        rows = _read_rows(path)
        result = _store(ctx).push(push_source, rows, to=to, push_id=push_id)  # type: ignore[arg-type]
    if result.duplicate:
        console.print(f"Push {push_id!r} was made before: its {result.rows:,} row(s) count once (pushed at "
                      f"{result.pushed_at:%Y-%m-%d %H:%M:%S.%f} UTC); {result.online_updates:,} online value(s) "
                      "completed now.")
        return
    console.print(f"Pushed {result.rows:,} row(s) to {push_source!r} ({to}) at {result.pushed_at:%Y-%m-%d %H:%M:%S.%f}"
                  f" UTC; {result.online_updates:,} online value(s) updated.")


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts, CI).")
@click.pass_context
def teardown(ctx: click.Context, yes: bool) -> None:
    """Remove everything the project stored: online values, materialized tables, push and served-value logs,
    registry rows (saved profiles included).

    Source data is never touched. Stop feature servers first. Asks to type the project name unless --yes; without
    a terminal, --yes is required. Safe to rerun after an interruption.
    """
    from feature_store.teardown import target

    with _errors():
        store = _store(ctx)
        what = target(store)
        table = Grid(f"Teardown of project {what.project!r} removes", "what", "where")
        table.add_row("online values", what.online)
        table.add_row("materialized tables", what.offline)
        table.add_row("push log", ", ".join(what.push_sources) or "(no push sources)")
        table.add_row("served-value log", what.served_log)
        table.add_row("registry rows (and saved profiles)", what.registry)
        table.show(console)
        if not yes:
            if not sys.stdin.isatty():
                raise click.UsageError("teardown asks for confirmation: run it in a terminal, or pass --yes")
            typed = click.prompt(f"Type the project name ({what.project}) to remove it", default="",
                                 show_default=False)
            if typed != what.project:
                err_console.print("Nothing removed: the name did not match.")
                sys.exit(1)
        with console.status("Removing..."):
            report = store.teardown()
    console.print(f"Removed project {report.project!r}: {report.online_keys:,} online key(s), "
                  f"{len(report.offline_tables)} materialized table(s), {report.push_log_files} push log file(s), "
                  f"{report.served_log_files} served-log file(s), "
                  f"{report.registry_rows} registry row(s).", highlight=False)


def _read_rows(path: Path) -> pd.DataFrame:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".json", ".jsonl", ".ndjson"):
            lines = suffix != ".json" or path.read_text().lstrip().startswith("{")
            # Values as written (timestamps are parsed against the schema later): pandas 3 says so with
            # dtype=False alone and deprecates convert_dates; pandas 2 still converts date-like columns without it.
            dates: dict[str, Any] = {"convert_dates": False} if pd.__version__.startswith("2.") else {}
            return pd.read_json(path, lines=lines, orient="records", dtype=False, **dates)
    except (OSError, ValueError) as exc:
        raise PushDataError(f"cannot read {path}: {exc}", path=str(path)) from exc
    raise PushDataError(f"{path}: push files must be .parquet, .csv, .json or .jsonl.", path=str(path))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs server.api_keys (or --insecure).")
@click.option("--port", default=6566, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (one per core is a good start).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log", is_flag=True, help="Log every request (costs throughput).")
@click.option("--insecure", is_flag=True,
              help="Serve beyond loopback without API keys (anyone who reaches the port can read and push).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, log_level: str, access_log: bool,
          insecure: bool) -> None:
    """Run the HTTP feature server (Feast-compatible /get-online-features and /push).

    Endpoints, authentication and limits: docs/server.md; the API itself: http://HOST:PORT/docs.
    """
    from feature_store.server.serve import serve as run_server  # FastAPI and uvicorn only when serving

    with _errors():
        run_server(ctx.obj["repo"], host, port, workers, log_level, access_log, insecure)


@contextmanager
def _progress() -> Iterator[Progress]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err_console, transient=False) as progress:
        yield progress


@main.command("training-set")
@click.option("--entities", required=True,
              help="Entity rows: a parquet file, or a SQL query run in the offline DuckDB.")
@click.option("--features", help="Comma-separated 'view:feature' references.")
@click.option("--service", help="A feature service name (instead of --features).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result to this parquet file.")
@click.option("--full-feature-names", is_flag=True, help="Name columns 'view__feature'.")
@click.option("--show", default=5, show_default=True, help="Rows to print.")
@click.pass_context
def training_set(ctx: click.Context, entities: str, features: str | None, service: str | None, output: Path | None,
                 full_feature_names: bool, show: int) -> None:
    """Build a point-in-time-correct training set and print (and optionally save) it."""
    with _errors():
        if bool(features) == bool(service):
            raise click.UsageError("give exactly one of --features or --service")
        store = _store(ctx)
        refs: Any = store.get_feature_service(service) if service else [f.strip() for f in str(features).split(",")]
        source: Any = entities
        if not entities.lstrip().lower().startswith(("select", "with", "from")):
            path = Path(entities)
            source = path if path.is_absolute() or path.exists() else ctx.obj["repo"] / path
        started = datetime.now(UTC)
        with console.status("Computing training set..."):
            df = store.get_historical_features(source, refs, full_feature_names=full_feature_names).to_df()
        seconds = (datetime.now(UTC) - started).total_seconds()
        if output:
            df.to_parquet(output, index=False)
        _print_frame(df.head(show), f"Training set: {len(df):,} rows x {len(df.columns)} columns in {seconds:.2f} s"
                     + (f", written to {output}" if output else ""))


def _print_frame(df: pd.DataFrame, title: str) -> None:
    """Rows as columns: training sets are wide and short to preview, so this reads on a terminal."""
    import pandas as pd

    table = Grid(title, "column", *(Col(f"row {i}", right=True) for i in range(len(df))))
    missing = (pd.NA, pd.NaT)
    for column in df.columns:
        table.add_row(str(column), *(_cell(None if any(v is m for m in missing) else v) for v in df[column]))
    table.show(console)


def _cell(value: Any) -> Text:
    if value is None or (isinstance(value, float) and value != value):
        return Text("null", style="dim")
    if isinstance(value, float):
        return Text(f"{value:,.2f}")
    if isinstance(value, datetime):  # pandas' Timestamp too
        return Text(_time(value))
    return Text(str(value))


def _time(value: datetime) -> str:
    """Seconds are enough to read; a time zone other than UTC is named."""
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    offset = value.utcoffset()
    return text if offset is None or not offset else f"{text} {value.strftime('%z')}"


if __name__ == "__main__":
    main()
