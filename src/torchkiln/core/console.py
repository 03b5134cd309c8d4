"""What every ``kiln`` command shares: the two consoles and the one way to fail.

The generic commands (``torchkiln.cli``) and a task family's own commands (forecasting's ``backtest``)
print the same way; the families sit below the CLI, so this lives in the lowest layer.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from torchkiln.core.errors import KilnError

out = Console()
err = Console(stderr=True)


def fail(exc: KilnError) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr, without a traceback, and exit with code 2."""
    # Text, not markup: messages quote user data such as file names with [brackets].
    err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
