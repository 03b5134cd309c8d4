"""`kiln runs`: the runs under a folder with their key figures, and `kiln runs compare` side by side.

Everything is read from the run folders as `kiln train` and `kiln evaluate` leave them: `config.yaml` (task,
model, monitor), `bundle/bundle.json` (`trained`: epochs, best epoch, seconds, the best epoch's metrics)
and `eval/<split>/metrics.json` (the numbers of each evaluation). No run is loaded or imported, so listing is
quick; MLflow is not needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from torchkiln.core.console import err, out

runs_app = typer.Typer(
    help="The runs under a folder with their key figures; 'kiln runs compare RUN...' side by side.",
    invoke_without_command=True,
)


@dataclass
class RunSummary:
    """What one run folder says about itself; fields are None where the run has not written them."""

    path: Path
    task: str | None = None
    model: str | None = None
    monitor: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    seconds: float | None = None
    stopped: str = ""
    best: dict[str, float] = field(default_factory=dict)  # the best epoch's metrics
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> numbers

    @property
    def monitored(self) -> float | None:
        return self.best.get(self.monitor) if self.monitor else None

    def figures(self) -> dict[str, Any]:
        """One flat mapping for tables and --json: the settings, then the best epoch's, then each split's."""
        row: dict[str, Any] = {
            "task": self.task,
            "model": self.model,
            "epochs": self.epochs,
            "best epoch": None if self.best_epoch is None else self.best_epoch + 1,
            "seconds": self.seconds,
        }
        row |= {k: v for k, v in self.best.items() if k != "epoch"}
        for split, numbers in sorted(self.evaluations.items()):
            row |= {f"{split}/{k}": v for k, v in numbers.items()}
        return row


def read_run(path: Path) -> RunSummary | None:
    """The summary of ``path``, or None if it is not a run folder (no config.yaml)."""
    config = path / "config.yaml"
    if not config.is_file():
        return None
    run = RunSummary(path)
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        task = cfg.get("task")
        run.task = task.get("kind") if isinstance(task, dict) else task
        run.model = (cfg.get("model") or {}).get("name")
        run.monitor = (cfg.get("train") or {}).get("monitor")
    except (yaml.YAMLError, AttributeError):
        pass
    trained = _json(path / "bundle" / "bundle.json").get("trained") or {}
    run.epochs, run.best_epoch = trained.get("epochs"), trained.get("best_epoch")
    run.seconds, run.stopped = trained.get("seconds"), trained.get("stopped") or ""
    run.best = {k: v for k, v in (trained.get("metrics") or {}).items() if isinstance(v, int | float)}
    for metrics in sorted(path.glob("eval/*/metrics.json")):
        data = _json(metrics)
        numbers = _numbers(data) | {f"model/{k}": v for k, v in _numbers(data.get("model") or {}).items()}
        if numbers:
            run.evaluations[metrics.parent.name] = numbers
    return run


def find_runs(root: Path) -> list[RunSummary]:
    """Every run folder under ``root`` (``runs/<name>/<timestamp>``), newest first."""
    found = [r for p in root.glob("*/*") if p.is_dir() and (r := read_run(p)) is not None]
    return sorted(found, key=lambda r: r.path.name, reverse=True)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(data: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}


HEADLINE = ("accuracy", "macro_f1", "model/mase", "model/rmse")  # what a list shows of an evaluation


def _headline(numbers: dict[str, float]) -> list[str]:
    return [k for k in HEADLINE if k in numbers] or list(numbers)[:2]


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
            f"{split}: {', '.join(f'{k} {_cell(nums[k])}' for k in _headline(nums))}"
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
