"""`kiln explain`: a thin wrapper over :func:`torchkiln.api.explain` (Grad-CAM heatmaps of answers)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import fail, out, show_warnings
from torchkiln.core.errors import KilnError


class Method(StrEnum):
    gradcam = "gradcam"
    gradcam_pp = "gradcam++"


def explain_command(
    bundle: Annotated[Path, typer.Argument(help="A bundle or run directory (an image classifier's).")],
    images: Annotated[list[Path], typer.Argument(help="Image files, folders of images, or quoted globs.")],
    out_: Annotated[
        Path,
        typer.Option(
            "--out",
            help="The PNG to write (one image), or a folder that gets one PNG per image (several images).",
        ),
    ],
    method: Annotated[
        Method, typer.Option(help="Grad-CAM, or Grad-CAM++ (spreads over several objects).")
    ] = Method.gradcam,
    class_: Annotated[
        str | None,
        typer.Option("--class", help="The class to explain, by name (default: each image's predicted one)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Draw where the model looked: a Grad-CAM heatmap over each image, with its predicted class and score.

    Red marks the places whose features raised the explained class's score most, blue none. The heatmap
    is as coarse as the network's last convolutional block (7x7 cells for a 224-pixel ResNet input);
    docs/explain.md says what it shows and what it does not."""
    from torchkiln.api import explain

    show_warnings(("torchkiln.predict",))
    try:
        found = explain(bundle, list(images), out=out_, method=method.value, target=class_, device=device)
    except KilnError as exc:
        fail(exc)
    for item in found:
        e = item.explanation
        asked = "" if e.explained == e.answer.get("label") else f", heatmap of {e.explained}"
        score = e.answer.get("score", 0.0)
        line = f"{item.source}: {e.answer.get('label')} {score:.3f}{asked} -> {item.written}"
        out.print(line, highlight=False, soft_wrap=True)
