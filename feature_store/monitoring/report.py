"""The HTML report of ``feature-store monitor --html``: one self-contained page, a plot per feature.

Plots are plotly figures (the library draws them; nothing here draws), and plotly.js is inlined once, so the
page opens offline and loads nothing from anywhere. Numbers: the reference's and the current histogram as shares
of their rows; categories: the share of each value (the most frequent of both, unseen values marked).
"""

from __future__ import annotations

import html
import itertools
from typing import TYPE_CHECKING, Any

from feature_store.errors import MissingDependencyError

if TYPE_CHECKING:
    from feature_store.monitoring.monitor import MonitorResult

MAX_BARS = 25
REFERENCE_COLOUR, CURRENT_COLOUR = "#4C78A8", "#F58518"

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.drifted {{ color: #b00; font-weight: bold; }}
.feature {{ margin: 2em 0; }}
</style></head><body>
<h1>{title}</h1>
<p>Reference: <b>{reference}</b> ({reference_rows} rows) &middot; current: <b>{current}</b> ({current_rows} rows)
&middot; {drifted}</p>
{summary}
{freshness}
{plots}
</body></html>
"""


def render(result: MonitorResult) -> str:
    try:
        import plotly
    except ImportError as exc:
        raise MissingDependencyError("the HTML report needs plotly: pip install 'feature-store[monitoring]' "
                                     "(or pip install plotly).") from exc
    del plotly
    drift = result.drift
    plots = []
    for number, (name, feature) in enumerate(drift.features.items()):
        figure = _figure(name, result.reference_profile["features"][name], result.current_profile["features"][name],
                         feature.psi, feature.drifted)
        plots.append(f'<div class="feature">{figure.to_html(full_html=False, include_plotlyjs=number == 0)}</div>')
    drifted = drift.drifted
    return PAGE.format(
        title="Feature monitoring", reference=html.escape(result.reference), current=html.escape(result.current),
        reference_rows=f"{result.reference_profile['rows']:,}", current_rows=f"{result.current_profile['rows']:,}",
        drifted=(f'<span class="drifted">{len(drifted)} drifted: {html.escape(", ".join(drifted))}</span>'
                 if drifted else "no feature drifted"),
        summary=_summary(result), freshness=_freshness(result), plots="\n".join(plots))


def _figure(name: str, reference: dict[str, Any], current: dict[str, Any], psi: float, drifted: bool) -> Any:
    import plotly.graph_objects as go

    title = f"{name} — PSI {psi:.3f}{' (drifted)' if drifted else ''}"
    figure = go.Figure()
    if reference["kind"] == "numeric":
        sides = (("reference", reference, REFERENCE_COLOUR), ("current", current, CURRENT_COLOUR))
        for label, profile, colour in sides:
            edges, counts = profile["histogram"]["edges"], profile["histogram"]["counts"]
            total = max(sum(counts), 1)
            bins = list(itertools.pairwise(edges))
            figure.add_trace(go.Bar(x=[(a + b) / 2 for a, b in bins], y=[c / total for c in counts],
                                    width=[b - a for a, b in bins], name=label, marker_color=colour, opacity=0.55))
        figure.update_layout(barmode="overlay", xaxis_title=name)
    else:
        ref, cur = reference["frequencies"], current["frequencies"]
        ref_total, cur_total = max(int(reference["count"]), 1), max(int(current["count"]), 1)
        values = sorted(set(ref) | set(cur), key=lambda v: -(ref.get(v, 0) / ref_total + cur.get(v, 0) / cur_total))
        values = values[:MAX_BARS]
        labels = [v if v in ref else f"{v} (unseen)" for v in values]
        figure.add_trace(go.Bar(x=labels, y=[ref.get(v, 0) / ref_total for v in values], name="reference",
                                marker_color=REFERENCE_COLOUR))
        figure.add_trace(go.Bar(x=labels, y=[cur.get(v, 0) / cur_total for v in values], name="current",
                                marker_color=CURRENT_COLOUR))
        figure.update_layout(barmode="group", xaxis_title=name)
    figure.update_layout(title=title, yaxis_title="share of rows", yaxis_tickformat=".0%", height=360,
                         margin={"l": 60, "r": 20, "t": 50, "b": 50}, template="plotly_white")
    return figure


def _summary(result: MonitorResult) -> str:
    rows = []
    for name, f in result.drift.features.items():
        unseen = ", ".join(f.unseen[:5]) + (" ..." if len(f.unseen) > 5 else "")
        marked = " class='drifted'" if f.drifted else ""
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{f.kind}</td><td class='num'>{f.psi:.3f}</td>"
            f"<td class='num'>{f.threshold:g}</td><td{marked}>"
            f"{'yes' if f.drifted else 'no'}</td><td class='num'>{f.null_share_reference:.1%} &rarr; "
            f"{f.null_share_current:.1%}</td><td class='num'>{f.unseen_share:.1%}</td>"
            f"<td>{html.escape(unseen)}</td></tr>")
    head = ("<tr><th>feature</th><th>kind</th><th>PSI</th><th>threshold</th><th>drifted</th><th>null share</th>"
            "<th>unseen share</th><th>unseen values</th></tr>")
    return f"<h2>Drift</h2><table>{head}{''.join(rows)}</table>"


def _freshness(result: MonitorResult) -> str:
    if not result.freshness:
        return ""
    from feature_store.monitoring.monitor import age_text

    rows = "".join(
        f"<tr><td>{html.escape(v.view)}</td><td class='num'>{age_text(v.age(v.newest_event))}</td>"
        f"<td class='num'>{age_text(v.age(v.watermark))}</td><td class='num'>{age_text(v.age(v.last_push))}</td></tr>"
        for v in result.freshness)
    head = "<tr><th>view</th><th>newest event</th><th>online watermark</th><th>last push</th></tr>"
    return f"<h2>Freshness (age)</h2><table>{head}{rows}</table>"
