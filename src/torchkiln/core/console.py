"""What every ``kiln`` command shares: the two consoles and the one way to fail.

The generic commands (``torchkiln.cli``) and a task family's own commands (forecasting's ``backtest``)
print the same way; the families sit below the CLI, so this lives in the lowest layer.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from torchkiln.core.errors import KilnError

# soft_wrap: a line is never broken at the console's width. Without a terminal Rich assumes 80 columns, and
# a wrapped path after "metrics:" or in a fold line breaks grep and scripts. (Tables still fit the width.)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(exc: KilnError) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr, without a traceback, and exit with code 2."""
    # Text, not markup: messages quote user data such as file names with [brackets].
    err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class _Warnings(logging.Handler):
    """Prints ``warning: MESSAGE`` (``note: MESSAGE`` for info) on stderr, as :func:`fail` prints errors."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = ("warning: ", "yellow") if record.levelno >= logging.WARNING else ("note: ", "cyan")
        err.print(Text.assemble(kind, record.getMessage()), highlight=False, soft_wrap=True)


def show_warnings(loggers: tuple[str, ...] = ("torchkiln.data", "torchkiln.train")) -> None:
    """Print what ``loggers`` say (the data checks, the start of a run) as ``warning:``/``note:`` lines."""
    for name in loggers:
        target = logging.getLogger(name)
        if not any(isinstance(h, _Warnings) for h in target.handlers):
            target.addHandler(_Warnings(logging.INFO))
            target.setLevel(logging.INFO)
            target.propagate = False
