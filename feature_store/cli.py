"""The ``feature-store`` command line: acts on the repo in the current folder or --repo PATH."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import click
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from feature_store import example
from feature_store.aggregations import Aggregation
from feature_store.definitions import FileSource, kind_of, to_spec
from feature_store.durations import format_duration
from feature_store.errors import FeatureStoreError, PushDataError
from feature_store.plan import Plan
from feature_store.store import FeatureStore

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def _store(ctx: click.Context) -> FeatureStore:
    if "store" not in ctx.obj:
        ctx.obj["store"] = FeatureStore(ctx.obj["repo"])
        ctx.call_on_close(ctx.obj["store"].close)
    store: FeatureStore = ctx.obj["store"]
    return store


@contextmanager
def _errors() -> Iterator[None]:
    """A FeatureStoreError is the user's to fix: print it plainly and exit 1, no traceback."""
    try:
        yield
    except FeatureStoreError as exc:
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--repo", "repo", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="The feature repo (the folder holding feature_store.yaml).")
@click.version_option(package_name="feature-store")
@click.pass_context
def main(ctx: click.Context, repo: Path) -> None:
    """Feature store: define features once, get point-in-time-correct training sets."""
    ctx.ensure_object(dict)
    ctx.obj["repo"] = repo


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
@click.option("--customers", default=2_000, show_default=True)
@click.option("--days", default=180, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.pass_context
def generate_data(ctx: click.Context, customers: int, days: int, seed: int) -> None:
    """Write the example transactions, profiles and entity rows into the repo's data/ folder."""
    _generate(ctx.obj["repo"] / "data", customers, days, seed)


def _generate(data_dir: Path, customers: int, days: int, seed: int) -> None:
    with console.status("Generating example data..."):
        data = example.generate(data_dir, customers=customers, days=days, seed=seed)
    console.print(
        f"Wrote {data.n_transactions:,} transactions of {data.n_customers:,} customers, profiles and entity rows "
        f"to {data_dir}."
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
    table = Table(title=f"Plan for project {plan.project!r} (registry version {plan.base_version})")
    for column in ("action", "kind", "name", "changed", "rebuilds materialized data of"):
        table.add_column(column)
    colours = {"add": "green", "change": "yellow", "remove": "red"}
    for change in plan.changes:
        table.add_row(f"[{colours[change.action]}]{change.action}[/]", change.kind.replace("_", " "), change.name,
                      ", ".join(change.fields), ", ".join(change.invalidates))
    console.print(table)


@main.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Tables of the registered entities, sources, feature views, features and services."""
    with _errors():
        catalog = _store(ctx).catalog()
        entities = _table("Entities", "name", "join keys", "description")
        for e in catalog.entities.values():
            entities.add_row(e.name, ", ".join(e.join_keys), e.description)
        sources = _table("Sources", "name", "reads", "timestamp", "created")
        for s in catalog.sources.values():
            b = catalog.batch_source(s)
            reads = b.path if isinstance(b, FileSource) else (b.table or "query")
            if b is not s:
                reads = f"pushed events + {b.name} ({reads})"
            sources.add_row(s.name, reads, b.timestamp_field, b.created_timestamp_field or "")
        views = _table("Feature views", "name", "kind", "entities", "source", "features", "ttl")
        features = _table("Features", "reference", "function", "column", "window", "hop")
        for v in catalog.views.values():
            views.add_row(v.name, "aggregation" if v.is_aggregation else "snapshot", ", ".join(v.entity_names),
                          v.source_name, str(len(v.features)), format_duration(v.ttl) if v.ttl else "")
            for f in v.features:
                if isinstance(f, Aggregation):
                    features.add_row(f"{v.name}:{f.name}", f.function, f.column or "*",
                                     format_duration(f.window), format_duration(f.effective_hop(v.hop)))
                else:
                    features.add_row(f"{v.name}:{f.name}", "latest", f.name, "", "")
        services = _table("Feature services", "name", "features")
        for svc in catalog.services.values():
            services.add_row(svc.name, ", ".join(f"{p.view}:{f}" for p in svc.projections for f in p.features))
        for table in (entities, sources, views, features, services):
            console.print(table)


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    return table


@main.command()
@click.argument("name")
@click.pass_context
def describe(ctx: click.Context, name: str) -> None:
    """Show one registered object (view, service, entity or source) in full."""
    with _errors():
        obj = _store(ctx).catalog().find(name)
        kind = kind_of(obj).replace("_", " ")
        table = _table(f"{kind} {name!r}", "field", "value")
        spec = to_spec(obj)
        for key, value in spec.items():
            if key == "features" and isinstance(value, list):
                value = "\n".join(_describe_feature(item) for item in value)
            table.add_row(key, str(value))
        console.print(table)


def _describe_feature(item: dict[str, Any]) -> str:
    if "kind" in item:
        window = item["window"] or "lifetime"
        return f"{item['name']} = {item['kind']}({item['column'] or '*'}) over {window}" + (
            f", hop {item['hop']}" if item.get("hop") else "")
    if "view" in item:
        return f"{item['view']}: {', '.join(item['features'])}"
    return f"{item['name']}: {item['dtype']}"


@main.command()
@click.option("--end", type=click.DateTime(), help="Materialize up to this time (UTC; default now).")
@click.option("--views", help="Comma-separated view names (default: all).")
@click.option("--full", is_flag=True, help="Rebuild from scratch instead of continuing from the watermark.")
@click.pass_context
def materialize(ctx: click.Context, end: datetime | None, views: str | None, full: bool) -> None:
    """Write per-hop tiles and snapshot history into the offline DuckDB, incrementally."""
    with _errors(), _progress() as progress:
        tasks: dict[str, Any] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = progress.add_task(what, total=total)
            progress.update(tasks[what], completed=done)

        end_utc = end.replace(tzinfo=UTC) if end else None
        names = [v.strip() for v in views.split(",")] if views else None
        results = _store(ctx).materialize(end=end_utc, views=names, full=full, progress=report)
    table = _table("Materialized", "view", "part", "from", "to", "rows written", "rebuilt")
    for r in results:
        table.add_row(r.view, r.part, str(r.previous_watermark or "start"), str(r.watermark), f"{r.rows_written:,}",
                      "yes" if r.rebuilt else "")
    console.print(table)


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
        table = _table("Online features", "feature", *(f"{k}={v}" for k, v in _entity_labels(rows)))
        for name, values in response.values.items():
            cells = [f"{_cell(v)} [dim]{s}[/]" for v, s in zip(values, response.statuses[name], strict=True)]
            table.add_row(name, *cells)
        console.print(table)


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
    table = _table(f"Online vs offline at {report.now:%Y-%m-%d %H:%M:%S} UTC", "view", "feature", "compared",
                   "mismatches", "null mismatches", "mean rel. diff", "example")
    for c in report.checks:
        style = "" if c.ok else "[red]"
        table.add_row(c.view, c.feature, f"{c.compared:,}", f"{style}{c.mismatches}", f"{style}{c.null_mismatches}",
                      f"{c.mean_relative_difference:.2e}", c.example)
    console.print(table)
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
@click.argument("push_source")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Rows to push: a .parquet, .csv or .json (records or JSON lines) file.")
@click.option("--to", type=click.Choice(["online_and_offline", "offline", "online"]), default="online_and_offline",
              show_default=True, help="Where the rows go; 'online' alone is never trained on.")
@click.pass_context
def push(ctx: click.Context, push_source: str, path: Path, to: str) -> None:
    """Push the rows of a file to PUSH_SOURCE: logged offline, then merged into the online values."""
    with _errors():
        rows = _read_rows(path)
        result = _store(ctx).push(push_source, rows, to=to)  # type: ignore[arg-type]
    console.print(f"Pushed {result.rows:,} row(s) to {push_source!r} ({to}) at {result.pushed_at:%Y-%m-%d %H:%M:%S.%f}"
                  f" UTC; {result.online_updates:,} online value(s) updated.")


def _read_rows(path: Path) -> pd.DataFrame:
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
    table = Table(title=title, title_justify="left")
    table.add_column("column", style="bold", no_wrap=True, min_width=max(len(str(c)) for c in df.columns))
    for i in range(len(df)):
        table.add_column(f"row {i}", justify="right")
    for column in df.columns:
        table.add_row(str(column), *(_cell(v) for v in df[column]))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "[dim]null[/]"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


if __name__ == "__main__":
    main()
