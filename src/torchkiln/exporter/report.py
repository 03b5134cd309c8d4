"""``export_report.json`` and ``export_report.html``: the checks, the benchmark table and the notes."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from torchkiln.components.html import html_page
from torchkiln.core.io import atomic_write_text


def write_reports(out_dir: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write both reports into ``out_dir`` (atomically); returns ``(json_path, html_path)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "export_report.json", out_dir / "export_report.html"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(html_path, render_html(summary))
    return json_path, html_path


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_html(summary: dict[str, Any]) -> str:
    v = summary["variant"]
    verdict = (
        '<p class="good"><b>Passed</b>: the variant was written.</p>'
        if v["passed"]
        else '<p class="bad"><b>Rejected</b>: no variant was written.</p>'
    )
    checks = "".join(
        f'<tr><td>{_e(c["name"])}</td><td class="{"good" if c["passed"] else "bad"}">'
        f'{"pass" if c["passed"] else "FAIL"}</td><td style="text-align:left">{_e(c["detail"])}</td></tr>'
        for c in v["checks"]
    )
    notes = "".join(f'<div class="note">{_e(n)}</div>' for n in summary["notes"])
    parts = [
        f"<h1>Export: {_e(v['name'])}</h1>",
        f'<p class="muted">from {_e(v["source"])} on {_e(v["machine"]["cpu"])}, '
        f"{v['machine']['threads']} threads</p>",
        verdict,
        "<h2>Checks</h2>",
        f"<table><tr><th>check</th><th>result</th><th>detail</th></tr>{checks}</table>",
        notes,
        "<h2>Benchmark</h2>",
        _table(summary["rows"], v["metric"]),
        _pruning(summary.get("pruning")),
    ]
    return html_page(f"kiln export {v['name']}", parts)


def _table(rows: list[dict[str, Any]], metric: dict[str, Any]) -> str:
    base = rows[0]
    head = (
        "<tr><th>model</th><th>file</th><th>params</th>"
        f"<th>{_e(metric['name'])} ({_e(metric['split'])}, n={metric['items']})</th><th>max |Δ|</th>"
        "<th>agree</th><th>p50 / p99 ms, batch 1</th><th>speed-up b1</th>"
        "<th>p50 / p99 ms, batch 32</th><th>items/s b32</th></tr>"
    )
    body = []
    for r in rows:
        b1, b32 = r["latency"]["1"], r["latency"]["32"]
        diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        agree = "—" if r["agreement"] is None else f"{r['agreement']:.2%}"
        speedup = base["latency"]["1"]["p50_ms"] / b1["p50_ms"]
        shrink = base["file_bytes"] / r["file_bytes"]
        body.append(
            f"<tr><td>{_e(r['name'])}</td><td>{_size(r['file_bytes'])} ({shrink:.1f}×)</td>"
            f"<td>{r['params']:,}</td><td>{r['metric']:.2f}</td><td>{diff}</td><td>{agree}</td>"
            f"<td>{b1['p50_ms']:.3f} / {b1['p99_ms']:.3f}</td><td>{speedup:.2f}×</td>"
            f"<td>{b32['p50_ms']:.2f} / {b32['p99_ms']:.2f}</td><td>{b32['items_per_s']:,.0f}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _pruning(p: dict[str, Any] | None) -> str:
    if not p:
        return ""
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in p.items())
    return f'<h2>Pruning</h2><table class="kv">{rows}</table>'
