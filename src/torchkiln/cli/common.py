"""What every ``kiln`` command module shares: the stderr console and the one way to fail.

``cli/main.py`` mounts the other command modules (``registry``, ...), so they cannot import it; both sides
import this module instead.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

from torchkiln.errors import KilnError

err = Console(stderr=True)


def fail(exc: KilnError) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr, without a traceback, and exit with code 2."""
    # Text, not markup: messages quote user data such as file names with [brackets].
    err.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
