"""`kiln doctor`: a thin wrapper over :func:`torchkiln.api.doctor`; and the quick pass `kiln train` runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from torchkiln.core.cli_options import SetOpt
from torchkiln.core.console import err, fail, out
from torchkiln.core.errors import KilnError

if TYPE_CHECKING:
    from torchkiln.doctor import DoctorReport, Finding

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
LOADS = "data-loads"  # the loader's own warnings: kiln train's prepare prints them itself


def _counts(report: DoctorReport) -> str:
    names = (("error", "errors"), ("warning", "warnings"), ("info", "infos"))
    return ", ".join(f"{report.count(one)} {one if report.count(one) == 1 else many}" for one, many in names)


def _seconds(report: DoctorReport) -> float:
    return sum(report.seconds.values())


def _line(f: Finding) -> str:
    return f"[{f.check}] {f.message}" + (f" Fix: {f.fix}" if f.fix else "")


def _table(report: DoctorReport, title: str) -> Table:
    table = Table(title=title, show_lines=True)
    table.add_column("severity")
    table.add_column("check")
    table.add_column("finding", ratio=3)
    table.add_column("fix", ratio=2)
    for f in report.findings:
        table.add_row(Text(f.severity, style=STYLE[f.severity]), f.check, Text(f.message), Text(f.fix))
    return table


def _list_checks() -> None:
    from torchkiln.doctor import CHECKS, ORDER

    table = Table(title="kiln doctor checks")
    for column in ("check", "runs", "what it checks"):
        table.add_column(column)
    for name in ORDER:
        c = CHECKS.get(name)
        runs = f"--{name}" if c.opt_in else "always" if c.cheap else "kiln doctor"
        table.add_row(name, runs, c.summary)
    out.print(table)


def doctor_command(
    config: Annotated[Path | None, typer.Argument(metavar="CONFIG", help="Run config YAML.")] = None,
    set_: SetOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json/--no-json", help="Print the report as JSON, every item listed.")
    ] = False,
    label_noise: Annotated[
        bool,
        typer.Option(
            "--label-noise/--no-label-noise",
            help="Also look for mislabelled training items: trains the model on 2 folds of train, so it "
            "takes as long as a short run (docs/doctor.md).",
        ),
    ] = False,
    noise_epochs: Annotated[int, typer.Option(min=1, help="Epochs of each fold's fit (--label-noise).")] = 2,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick/--no-quick", help="Only the cheap checks, as kiln train runs them before training."
        ),
    ] = False,
    list_: Annotated[bool, typer.Option("--list/--no-list", help="List the checks and exit.")] = False,
) -> None:
    """Check the data and the config before training: leakage, imbalance, normalization, exposure, a
    series' order, the monitor, tuning, the seed, the loss, the device. Exit code 1 on an error finding.

    Each finding has its severity (error: the run would fail or measure nothing; warning: a result would
    be wrong or misleading; info: worth knowing), what was found with an example, and the fix."""
    from torchkiln import api

    if list_:
        _list_checks()
        return
    if config is None:
        err.print(
            "error: give a CONFIG file. Example: kiln doctor kiln.yaml (kiln doctor --list: the checks)"
        )
        raise typer.Exit(code=2)
    try:
        report = api.doctor(
            api.load_config(config, set_ or []),
            quick=quick,
            label_noise=label_noise,
            noise_epochs=noise_epochs,
        )
    except KilnError as exc:
        fail(exc)
    if as_json:
        print(json.dumps({"config": str(config), **report.as_dict()}, indent=1))
    elif report.findings:
        title = f"kiln doctor {config}"
        # Piped to a file, Rich would assume 80 columns: the messages would wrap a few words a line.
        (out if out.is_terminal else Console(soft_wrap=True, width=160)).print(_table(report, title))
    err.print(f"kiln doctor: {_counts(report)} in {_seconds(report):.1f} s", soft_wrap=True)
    if report.errors:
        raise typer.Exit(code=1)


def check_before_training(config: Path, overrides: list[str]) -> None:
    """``kiln train``'s quick pass: print its warnings, and stop at an error with its message (exit code 2).

    The loader's own warnings are left to the training run's loading, which prints them itself.
    """
    from torchkiln import api

    try:
        report = api.doctor(api.load_config(config, overrides), quick=True)
    except KilnError as exc:
        fail(exc)
    if report.errors:
        for f in report.errors:  # as training would print them: a loader's error reads the same
            line = f.message + (f" Fix: {f.fix}" if f.fix else "")
            err.print(Text.assemble(("error: ", "bold red"), line), highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)
    shown = [f for f in report.findings if f.severity == "warning" and f.check != LOADS]
    for f in shown:
        err.print(Text.assemble(("warning: ", "yellow"), _line(f)), highlight=False, soft_wrap=True)
    infos = report.count("info")
    notes = f", {infos} info{'s' if infos != 1 else ''}: kiln doctor {config}" if infos else ""
    err.print(f"doctor: {len(shown)} warning(s) in {_seconds(report):.1f} s{notes}", soft_wrap=True)
