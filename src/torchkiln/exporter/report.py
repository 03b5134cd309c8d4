"""``export_report.json`` and ``export_report.html``: the checks, notes, benchmark table and options.

The HTML is the Jinja2 template ``export_report.html.j2`` (:mod:`torchkiln.components.html`): this
module formats the numbers (no exponent breaks inside a cell: numeric cells do not wrap) and the
template lays them out and escapes them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchkiln.components.html import render
from torchkiln.core.io import atomic_write_text
from torchkiln.exporter.gate import BENCH_BATCHES, SLOWER


def write_reports(out_dir: Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write both reports into ``out_dir`` (atomically); returns ``(json_path, html_path)``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "export_report.json", out_dir / "export_report.html"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    atomic_write_text(html_path, render_html(summary))
    return json_path, html_path


def render_html(summary: dict[str, Any]) -> str:
    """The page for a summary as :func:`torchkiln.exporter.pipeline.export_bundle` writes it."""
    v = summary["variant"]
    metric = v["metric"]
    return render(
        "export_report.html.j2",
        title=f"kiln export {v['name']}",
        variant=v,
        options=_options(v["options"], v.get("unused_options", {})),
        checks=v["checks"],
        notes=summary["notes"],
        metric_header=f"{metric['name']} ({metric['split']}, n={metric['items']:,})",
        batches=BENCH_BATCHES,
        rows=_rows(summary["rows"]),
        slower_margin=f"{SLOWER - 1:.0%}",
        pruning=summary.get("pruning") or {},
    )


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _options(options: dict[str, Any], unused: dict[str, str]) -> list[dict[str, str]]:
    """One row per option (``prune_method`` is ``--prune-method``); those not used say why."""
    return [
        {
            "name": key,
            "value": "—" if value is None else str(value),
            "unused": unused.get(key, ""),
        }
        for key, value in options.items()
    ]


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The benchmark table, formatted; ratios are against the eager row (the first)."""
    base = rows[0]
    out = []
    for i, r in enumerate(rows):
        slower = set(r.get("slower_than_eager", []))
        cells: dict[str, Any] = {
            "name": r["name"],
            "file": _size(r["file_bytes"]),
            "shrink": "—" if i == 0 else f"{base['file_bytes'] / r['file_bytes']:.2f}×",
            "params": f"{r['params']:,}",
            "stored": f"{r['stored_values']:,}" if "stored_values" in r else "—",
            "metric": f"{r['metric']:.2f}",
            "diff": "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}",
            "agree": "—" if r["agreement"] is None else f"{r['agreement']:.2%}",
            "slower": sorted(slower),
            "batches": [],
        }
        for b in BENCH_BATCHES:
            t, t0 = r["latency"][str(b)], base["latency"][str(b)]["p50_ms"]
            cells["batches"].append(
                {
                    "p50": f"{t['p50_ms']:.3f}",
                    "p99": f"{t['p99_ms']:.3f}",
                    "speedup": "—" if i == 0 else f"{t0 / t['p50_ms']:.2f}×",
                    "items_per_s": f"{t['items_per_s']:,.0f}",
                    "slower": b in slower,
                }
            )
        out.append(cells)
    return out
