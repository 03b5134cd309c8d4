"""Neural style transfer, Gram against SWAG: the same content/style pairs at 256 px with each style loss.

Content: scikit-image's astronaut, coffee and chelsea (their central squares); style: its brick, gravel
and grass textures (grayscale, repeated to RGB). For every pair and mode it measures the wall time of
``stylize`` (decoding and resizing included) and its CPU time, the style loss from start to end (each
mode's own loss, relative to the content image's mismatch, so it starts near 1), the content loss of the
result (mean squared feature error / mean square of the content features), and, as one yardstick for
both modes, the plain-Gram style loss of each result; "10x at" is the first step after which the style
loss is 10 times below its start. It prints a table and draws content | style | Gram | SWAG, one row per
pair, into ``docs/tasks/img/style-gram-vs-swag.png``.

    .venv/bin/python bench/style_transfer.py [--steps 200] [--optimizer lbfgs] [--figure PATH]
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image
from skimage import data

from torchkiln.tasks.image_generation.style import (
    DEFAULTS,
    StyleObjective,
    StyleResult,
    load_rgb,
    style_features,
    stylize,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FIGURE = Path(__file__).resolve().parent.parent / "docs" / "tasks" / "img" / "style-gram-vs-swag.png"
MODES = ("gram", "swag")


def rgb(image: np.ndarray) -> np.ndarray:
    """A grayscale texture repeated to three channels; RGB images as they are."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def square(image: np.ndarray) -> np.ndarray:
    """The central square, so that every result is size x size (stylize keeps the aspect ratio)."""
    h, w = image.shape[:2]
    top, left = (h - min(h, w)) // 2, (w - min(h, w)) // 2
    return image[top : top + min(h, w), left : left + min(h, w)]


def pairs() -> list[tuple[str, np.ndarray, str, np.ndarray]]:
    return [
        ("astronaut", data.astronaut(), "brick", rgb(data.brick())),
        ("coffee", square(data.coffee()), "gravel", rgb(data.gravel())),
        ("chelsea", square(data.chelsea()), "grass", rgb(data.grass())),
    ]


def gram_yardstick(content: np.ndarray, style: np.ndarray, result: StyleResult, size: int) -> float:
    """The plain-Gram style loss of ``result`` (relative, as ``stylize`` reports it): one scale for both."""
    weights = {"content": 1.0, "style": 1.0, "tv": 0.0}
    objective = StyleObjective(
        style_features("cpu"), load_rgb(content, size), load_rgb(style, size), "gram", weights
    )
    image = torch.from_numpy(result.image).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return float(objective(image)["style"])


def tenfold(result: StyleResult) -> str:
    """The first step after which the style loss is 10x below its start ("-": never)."""
    start = result.losses_start["style"]
    later = [*(h["style"] for h in result.history[1:]), result.losses_end["style"]]  # after steps 1..N
    return next((str(i) for i, loss in enumerate(later, start=1) if loss <= start / 10), "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--optimizer", default="lbfgs", choices=["lbfgs", "adam"])
    parser.add_argument("--style-weight", type=float, default=DEFAULTS["style_weight"])
    parser.add_argument("--content-weight", type=float, default=DEFAULTS["content_weight"])
    parser.add_argument("--tv-weight", type=float, default=DEFAULTS["tv_weight"])
    parser.add_argument("--figure", default=str(FIGURE), help="where to draw the figure ('' for none)")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.steps} steps of {args.optimizer} at {args.size} px, "
        f"weights content {args.content_weight:g} style {args.style_weight:g} tv {args.tv_weight:g}"
    )
    style_features("cpu")  # built once, outside the timings (about 0.1 s)
    header = f"{'pair':<18} {'mode':<5} {'seconds':>7} {'cpu s':>6} {'style start':>11} {'style end':>9}"
    print(f"{header} {'ratio':>6} {'10x at':>6} {'content':>7} {'gram yardstick':>14}")
    rows = []
    for content_name, content, style_name, style in pairs():
        results = {}
        for mode in MODES:
            cpu = time.process_time()  # CPU seconds of both threads: wall time minus other processes' share
            r = stylize(
                content,
                style,
                steps=args.steps,
                size=args.size,
                mode=mode,
                optimizer=args.optimizer,
                content_weight=args.content_weight,
                style_weight=args.style_weight,
                tv_weight=args.tv_weight,
            )
            cpu = time.process_time() - cpu
            results[mode] = r
            start, end = r.losses_start["style"], r.losses_end["style"]
            print(
                f"{content_name + '/' + style_name:<18} {mode:<5} {r.seconds:>7.1f} {cpu:>6.1f} "
                f"{start:>11.3f} {end:>9.4f} {start / end:>6.1f} {tenfold(r):>6} "
                f"{r.losses_end['content']:>7.3f} "
                f"{gram_yardstick(content, style, r, args.size):>14.4f}",
                flush=True,
            )
        rows.append((content_name, content, style_name, style, results))
    if args.figure:
        draw(rows, Path(args.figure), args.size)
        print(f"wrote {args.figure}")


def draw(rows: list, path: Path, size: int) -> None:
    """content | style | Gram | SWAG, one row per pair, each result titled with its figures."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(11, 2.95 * len(rows)), squeeze=False)
    for row, (content_name, content, style_name, style, results) in zip(axes, rows, strict=True):
        panels = [(content, f"content: {content_name}"), (style, f"style: {style_name}")]
        for mode, r in results.items():
            ratio = r.losses_start["style"] / r.losses_end["style"]
            name = "SWAG" if mode == "swag" else "Gram"
            title = f"{name}: style loss ÷{ratio:.0f}, content loss {r.losses_end['content']:.2f}"
            panels.append((r.image, title))
        for ax, (image, title) in zip(row, panels, strict=True):
            ax.imshow(image)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle(
        f"Neural style transfer on EfficientNet-Lite0 features, {size} px: Gram vs SWAG", fontsize=11
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    # 256 colours (dithered): a third of the bytes of the full-colour PNG, for a figure kept in git
    Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


if __name__ == "__main__":
    main()
