"""Tree-crown detection on the ``trees`` catalog: EfficientNet-Lite0 + FPN Faster R-CNN fine-tuned from the
packaged ImageNet weights, against the same detector from scratch and MobileNetV3-FPN from scratch.

All three use the recipe ``examples/trees.yaml`` (tiles of 400 px, the same epochs and the same 20-minute
training budget on this machine) and are scored on the held-out 1249 x 1035 image, predicted tile by
tile. The from-scratch runs train every backbone stage at the full rate. The target is mAP@.5 >= 0.5 for
the pretrained detector.

    .venv/bin/python bench/detection_trees.py [--out runs/bench-trees] [--only lite0-imagenet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torchkiln

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "trees.yaml"
RUNS = {
    "lite0-imagenet": ["model.name=fasterrcnn_lite0_fpn", "model.pretrained=true"],
    "lite0-scratch": [
        "model.name=fasterrcnn_lite0_fpn",
        "model.pretrained=false",
        "model.args={trainable_stages: 8}",
    ],
    "mobilenet_v3-scratch": ["model.name=fasterrcnn_mobilenet_v3_fpn", "model.pretrained=false"],
}


def run(name: str, runs: Path, extra: list[str]) -> dict[str, float]:
    overrides = [*RUNS[name], f"runs_dir={runs}", f"name=trees-{name}", "tracking.mlflow=false", *extra]
    run_dir = torchkiln.train(torchkiln.load_config(RECIPE, overrides))
    seconds = torchkiln.load_predictor(run_dir).bundle.meta["trained"]["seconds"]
    ev = torchkiln.evaluate(run_dir, mlflow=False)
    coco, at = ev.results["coco"], ev.results["at_threshold"]
    row = {
        "map_50": coco["map_50"],
        "map": coco["map"],
        "map_75": coco["map_75"],
        "mar_100": coco["mar_100"],
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "train_s": seconds,
        "predict_s": ev.seconds,
    }
    print(f"  {name}: {run_dir}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-trees"), help="where the runs go")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run only these (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    args = parser.parse_args()
    rows = {name: run(name, args.out, args.set) for name in args.only or RUNS}
    heads = ("mAP@.5", "mAP", "mAP@.75", "AR@100", "P", "R", "train s")
    print(f"{'detector':24} " + " ".join(f"{h:>7}" for h in heads))
    for name, r in rows.items():
        print(
            f"{name:24} {r['map_50']:7.3f} {r['map']:7.3f} {r['map_75']:7.3f} {r['mar_100']:7.3f} "
            f"{r['precision']:7.3f} {r['recall']:7.3f} {r['train_s']:7.0f}"
        )
    if "lite0-imagenet" in rows and len(rows) > 1:
        base = max(r["map_50"] for n, r in rows.items() if n != "lite0-imagenet")
        ratio = rows["lite0-imagenet"]["map_50"] / max(base, 1e-9)
        print(f"mAP@.5 of the pretrained detector / the best from-scratch one: {ratio:.2f}x")


if __name__ == "__main__":
    main()
