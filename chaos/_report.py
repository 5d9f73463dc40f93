"""The chaos report: ``report.json`` (every figure and violation) and ``report.html``
(a self-contained page with an SVG timeline: operation latency and outcome over time,
fault windows shaded, fences marked)."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any

_OUTCOME_COLOR = {"ok": "#2a9d4b", "fail": "#d62828", "unknown": "#f4a300"}
_FAULT_COLOR = {
    "kill": "#e63946",
    "pause": "#6c757d",
    "partition": "#457b9d",
    "packet_loss": "#8ecae6",
    "resync": "#9b5de5",
    "tamper": "#f15bb5",
    "disk": "#ff7f11",
    "corrupt": "#7b2cbf",
    "compaction": "#bc4749",
    "member": "#2a9d8f",
}


def _fault_color(kind: str) -> str:
    for prefix, color in _FAULT_COLOR.items():
        if kind.startswith(prefix):
            return color
    return "#adb5bd"


def write_report(
    directory: str, summary: dict[str, Any], ops: list[dict[str, Any]], config_log: Sequence[dict[str, Any]] = ()
) -> tuple[str, str]:
    """Write report.json, history.jsonl, config_log.jsonl (the watched changes the
    data-plane checker judged against, each with the node that delivered it) and
    report.html into ``directory``; returns the JSON and HTML paths."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config_log.jsonl"), "w") as f:
        for event in config_log:
            f.write(json.dumps(event, default=str) + "\n")
    json_path = os.path.join(directory, "report.json")
    with open(json_path, "w") as f:
        json.dump({**summary, "history_size": len(ops)}, f, indent=2, default=str)
    with open(os.path.join(directory, "history.jsonl"), "w") as f:
        for op in ops:
            f.write(json.dumps(op, default=str) + "\n")
    html_path = os.path.join(directory, "report.html")
    with open(html_path, "w") as f:
        f.write(render_html(summary, ops))
    return json_path, html_path


def timeline_svg(summary: dict[str, Any], ops: list[dict[str, Any]], width: int = 1100, height: int = 420) -> str:
    left, right, top, bottom = 60, 20, 20, 40
    duration = float(max([summary.get("duration_s", 1.0)] + [o["complete"] or o["invoke"] for o in ops] + [1.0]))
    plot_w, plot_h = width - left - right, height - top - bottom
    lat_min, lat_max = 0.0005, 5.0

    def x(t: float) -> float:
        return left + plot_w * max(0.0, min(1.0, t / duration))

    def y(latency: float) -> float:
        lat = max(lat_min, min(lat_max, latency))
        frac = (math.log10(lat) - math.log10(lat_min)) / (math.log10(lat_max) - math.log10(lat_min))
        return top + plot_h * (1 - frac)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for fault in summary["faults"]["executed"]:
        end = fault["end"] if fault["end"] is not None else duration
        x0, x1 = x(fault["start"]), x(end)
        title = html.escape(f"{fault['kind']} {fault['target']} {fault['start']:.1f}-{end:.1f}s {fault['detail']}")
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{max(1.0, x1 - x0):.1f}" height="{plot_h}" '
            f'fill="{_fault_color(fault["kind"])}" opacity="0.18"><title>{title}</title></rect>'
        )
    for op in ops:
        complete = op["complete"] if op["complete"] is not None else op["invoke"] + 3.0
        color = _OUTCOME_COLOR.get(op["outcome"], "#000")
        parts.append(
            f'<circle cx="{x(op["invoke"]):.1f}" cy="{y(complete - op["invoke"]):.1f}" r="1.6" '
            f'fill="{color}" opacity="0.6"/>'
        )
    for event in summary.get("fence_events", []):
        if event["type"] not in ("fenced", "unfenced"):
            continue
        ex = x(event["at"])
        color = "#d62828" if event["type"] == "fenced" else "#2a9d4b"
        label = html.escape(f"{event['type']} {event['protocol']} on {event['node']} at {event['at']:.2f}s")
        parts.append(
            f'<line x1="{ex:.1f}" x2="{ex:.1f}" y1="{top}" y2="{top + 8}" stroke="{color}" '
            f'stroke-width="2"><title>{label}</title></line>'
        )
    for lat in (0.001, 0.01, 0.1, 1.0):
        parts.append(f'<text x="{left - 6}" y="{y(lat) + 4:.1f}" text-anchor="end">{lat * 1000:g} ms</text>')
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(lat):.1f}" y2="{y(lat):.1f}" stroke="#eee"/>')
    step = max(1, int(duration / 10))
    for t in range(0, int(duration) + 1, step):
        parts.append(f'<text x="{x(t):.1f}" y="{height - bottom + 16}" text-anchor="middle">{t}s</text>')
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">time since start '
        "(dots: latency of each operation; green ok, red failed, orange unknown; shaded: faults; "
        "ticks on top: fences red, unfences green)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(summary: dict[str, Any], ops: list[dict[str, Any]]) -> str:
    rows = []
    for check in summary["checkers"]:
        status = check["status"]
        color = {"pass": "#2a9d4b", "fail": "#d62828"}.get(status, "#f4a300")
        violations = html.escape(json.dumps(check.get("violations", [])[:10], indent=1, default=str))
        rows.append(
            f"<tr><td>{html.escape(check['name'])}</td><td style='color:{color};font-weight:bold'>"
            f"{status.upper()}</td><td><pre>{html.escape(json.dumps(check.get('stats', {}), default=str))}"
            f"</pre></td><td><pre>{violations}</pre></td></tr>"
        )
    op_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['ok']}</td><td>{v['fail']}</td><td>{v['unknown']}</td></tr>"
        for k, v in sorted(summary["operations"].items())
    )
    kinds = summary["faults"].get("kinds") or {
        k: {"planned": v, "executed": v, "injected": v} for k, v in summary["faults"]["counts"].items()
    }
    fault_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v['planned']}</td><td>{v['executed']}</td><td>{v['injected']}</td></tr>"
        for k, v in sorted(kinds.items())
    )
    unavailable = ", ".join(summary["faults"].get("unavailable", [])) or "none"
    storage = summary.get("storage", {})
    storage_note = html.escape(
        f"{storage.get('disk', '')}; compaction every {storage.get('compaction_entries') or 'default'} entries; "
        f"snapshot writes {json.dumps(storage.get('snapshot_writes', {}))}"
    )
    verdict = summary["result"].upper()
    verdict_color = "#2a9d4b" if summary["result"] == "pass" else "#d62828"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rdbsync chaos seed {summary["seed"]}: {verdict}</title>
<style>body{{font-family:sans-serif;margin:24px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 8px;vertical-align:top}} pre{{margin:0;max-width:600px;white-space:pre-wrap}}
</style></head><body>
<h1>rdbsync chaos run: <span style="color:{verdict_color}">{verdict}</span></h1>
<p>seed <b>{summary["seed"]}</b>, {summary["nodes"]} nodes, {summary["duration_s"]:g} s;
{html.escape(summary["network"])}.
Repeat with <code>{html.escape(summary["repeat"])}</code>.</p>
{timeline_svg(summary, ops)}
<h2>Checkers</h2><table><tr><th>checker</th><th>result</th><th>figures</th><th>violations (first 10)</th></tr>
{"".join(rows)}</table>
<h2>Operations</h2><table><tr><th>operation</th><th>ok</th><th>failed</th><th>unknown</th></tr>{op_rows}</table>
<h2>Faults</h2><table><tr><th>kind</th><th>planned</th><th>executed</th><th>injected</th></tr>{fault_rows}</table>
<p>Kinds not possible in this run: {html.escape(unavailable)}.</p>
<p>Storage: {storage_note}.</p>
</body></html>
"""
