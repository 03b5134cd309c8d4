"""Style transfer on the command line: ``kiln stylize --content photo.jpg --style art.jpg --out out.png``.

``stylize`` is a ``torchkiln.commands`` entry point: ``kiln`` mounts it at every start, so this module
imports nothing heavy at the top (torch loads in the command). An option left out takes the Python
API's default (:func:`torchkiln.tasks.image_generation.style.stylize`), so the two cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from torchkiln.core.console import err, fail, out
from torchkiln.core.errors import ConfigError, KilnError

OUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def stylize(
    content: Annotated[Path, typer.Option(help="The image to repaint (PNG, JPEG, ...).")],
    style: Annotated[Path, typer.Option(help="The image whose style is copied.")],
    out_path: Annotated[
        Path, typer.Option("--out", help="Where to write the result: .png (default), .jpg or .webp.")
    ] = Path("stylized.png"),
    steps: Annotated[int | None, typer.Option(help="Optimization steps, 1 to 2000 (default 200).")] = None,
    size: Annotated[
        int | None, typer.Option(help="The output's longer side in pixels, 32 to 1024 (default 256).")
    ] = None,
    content_weight: Annotated[float | None, typer.Option(help="Content loss weight (default 1).")] = None,
    style_weight: Annotated[float | None, typer.Option(help="Style loss weight (default 10).")] = None,
    tv_weight: Annotated[float | None, typer.Option(help="Smoothness loss weight (default 1).")] = None,
    mode: Annotated[
        str | None, typer.Option(help="Style loss: swag (default; softmax-smoothed Gram) or gram.")
    ] = None,
    optimizer: Annotated[str | None, typer.Option(help="lbfgs (default) or adam.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the start image's noise.")] = 0,
    device: Annotated[
        str, typer.Option(help="cpu, cuda, cuda:N, or auto (a GPU when there is one).")
    ] = "cpu",
    tensorboard: Annotated[
        Path | None, typer.Option(help="Write the losses and intermediate images to this TensorBoard folder.")
    ] = None,
) -> None:
    """Neural style transfer: repaint --content in the style of --style by optimizing its pixels."""
    from torchkiln.tasks.image_generation.style import DEFAULTS
    from torchkiln.tasks.image_generation.style import stylize as run

    given = {
        "steps": steps,
        "size": size,
        "content_weight": content_weight,
        "style_weight": style_weight,
        "tv_weight": tv_weight,
        "mode": mode,
        "optimizer": optimizer,
    }
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        fmt = _out_format(out_path)
        for flag, path in (("--content", content), ("--style", style)):
            if not path.is_file():
                raise ConfigError(
                    f"{flag} '{path}' does not exist or is not a file. Give an image file's path."
                )
        with _progress() as bar:
            task = bar.add_task("stylize", total=options.get("steps", DEFAULTS["steps"]), losses="")

            def on_step(step: int, losses: dict[str, float]) -> None:
                shown = f"style {losses['style']:.4f}  content {losses['content']:.4f}"
                bar.update(task, completed=step, losses=shown)

            result = run(
                content,
                style,
                seed=seed,
                device=device,
                tensorboard_dir=tensorboard,
                on_step=on_step,
                **options,
            )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        _save(result.image, out_path, fmt)
    except KilnError as exc:
        fail(exc)
    start, end = result.losses_start, result.losses_end
    for key in ("content", "style", "tv", "total"):
        change = f"  ({start[key] / end[key]:.1f}x lower)" if key == "style" and end[key] > 0 else ""
        out.print(f"{key} loss {start[key]:.4g} -> {end[key]:.4g}{change}", highlight=False)
    h, w = result.image.shape[:2]
    out.print(
        f"wrote {out_path} ({w}x{h} px): {result.steps} steps of {result.mode}/{result.optimizer} "
        f"in {result.seconds:.1f} s",
        highlight=False,
    )


def _progress() -> Progress:
    """A bar on stderr (stdout keeps only the results); it disappears when done."""
    return Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("{task.fields[losses]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _out_format(path: Path) -> str:
    """The Pillow format of ``--out``, checked before the optimization's minutes are spent."""
    fmt = OUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"--out '{path}' has the extension '{path.suffix}', which is not an image format written here; "
            f"expected one of {', '.join(OUT_FORMATS)}. Use e.g. --out {path.with_suffix('.png')}."
        )
    return fmt


def _save(image: Any, path: Path, fmt: str) -> None:
    from PIL import Image

    try:
        Image.fromarray(image).save(path, format=fmt)
    except OSError as exc:
        raise ConfigError(f"Cannot write '{path}' ({exc}). Check that the folder is writable.") from None
