"""The text recipes of ``examples/`` on one data set, each beside the TF-IDF + logistic regression baseline.

Every recipe is trained unchanged but for ``data.path`` (recipes were chosen on MR's val split; on another
set nothing is tuned) and evaluated on the test split by ``kiln evaluate``'s own baseline comparison: the
same split, the same items, a paired bootstrap interval of the accuracy difference. Training seconds are
those ``bundle.json`` records (2 CPU cores here).

    .venv/bin/python bench/text_recipes.py --data amazon-reviews [--recipes fasttext lstm-minilm ...]
    .venv/bin/python bench/text_recipes.py --data movie-reviews --json runs/mr.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torchkiln

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECIPES = ("fasttext", "lstm", "lstm-minilm", "textcnn", "transformer", "minilm")


def run(recipe: str, data: str, runs: Path, extra: list[str]) -> dict[str, object]:
    overrides = [
        f"data.path={data}",
        f"runs_dir={runs}",
        f"name={recipe}-{data}",
        "tracking.mlflow=false",
        "tracking.tensorboard=false",
        *extra,
    ]
    run_dir = torchkiln.train(torchkiln.load_config(EXAMPLES / f"movie-reviews-{recipe}.yaml", overrides))
    trained = json.loads((run_dir / "bundle" / "bundle.json").read_text())["trained"]
    result = torchkiln.evaluate(run_dir, out_dir=runs / f"{recipe}-eval")
    base = json.loads(result.metrics_file.read_text())["baseline"]
    row = {
        "recipe": recipe,
        "test_accuracy": round(result.metrics.accuracy, 4),
        "test_macro_f1": round(result.metrics.macro_f1, 4),
        "val_accuracy": round(trained["metrics"].get("val/accuracy", float("nan")), 4),
        "seconds": trained["seconds"],
        "baseline_accuracy": round(base["accuracy"], 4),
        "difference": base["accuracy_difference"],
        "verdict": base["verdict"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--data", default="movie-reviews", help="a text catalog name or a CSV/TSV/JSONL file")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(recipe, args.data, Path(tmp), args.set) for recipe in args.recipes]
    print(f"\n{args.data}: test split, model against TF-IDF + LR on the same items (2,000 paired resamples)")
    print("| recipe | test acc | macro-F1 | baseline acc | model - baseline (95% CI), points | verdict | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        d = r["difference"]
        assert isinstance(d, dict)
        diff = f"{100 * d['value']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        print(
            f"| {r['recipe']} | {100 * float(r['test_accuracy']):.2f} % | {r['test_macro_f1']} | "
            f"{100 * float(r['baseline_accuracy']):.2f} % | {diff} | {r['verdict']} | {r['seconds']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
