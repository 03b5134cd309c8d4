"""`kiln retrain`: a thin wrapper over :func:`torchkiln.monitor.retrain.retrain` (the closed loop)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import err, fail, out, show_warnings
from torchkiln.core.errors import KilnError


def retrain_command(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="The config the champion was trained with.")
    ],
    model: Annotated[str, typer.Option("--model", help="The registered model whose champion is challenged.")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="New labelled data: an image folder or CSV manifest, or a CSV of texts."),
    ] = None,
    feedback_from: Annotated[
        str | None,
        typer.Option(
            "--feedback-from", help="A prediction log URL: feedback-labelled inputs, and the replay."
        ),
    ] = None,
    settings_file: Annotated[
        Path | None, typer.Option("--settings", help="A YAML of RetrainSettings (the gates).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="A gate, e.g. --set alpha=0.01 (after --settings).")
    ] = None,
    from_scratch: Annotated[bool | None, typer.Option(help="Train the challenger from scratch.")] = None,
    server: Annotated[
        str | None, typer.Option(help="A running kiln serve: shadow, canary, then the reload that promotes.")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="KILN_ADMIN_TOKEN", help="Its admin token ($KILN_ADMIN_TOKEN).")
    ] = None,
    drift_report: Annotated[str | None, typer.Option(help="The drift report that set this off.")] = None,
    log_url: Annotated[
        str | None, typer.Option(help="The server's prediction log (default: --feedback-from).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="The MLflow registry.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Where decision.json goes.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    dry_run: Annotated[bool, typer.Option(help="Print the plan and the gates; do nothing.")] = False,
) -> None:
    """Retrain on new labelled data; promote the challenger only if it beats the champion on fresh data.

    Every decision is written to decision.json (and MLflow); the last line printed is the outcome.
    """
    from torchkiln.monitor.decision import load_retrain_settings, plan
    from torchkiln.monitor.retrain import retrain

    show_warnings(("torchkiln.data", "torchkiln.train", "torchkiln.retrain"))
    try:
        settings = load_retrain_settings(settings_file, set_ or [], from_scratch=from_scratch)
        result = retrain(
            config,
            model=model,
            data=data,
            feedback_from=feedback_from,
            settings=settings,
            tracking_uri=tracking_uri,
            server=server,
            admin_token=admin_token,
            drift_report=drift_report,
            log_url=log_url,
            out_dir=out_dir,
            device=device,
            dry_run=dry_run,
        )
    except KilnError as exc:
        fail(exc)
    if dry_run:
        for line in plan(result.record, settings):
            out.print(line, soft_wrap=True)
        out.print(json.dumps(settings.model_dump()), soft_wrap=True)
        return
    err.print(f"decision record: {result.path}", soft_wrap=True)
    print(f"{result.record.outcome}: {result.record.reason}")
