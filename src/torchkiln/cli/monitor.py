"""`kiln monitor`: thin wrappers over the monitoring functions. ``profile`` builds a bundle's reference."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import fail, out
from torchkiln.core.errors import KilnError

monitor_app = typer.Typer(
    help="Watch served models: the reference profile live traffic is compared with.", no_args_is_help=True
)


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


@monitor_app.command("profile")
def profile(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="A trained bundle or its run directory.")],
    split: Annotated[Split, typer.Option(help="The held-out split to profile.")] = Split.val,
    overwrite: Annotated[bool, typer.Option(help="Replace the reference the bundle already has.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Build a bundle's reference profile from the data its config names (reference.safetensors).

    A sample of the split as the server sees it: input summaries, predicted classes and confidence (a
    forecast's level and spread), and PCA-reduced penultimate-layer features. Bundles trained before
    reference profiles need it for drift monitoring.
    """
    from torchkiln.tasks.reference import profile_bundle

    try:
        done = profile_bundle(bundle, split=split.value, overwrite=overwrite, device=device)
    except KilnError as exc:
        fail(exc)
    m = done.reference.meta
    emb = m["embedding"]
    out.print(
        f"reference: {m['items']} of the {m['split_items']} items of the {m['split']} split; "
        f"{len(m['summary_columns'])} input statistics, signals {', '.join(m['signals'])}, "
        f"embeddings {emb['features']} -> {emb['dims']} dims "
        f"({emb['explained_variance']:.0%} of the variance)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(str(done.bundle / m["file"]), highlight=False)
