#!/usr/bin/env bash
# Vendors the dashboard's front-end files from npm into src/torchkiln/dashboard/static/vendor/, with their
# licenses and SHA-256 in VENDOR.json. The page loads nothing else and nothing from a CDN. Run it to update
# a version (then commit the files); the build and the tests never run it.
set -euo pipefail
cd "$(dirname "$0")/.."
HTMX=2.0.11    # the 2.x line: the SSE extension targets htmx 2, while npm's latest is 4.x
UPLOT=1.6.32
out=src/torchkiln/dashboard/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX" "uplot@$UPLOT" >/dev/null)
mkdir -p "$out"
tar xzf "$work/htmx.org-$HTMX.tgz" -C "$work" && mv "$work/package" "$work/htmx"
tar xzf "$work/uplot-$UPLOT.tgz" -C "$work" && mv "$work/package" "$work/uplot"
cp "$work/htmx/dist/htmx.min.js" "$out/htmx.min.js"
cp "$work/htmx/LICENSE" "$out/htmx.LICENSE"
cp "$work/uplot/dist/uPlot.iife.min.js" "$out/uPlot.iife.min.js"
cp "$work/uplot/dist/uPlot.min.css" "$out/uPlot.min.css"
cp "$work/uplot/LICENSE" "$out/uPlot.LICENSE"
python3 - "$out" "$HTMX" "$UPLOT" <<'PY'
import hashlib, json, pathlib, sys
out, htmx, uplot = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
files = {"htmx.min.js": ("htmx.org", htmx, "0BSD"), "uPlot.iife.min.js": ("uplot", uplot, "MIT"),
         "uPlot.min.css": ("uplot", uplot, "MIT")}
body = {name: {"package": pkg, "version": ver, "license": lic,
               "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
        for name, (pkg, ver, lic) in files.items()}
(out / "VENDOR.json").write_text(json.dumps(body, indent=2) + "\n")
PY
echo "vendored htmx $HTMX and uPlot $UPLOT into $out"
