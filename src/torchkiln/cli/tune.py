"""`kiln tune`: a thin wrapper over :func:`torchkiln.tune.tune` (Optuna over a config's ``tune`` section)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from torchkiln.core.cli_options import SetOpt
from torchkiln.core.console import err, fail, out, show_warnings
from torchkiln.core.errors import KilnError


def tune_command(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="A run config with a tune section.")],
    trials: Annotated[
        int | None, typer.Option(min=1, help="Trials in the study (tune.trials); a resume runs the rest.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="sqlite:///FILE.db, postgresql://USER:PASSWORD@HOST/DB, or a PATH.journal file. Default: "
            "RUNS_DIR/tune/STUDY.db (.journal with several workers).",
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the storage (not with SQLite).")
    ] = 1,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Seconds after which no trial starts (tune.timeout).")
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="The study's name; an existing study is resumed. Default: the run name."),
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Search hyperparameters with Optuna: each trial is a kiln train run; prints the trials and best.yaml.

    The tune section of CONFIG names the settings to search (docs/tuning.md). Last line: the train command.
    """
    from torchkiln.api import tune

    show_warnings(("torchkiln.data", "torchkiln.train", "torchkiln.tune", "torchkiln.tracking"))
    try:
        result = tune(
            config,
            trials=trials,
            storage=storage,
            workers=workers,
            timeout=timeout,
            study=study,
            overrides=set_ or [],
        )
    except KilnError as exc:
        fail(exc)
    keys = list(result.rows[0].params) if result.rows else []
    table = Table(title=f"kiln tune: study {result.study} ({result.metric}, {result.direction})")
    for column in ("trial", "state", result.metric, "epochs"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for key in keys:  # the last part of the key names the column, unless two keys end the same
        tail = key.split(".")[-1]
        table.add_column(tail if sum(k.endswith(f".{tail}") or k == tail for k in keys) == 1 else key)
    table.add_column("seconds", justify="right")
    for r in result.rows:
        value = f"{r.value:.4f}" if r.value is not None else "-"
        if r.number == result.best_trial:
            value = f"[bold green]{value}[/]"
        params = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.params.get(k, "") for k in keys)]
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else "-"
        table.add_row(str(r.number), r.state, value, str(r.epochs), *params, seconds)
    # Piped to a file, Rich would assume 80 columns and cut the parameters' columns to a few characters.
    (out if out.is_terminal else Console(soft_wrap=True, width=200)).print(table)
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("complete", "pruned", "fail") if result.count(s))
    err.print(f"study {result.study} in {result.storage}: {counts or 'no trials'}", soft_wrap=True)
    if result.best_config is None:
        err.print("No trial completed, so there is no best config yet. Resume with more --trials.")
        raise typer.Exit(code=1)
    err.print(f"best: trial {result.best_trial}, {result.metric} {result.best_value:.4f}", soft_wrap=True)
    err.print(
        f"outputs: {result.out_dir} (best.yaml, trials.csv, history.png, importance.png)", soft_wrap=True
    )
    print(f"kiln train {result.best_config}")
