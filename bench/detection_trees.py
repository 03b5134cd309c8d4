"""Tree-crown detection on the ``trees`` catalog: EfficientNet-Lite0 + FPN Faster R-CNN fine-tuned from the
packaged ImageNet weights, against the same detector from scratch and MobileNetV3-FPN from scratch.

The three compared use the recipe ``examples/trees.yaml`` at native resolution (``data.scale: 1``) for 50
epochs (tiles of 400 px, the same 20-minute training budget on this machine); two more runs double the
images for 20 epochs, with the default augmentation and with the example's (zoom, stronger colours). All
are scored on the held-out 1249 x 1035 image,
predicted tile by tile. The from-scratch runs train every backbone stage at the full rate. The target is
mAP@.5 >= 0.5 for the pretrained detector.

    .venv/bin/python bench/detection_trees.py [--out runs/bench-trees] [--only lite0-imagenet] \
        [--plots docs/tasks/img]

``--plots`` writes the validation mAP@.5 per epoch of every run (``trees-learning-curves.png``) and the
held-out image with the boxes of the pretrained detector (the doubled one when it ran) drawn
(``trees-test.jpg``: true positives green, false positives red, misses orange) into a folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torchkiln

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "trees.yaml"
SAME = ["data.scale=1", "train.epochs=50"]  # the comparison: native resolution, 50 epochs or 20 minutes
RUNS = {
    "lite0-imagenet": ["model.name=fasterrcnn_lite0_fpn", "model.pretrained=true", *SAME],
    "lite0-scratch": [
        "model.name=fasterrcnn_lite0_fpn",
        "model.pretrained=false",
        "model.args={trainable_stages: 8}",
        *SAME,
    ],
    "mobilenet_v3-scratch": ["model.name=fasterrcnn_mobilenet_v3_fpn", "model.pretrained=false", *SAME],
    # Images doubled (data.scale 2), 20 epochs, the default augmentation (flips, colour jitter 0.2).
    "lite0-imagenet-x2": [
        "model.name=fasterrcnn_lite0_fpn",
        "model.pretrained=true",
        "data.augment=[{name: horizontal_flip}, {name: vertical_flip}, {name: color_jitter}]",
    ],
    # The recipe as examples/trees.yaml has it: doubled, 20 epochs, plus zoom and stronger colour jitter.
    "lite0-imagenet-x2-aug": ["model.name=fasterrcnn_lite0_fpn", "model.pretrained=true"],
}


def plots(runs: dict[str, Path], out: Path) -> None:
    """The learning curves of ``runs`` and the pretrained run's drawn test image, into ``out``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for name, run_dir in runs.items():
        history = json.loads((run_dir / "history.json").read_text())
        ax.plot([h["epoch"] + 1 for h in history], [h["val/map_50"] for h in history], label=name)
    ax.set(xlabel="epoch", ylabel="val mAP@.5", ylim=(0, 1), title="trees: validation mAP@.5 per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "trees-learning-curves.png")
    order = ("lite0-imagenet-x2-aug", "lite0-imagenet-x2", "lite0-imagenet")
    best = next((n for n in order if n in runs), "")
    if best in runs:
        from torchkiln.components.box_drawing import draw_detections
        from torchkiln.components.images import open_image
        from torchkiln.tasks.object_detection.data import pad_batch
        from torchkiln.tasks.object_detection.metrics import rows_to_predictions

        bundle = torchkiln.load_predictor(runs[best] / "bundle", device="cpu").bundle
        _, data = bundle.task.prepare(bundle.config, splits={"test"})
        record = data.splits["test"][0]
        rows = bundle.model.eval()(pad_batch([data.image(record)]))
        t = bundle.config.task
        drawn = draw_detections(
            open_image(record.path),
            rows_to_predictions(rows.detach())[0],
            data.targets(record),
            data.classes,
            score_threshold=t.score_threshold,
            iou_threshold=t.iou_threshold,
        )
        drawn.save(out / "trees-test.jpg", quality=85)


def run(name: str, runs: Path, extra: list[str]) -> dict[str, Any]:
    overrides = [*RUNS[name], f"runs_dir={runs}", f"name=trees-{name}", "tracking.mlflow=false", *extra]
    run_dir = torchkiln.train(torchkiln.load_config(RECIPE, overrides))
    seconds = torchkiln.load_predictor(run_dir).bundle.meta["trained"]["seconds"]
    ev = torchkiln.evaluate(run_dir, mlflow=False)
    coco, at = ev.results["coco"], ev.results["at_threshold"]
    row: dict[str, Any] = {
        "run_dir": run_dir,
        "map_50": coco["map_50"],
        "map": coco["map"],
        "map_75": coco["map_75"],
        "mar": coco[f"mar_{int(coco['max_detections'])}"],
        "precision": at["precision"],
        "recall": at["recall"],
        "f1": at["f1"],
        "train_s": seconds,
        "predict_s": ev.seconds,
    }
    figures = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "run_dir")
    print(f"  {name}: {run_dir}: {figures}", flush=True)
    return row


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-trees"), help="where the runs go")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run only these (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every run")
    parser.add_argument("--plots", type=Path, help="write the learning curves and the drawn test image here")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=[],
        help="plot these finished runs (NAME=RUN_DIR); train nothing",
    )
    args = parser.parse_args()
    if args.runs:
        plots({p.split("=", 1)[0]: Path(p.split("=", 1)[1]) for p in args.runs}, args.plots or Path("."))
        return
    rows = {name: run(name, args.out, args.set) for name in args.only or RUNS}
    if args.plots:
        plots({name: r["run_dir"] for name, r in rows.items()}, args.plots)
    heads = ("mAP@.5", "mAP", "mAP@.75", "AR@max", "P", "R", "train s")
    print(f"{'detector':24} " + " ".join(f"{h:>7}" for h in heads))
    for name, r in rows.items():
        print(
            f"{name:24} {r['map_50']:7.3f} {r['map']:7.3f} {r['map_75']:7.3f} {r['mar']:7.3f} "
            f"{r['precision']:7.3f} {r['recall']:7.3f} {r['train_s']:7.0f}"
        )
    if "lite0-imagenet" in rows and len(rows) > 1:
        base = max(r["map_50"] for n, r in rows.items() if n != "lite0-imagenet")
        ratio = rows["lite0-imagenet"]["map_50"] / max(base, 1e-9)
        print(f"mAP@.5 of the pretrained detector / the best from-scratch one: {ratio:.2f}x")


if __name__ == "__main__":
    main()
