"""What ``feature-store monitor`` prints and writes: the tables (cli_output.Grid, readable at 80 columns), the
JSON file and the HTML page; the exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from feature_store.cli_output import Col, Grid
from feature_store.errors import MonitoringError

if TYPE_CHECKING:
    from feature_store.monitoring.monitor import MonitorResult
    from feature_store.monitoring.skew import SkewReport
    from feature_store.store import FeatureStore

DRIFT_EXIT = 3
SKEW_EXIT = 1
DEFAULT_SKEW_RANGE = "served:.."  # every logged read


def run(store: FeatureStore, console: Console, reference: str | None, current: str | None, json_path: Path | None,
        html_path: Path | None, fail_on_drift: bool, skew: bool, sample: int | None, record: bool = True) -> int:
    """Run the comparison (or the skew check), print and write what was asked; return the exit code."""
    if skew:
        return _skew(store, console, current or DEFAULT_SKEW_RANGE, json_path, sample)
    if reference is None or current is None:
        raise MonitoringError("monitor needs --reference and --current (a parquet file, a saved profile name or "
                              "served:START..END), or --skew.")
    from feature_store.monitoring.monitor import monitor

    with console.status("Profiling and comparing..."):
        result = monitor(store, reference, current, record)
    show(console, result)
    if json_path is not None:
        _write_json(json_path, result.to_json())
        console.print(f"Wrote {json_path}.", highlight=False)
    if html_path is not None:
        from feature_store.monitoring.report import render

        html_path.write_text(render(result), encoding="utf-8")
        console.print(f"Wrote {html_path}.", highlight=False)
    return DRIFT_EXIT if fail_on_drift and result.drift.drifted else 0


def show(console: Console, result: MonitorResult) -> None:
    from feature_store.monitoring.monitor import age_text

    drift = result.drift
    table = Grid(f"Drift of {result.current} against {result.reference}", "feature", Col("PSI", right=True),
                 "drifted", Col("nulls", right=True), "unseen")
    for name, f in drift.features.items():
        unseen = f"{f.unseen_share:.1%}: {', '.join(f.unseen[:3])}{' ...' if len(f.unseen) > 3 else ''}" \
            if f.unseen else ""
        table.add_row(name, f"{f.psi:.3f}", Text("yes", style="bold red") if f.drifted else Text("no"),
                      _null_change(f.null_share_reference, f.null_share_current), unseen)
    table.show(console)
    for what, names in (("only in the reference", drift.only_in_reference), ("only in the current table",
                                                                             drift.only_in_current),
                        ("a number on one side and a category on the other", drift.kind_changed)):
        if names:
            console.print(f"[yellow]Not compared, {what}:[/] {', '.join(names)}", highlight=False)
    if result.freshness:
        fresh = Grid("Freshness (age)", "view", Col("newest event", right=True), Col("online watermark", right=True),
                     Col("last push", right=True))
        for v in result.freshness:
            fresh.add_row(v.view, age_text(v.age(v.newest_event)), age_text(v.age(v.watermark)),
                          age_text(v.age(v.last_push)))
        fresh.show(console)
    if drift.drifted:
        console.print(f"[bold red]{len(drift.drifted)} feature(s) drifted:[/] {', '.join(drift.drifted)}",
                      highlight=False)
    else:
        console.print("[green]No feature drifted.[/]")


def _null_change(before: float, after: float) -> str:
    if before == after:
        return f"{after:.1%}"
    return f"{before:.1%} -> {after:.1%}"


def _skew(store: FeatureStore, console: Console, current: str, json_path: Path | None, sample: int | None) -> int:
    from feature_store.monitoring.monitor import SERVED, served_range
    from feature_store.monitoring.skew import skew

    if not current.startswith(SERVED):
        raise MonitoringError(f"--skew compares logged reads: --current must be served:START..END, not {current!r}.")
    start, end = served_range(current[len(SERVED):])
    with console.status("Recomputing logged reads offline..."):
        report = skew(store, start, end, sample)
    show_skew(console, report)
    if json_path is not None:
        _write_json(json_path, {"skew": {name: f.to_dict() for name, f in report.features.items()},
                                "not_materialized": report.not_materialized})
        console.print(f"Wrote {json_path}.", highlight=False)
    return 0 if report.ok else SKEW_EXIT


def show_skew(console: Console, report: SkewReport) -> None:
    examples = any(f.examples for f in report.features.values())
    table = Grid("Served vs recomputed offline", "feature", Col("compared", right=True),
                 Col("mismatches", right=True), Col("rate", right=True), *(["example"] if examples else []))
    for name, f in report.features.items():
        style = "red" if f.mismatches else ""
        table.add_row(name, f"{f.compared:,}", Text(f"{f.mismatches:,}", style=style), f"{f.mismatch_rate:.2%}",
                      *([f.examples[0] if f.examples else ""] if examples else []))
    table.show(console)
    for view, rows in report.not_materialized.items():
        console.print(f"[yellow]{view}: {rows:,} logged rows were served before it was materialized; not "
                      "compared.[/]", highlight=False)
    if report.ok:
        console.print("[green]Every logged value equals its offline recomputation.[/]")


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")
