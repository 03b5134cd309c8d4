"""The export report from benchmark rows made by hand: the slower-than-eager flag, options, layout."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torchkiln.exporter.gate import Row, eager_notes, slower_batches
from torchkiln.exporter.options import ExportOptions
from torchkiln.exporter.report import write_reports


def row(name: str, p50: tuple[float, float], *, stored: int, diff: float | None = 6.68e-06) -> Row:
    """A measured row; ``p50`` is the latency at batch 1 and 32, in ms."""
    r = Row(name, "onnxruntime", 1_636_408, 409_082, stored, 92.81, diff, None if diff is None else 1.0)
    for b, ms in zip(("1", "32"), p50, strict=True):
        r.latency[b] = {"p50_ms": ms, "p99_ms": 2 * ms, "mean_ms": ms, "runs": 100, "items_per_s": 1e3 / ms}
    return r


def measured() -> list[Row]:
    """Eager, a faster ONNX fp32, and an int8 variant slower than eager at batch 1 only."""
    rows = [
        row("torch fp32 (eager)", (0.5, 20.0), stored=409_182, diff=None),
        row("onnx fp32", (0.1, 2.0), stored=409_038),
        row("onnx int8 static", (0.7, 15.0), stored=410_312),
    ]
    for r in rows[1:]:
        r.slower_than_eager = slower_batches(rows[0], r)
    return rows


def summary(rows: list[Row], opts: ExportOptions) -> dict[str, Any]:
    return {
        "variant": {
            "name": opts.variant_name,
            "passed": True,
            "source": "runs/x/bundle",
            "options": opts.resolved(Path("runs/x/bundle-onnx-int8-static")),
            "unused_options": opts.unused(),
            "metric": {"name": "accuracy", "unit": "points", "split": "test", "items": 10_000},
            "checks": [{"name": "numerical parity", "passed": True, "detail": "max |Δ| 6.68e-06 <b>"}],
            "machine": {"cpu": "test CPU", "threads": 2},
        },
        "rows": [r.__dict__ for r in rows],
        "notes": eager_notes(rows),
    }


def test_slower_than_eager_is_found_per_batch_size_and_noted() -> None:
    rows = measured()
    assert [r.slower_than_eager for r in rows] == [[], [], [1]]
    assert slower_batches(rows[0], row("same", (0.52, 20.9), stored=0)) == []  # within 5 %: noise
    (note,) = eager_notes(rows)
    assert note.startswith("onnx int8 static is slower than eager PyTorch on this CPU at batch 1 ")
    assert "(p50 0.700 ms vs 0.500 ms)" in note


def test_report_flags_a_variant_slower_than_eager(tmp_path: Path) -> None:
    opts = ExportOptions(quantize="static")
    _, html_path = write_reports(tmp_path, summary(measured(), opts))
    page = html_path.read_text()

    bench = page[
        page.index('<table class="bench">') : page.index("</table>", page.index('<table class="bench">'))
    ]
    body = bench.split("<tbody>")[1].split("</tr>")
    assert "slower" not in body[0] + body[1]  # eager and the faster ONNX row carry no flag
    assert '<span class="badge">slower than eager at batch 1</span>' in body[2]
    assert body[2].count('class="num slower"') == 1 and "▼ 0.71× slower" in body[2]  # batch 1 only
    assert '<div class="note">onnx int8 static is slower than eager PyTorch' in page


def test_report_shows_the_resolved_options_and_which_were_not_used(tmp_path: Path) -> None:
    opts = ExportOptions(quantize="static")
    json_path, html_path = write_reports(tmp_path, summary(measured(), opts))
    page = html_path.read_text()
    options = dict(re.findall(r'<th class="text">(\w+)</th><td class="text">([^<]*)', page))
    assert options["quantize"] == "static" and options["calibration_size"] == "512"
    assert options["budget"] == "1.0"  # resolved: the default budget of a compressed variant
    assert options["out"] == "runs/x/bundle-onnx-int8-static"
    assert '<td class="text">8 <span class="muted">(not used: no pruning)</span>' in page  # finetune_epochs
    assert json.loads(json_path.read_text())["variant"]["options"]["budget"] == 1.0


def test_numbers_do_not_wrap_and_headers_align_with_their_columns(tmp_path: Path) -> None:
    _, html_path = write_reports(tmp_path, summary(measured(), ExportOptions()))
    page = html_path.read_text()
    assert "td.num{white-space:nowrap" in page and "th.num,td.num{text-align:right}" in page
    assert "max-width:960px" not in page and ".scroll{overflow-x:auto" in page
    bench = page[page.index('<table class="bench">') : page.index("</tbody>")]
    # every numeric cell is a no-wrap right-aligned cell; the model name is the one text cell per row
    cells = re.findall(r"<td class=\"([^\"]+)\">", bench)
    assert {c for c in cells if c != "text"} <= {"num", "num group-start", "num slower"}
    assert "6.7e-06" in bench and re.search(r"<td class=\"num\">6\.7e-06</td>", bench)
    heads = re.findall(r"<th [^>]*class=\"([^\"]+)\"[^>]*>", bench)
    assert heads.count("text") == 1 and all(h.startswith(("num", "group")) for h in heads if h != "text")
    assert "&lt;b&gt;" in page  # check details are escaped


def test_params_stay_comparable_and_the_stored_values_are_explained(tmp_path: Path) -> None:
    _, html_path = write_reports(tmp_path, summary(measured(), ExportOptions()))
    page = html_path.read_text()
    assert page.count('<td class="num">409,082</td>') == 3
    assert '<td class="num">410,312</td>' in page and "stored values¹" in page
    assert "quantization scales" in page and "BatchNorm is folded" in page
