"""``kiln generate``: images from a trained GAN, as one grid file.

A ``torchkiln.commands`` entry point: ``kiln`` mounts it without naming this family, at every start, so
this module imports nothing heavy at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import fail, out
from torchkiln.core.errors import KilnError


def generate(
    bundle: Annotated[Path, typer.Argument(help="A trained image-generation bundle or run directory.")],
    out_: Annotated[Path, typer.Option("--out", help="The grid image to write (.png, .jpg or .webp).")],
    n: Annotated[int, typer.Option("--n", help="How many images (1 to 4096).")] = 64,
    label: Annotated[
        str | None, typer.Option(help="The class to draw (conditional GANs; default: the classes in turn).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="The first image's seed; image i uses seed + i.")] = 0,
    nrow: Annotated[int, typer.Option(min=1, help="Images per row of the grid.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = True,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Draw images from a GAN bundle into one grid image: the same seed draws the same images again."""
    from torchkiln.tasks.image_generation.generate import generate_images, save_grid

    try:
        images = generate_images(bundle, n=n, label=label, seed=seed, device=device)
        save_grid(images, out_, nrow=nrow, overwrite=overwrite)
    except KilnError as exc:
        fail(exc)
    what = f" of class {label}" if label else ""
    out.print(f"wrote {len(images)} image(s){what}, seeds {seed}..{seed + n - 1}, to {out_}", soft_wrap=True)
