"""`kiln runs`: the runs under a folder with their key figures, and `kiln runs compare` side by side.

Everything is read from the run folders as `kiln train` and `kiln evaluate` leave them: `config.yaml` (task,
model, monitor), `bundle/bundle.json` (`trained`: epochs, best epoch, seconds, the best epoch's metrics)
and `eval/<split>/metrics.json` (the numbers of each evaluation). No run is loaded or imported, so listing is
quick; MLflow is not needed (:mod:`torchkiln.artifacts.runs` reads them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from torchkiln.artifacts.runs import find_runs, headline, read_run
from torchkiln.core.console import err, out

runs_app = typer.Typer(
    help="The runs under a folder with their key figures; 'kiln runs compare RUN...' side by side.",
    invoke_without_command=True,
)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


@runs_app.callback()
def list_runs(
    ctx: typer.Context,
    root: Annotated[Path, typer.Option("--runs-dir", help="The runs folder (runs_dir).")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json/--no-json", help="Print one JSON line per run.")] = False,
) -> None:
    """List the runs under --runs-dir, newest first: task, model, epochs, monitored metric, test accuracy."""
    if ctx.invoked_subcommand is not None:
        return
    runs = find_runs(root)
    if not runs:
        err.print(f"No runs under '{root}'. Train one with: kiln train CONFIG (or pass --runs-dir RUNS_DIR).")
        raise typer.Exit(code=1)
    if as_json:
        for r in runs:
            print(json.dumps({"run": str(r.path), **r.figures()}))
        return
    table = Table(title=f"runs under {root}")
    for col in ("run", "task", "model", "epochs", "monitored (best)", "evaluated"):
        table.add_column(col)
    for r in runs:
        monitored = f"{r.monitor} {_cell(r.monitored)}" if r.monitor else "—"
        evaluated = ", ".join(
            f"{split}: {', '.join(f'{k} {_cell(nums[k])}' for k in headline(nums))}"
            for split, nums in r.evaluations.items()
        )
        table.add_row(
            str(r.path), r.task or "—", r.model or "—", _cell(r.epochs), monitored, evaluated or "—"
        )
    Console(width=max(out.width, 140)).print(table)


@runs_app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders.")],
) -> None:
    """Put runs side by side: settings, the best epoch's metrics and every evaluation's numbers."""
    summaries = []
    for path in runs:
        summary = read_run(path)
        if summary is None:
            err.print(
                f"error: '{path}' is not a run folder (no config.yaml). Pass folders that 'kiln train' "
                f"printed; 'kiln runs' lists them."
            )
            raise typer.Exit(code=2)
        summaries.append(summary)
    rows = [s.figures() for s in summaries]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title="kiln runs compare")
    table.add_column("")
    for s in summaries:
        table.add_column(f"{s.path.parent.name}/{s.path.name}", justify="right")
    for key in keys:
        table.add_row(key, *(_cell(row.get(key)) for row in rows))
    Console(width=max(out.width, 40 + 24 * len(summaries))).print(table)
