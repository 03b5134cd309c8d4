"""Neural style transfer with the Python API, on pictures that ship with scikit-image.

Repaints the astronaut, the coffee cup and the cat in the textures of brick, gravel and grass (grayscale
textures, repeated to RGB), and writes one PNG per pair into OUT (default ``runs/style``):

    .venv/bin/python examples/style_transfer.py [OUT] [--steps 200] [--size 256] [--mode swag|gram]

Each pair takes about 5 to 10 s at 256 px on 2 CPU cores; see docs/tasks/generation.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage import data

from torchkiln.tasks.image_generation.style import DEFAULTS, stylize


def rgb(image: np.ndarray) -> np.ndarray:
    """A grayscale (H, W) texture as (H, W, 3); RGB images as they are."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def main() -> None:
    parser = argparse.ArgumentParser(description="Neural style transfer on scikit-image's pictures.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("runs/style"), help="output folder")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    parser.add_argument("--size", type=int, default=DEFAULTS["size"])
    parser.add_argument("--mode", default="swag", choices=["swag", "gram"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pairs = [
        ("astronaut", data.astronaut(), "brick", rgb(data.brick())),
        ("coffee", data.coffee(), "gravel", rgb(data.gravel())),
        ("chelsea", data.chelsea(), "grass", rgb(data.grass())),
    ]
    for content_name, content, style_name, style in pairs:
        result = stylize(content, style, steps=args.steps, size=args.size, mode=args.mode)
        path = result.save(args.out / f"{content_name}-{style_name}-{args.mode}.png")
        start, end = result.losses_start, result.losses_end
        print(
            f"{path}: style loss {start['style']:.3f} -> {end['style']:.4f} "
            f"({start['style'] / end['style']:.0f}x lower), content loss {end['content']:.3f}, "
            f"{result.seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
