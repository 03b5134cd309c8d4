"""Export and compression on real models: every variant against eager fp32 PyTorch, same process.

For each model (the default Fashion-MNIST CNN, and the EfficientNet-Lite0 transfer model), train it
once (or reuse a run with ``--cnn-run`` / ``--effnet-run``), then run ``torchkiln.export`` for:

- ONNX fp32                      target: max |Δ| <= 1e-4 and <= 0.1 point of accuracy lost
- ONNX int8, static and dynamic  target (best of them): >= 1.5x faster at batch 1 than eager,
                                 >= 2.5x smaller, <= 1 point lost
- 50 % structured pruning + fine-tune, eager and ONNX
                                 target: <= 1.5 points lost and a measured latency gain

Every ratio is taken against the eager fp32 row measured in the same export call, so the noisy
machine affects both sides alike.

    .venv/bin/python bench/export.py [--cnn-run RUN_DIR] [--effnet-run RUN_DIR] [--only cnn]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torchkiln

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODELS = {
    "cnn": EXAMPLES / "fashion-mnist.yaml",
    "effnet": EXAMPLES / "fashion-mnist-transfer.yaml",
}
VARIANTS: dict[str, dict] = {
    "onnx fp32": {},
    "onnx int8 static": {"quantize": "static"},
    "onnx int8 dynamic": {"quantize": "dynamic"},
    "pruned 50% torch": {"format": "torch", "prune": 0.5, "budget": 1.5},
    "pruned 50% onnx int8 static": {"prune": 0.5, "quantize": "static", "budget": 1.5},
}


def train(config: Path, runs: Path) -> Path:
    overrides = [f"runs_dir={runs}", "tracking.mlflow=false", "tracking.tensorboard=false"]
    return torchkiln.train(torchkiln.load_config(config, overrides))


def measure(run_dir: Path, seconds: float) -> list[dict]:
    results = []
    for label, options in VARIANTS.items():
        r = torchkiln.export(run_dir, bench_seconds=seconds, **options)
        base, last = r.rows[0], r.rows[-1]
        results.append(
            {
                "variant": label,
                "passed": r.passed,
                "metric": round(last.metric, 2),
                "lost": round(base.metric - last.metric, 2),
                "max_abs_diff": r.rows[1].max_abs_diff if "onnx" in label else None,
                "smaller": round(base.file_bytes / last.file_bytes, 2),
                "speedup_b1": round(base.latency["1"]["p50_ms"] / last.latency["1"]["p50_ms"], 2),
                "speedup_b32": round(base.latency["32"]["p50_ms"] / last.latency["32"]["p50_ms"], 2),
                "p50_b1_ms": last.latency["1"]["p50_ms"],
                "p99_b1_ms": last.latency["1"]["p99_ms"],
                "eager_p50_b1_ms": base.latency["1"]["p50_ms"],
                "eager_metric": round(base.metric, 2),
                "report": str(r.report_html),
                "notes": r.notes,
            }
        )
        row = results[-1]
        print(
            f"  {label:20s} {'pass' if r.passed else 'REJECTED':8s} acc {row['metric']:6.2f} "
            f"(lost {row['lost']:+.2f})  {row['smaller']:.2f}x smaller  b1 {row['speedup_b1']:.2f}x  "
            f"b32 {row['speedup_b32']:.2f}x faster than eager",
            flush=True,
        )
    return results


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--cnn-run", type=Path, help="reuse this trained run of examples/fashion-mnist.yaml")
    parser.add_argument("--effnet-run", type=Path, help="reuse this run of fashion-mnist-transfer.yaml")
    parser.add_argument("--only", choices=sorted(MODELS), help="benchmark one model")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per latency figure")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--runs", type=Path, help="keep the trained runs here (default: a temporary folder)")
    args = parser.parse_args()
    given = {"cnn": args.cnn_run, "effnet": args.effnet_run}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in MODELS.items():
            if args.only and name != args.only:
                continue
            run_dir = given[name] or train(config, args.runs or Path(tmp))
            print(f"{name}: {run_dir}", flush=True)
            out[name] = measure(run_dir, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
