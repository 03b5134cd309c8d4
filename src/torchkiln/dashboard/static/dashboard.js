// kiln dashboard: the live table keeps one page of rows (data-limit); uPlot charts from JSON in the page.
document.addEventListener("htmx:afterSwap", (event) => {
  const body = event.detail.target;
  if (body.id !== "rows") return;
  const limit = Number(body.closest("table").dataset.limit || 50);
  while (body.rows.length > limit) body.deleteRow(body.rows.length - 1);
});

// <div class="chart" data-series='{"x": [...], "series": [{"label": "p50", "values": [...]}], ...}'>
// Options: title, ylabel, height, time (false: x is not unix seconds), whole_x (ticks at whole numbers).
function drawCharts(root) {
  for (const el of root.querySelectorAll("div.chart[data-series]")) {
    if (el.dataset.drawn) continue;
    const spec = JSON.parse(el.dataset.series);
    const colors = ["#0b5cad", "#b42318", "#067647", "#6941c6", "#b54708", "#0e7090", "#c11574", "#475467"];
    const opts = {
      title: spec.title || "",
      width: Math.max(280, Math.min(el.clientWidth || 900, 1200)),
      height: spec.height || 220,
      scales: { x: { time: spec.time !== false } },
      // whole_x: an epoch axis, ticked at whole numbers only
      axes: [spec.whole_x ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] } : {}, { label: spec.ylabel || "" }],
      series: [{}, ...spec.series.map((s, i) => ({
        label: s.label, stroke: s.color || colors[i % colors.length], width: 1.5,
        dash: s.dash ? [6, 4] : undefined, points: { show: false },
      }))],
    };
    new uPlot(opts, [spec.x, ...spec.series.map((s) => s.values)], el);
    el.dataset.drawn = "1";
  }
}
document.addEventListener("DOMContentLoaded", () => drawCharts(document));
document.addEventListener("htmx:afterSettle", (event) => drawCharts(event.detail.target));
