"""``kiln predict`` for a detector: boxes per image, printed; with ``--out FOLDER``, drawn on the images."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from rich.markup import escape

from torchkiln.components.box_drawing import draw_predictions
from torchkiln.components.images import expand_inputs, open_image
from torchkiln.core.errors import PredictError
from torchkiln.core.io import atomic_write, new_text_file
from torchkiln.tasks.base import PredictArgs


def _as_prediction(answer: dict[str, Any], classes: list[str]) -> dict[str, torch.Tensor]:
    found = answer["detections"]
    index = {c: i for i, c in enumerate(classes)}
    return {
        "boxes": torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([d["score"] for d in found], dtype=torch.float32),
        "labels": torch.tensor([index[d["label"]] for d in found], dtype=torch.int64),
    }


def write_drawn(out_dir: Path, items: list[str], answers: list[dict[str, Any]], classes: list[str]) -> None:
    """Each image with its boxes as ``out_dir/NAME.png``, and every answer in ``out_dir/predictions.jsonl``.

    Files are written whole (a temporary file, then a rename); names that repeat get ``-2``, ``-3`` ....

    Raises:
        PredictError: ``out_dir`` is a file.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise PredictError(f"--out {out_dir} is a file; expected a folder for the drawn images. Name one.")
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: Counter[str] = Counter()
    rows = []
    for item, answer in zip(items, answers, strict=True):
        stem = Path(item).stem
        seen[stem] += 1
        name = f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png"
        boxes = _as_prediction(answer, classes)
        drawn = draw_predictions(open_image(item), boxes, classes, score_threshold=0.0)
        atomic_write(out_dir / name, lambda fh, img=drawn: img.save(fh, format="PNG"))
        rows.append({"input": item, "drawn": name, **answer})
    with new_text_file(out_dir / "predictions.jsonl", overwrite=True) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def predict_files(predictor: Any, args: PredictArgs, *, as_json: bool) -> list[str]:
    """Detect in the images ``args.paths`` names; the lines ``kiln predict`` prints."""
    if not args.paths:
        raise PredictError(
            "No inputs were given. Pass image files, a folder of images or a quoted glob after the bundle."
        )
    items = [str(p) for p in expand_inputs(args.paths)]
    answers = predictor.predict(items)
    if args.out_dir is not None:
        write_drawn(args.out_dir, items, answers, predictor.labels)
    if as_json:
        return [json.dumps({"input": i, **a}) for i, a in zip(items, answers, strict=True)]
    lines = []
    for item, answer in zip(items, answers, strict=True):
        mix = Counter(d["label"] for d in answer["detections"])
        classes = ", ".join(f"{escape(label)} {n}" for label, n in mix.most_common())
        best = answer["detections"][0]["score"] if answer["detections"] else None
        top = f", best score {best:.3f}" if best is not None else ""
        lines.append(f"{escape(item)}: [bold]{answer['count']}[/] boxes ({classes or 'none'}{top})")
    if args.out_dir is not None:
        lines.append(f"drew {len(items)} image(s) and predictions.jsonl in {escape(str(args.out_dir))}")
    return lines
