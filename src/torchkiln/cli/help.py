"""Help that reads like a command line: ``kiln export BUNDLE``, ``--epochs INT [at least 1]``, not ``kiln
export {bundle}`` and ``<int range> [x>=1]``.

Typer (0.29) prints each parameter's Python type (``<bool>``, ``<list[str]>``, ``<int range>``) and has no
setting to turn that off; a ``metavar`` helps options but not arguments. :func:`use_cli_help` swaps the
methods that display a parameter for ones that give the placeholders users know from other tools:
``PATH``, ``INT``, ``FLOAT``, ``TEXT``, ``[onnx|torch]`` for a choice, and nothing for a flag; arguments
are named in capitals (``BUNDLE``, ``[CONFIG]`` when optional). A parameter's own ``metavar`` wins
(``KEY=VALUE`` for ``--set``). A test renders every command's help, so a Typer release that renames these
methods fails there, not in front of a user.
"""

from __future__ import annotations

import re
from typing import Any

from typer import core

PLACEHOLDERS = {"str": "TEXT", "int": "INT", "float": "FLOAT", "path": "PATH", "file": "FILE"}
PLACEHOLDERS |= {"directory": "DIR", "int range": "INT", "float range": "FLOAT"}


def placeholder(python_type: str | None) -> str | None:
    """Typer's ``<int>``/``<list[str]>``/``<a|b>`` as ``INT``/``TEXT``/``[a|b]``; None for flags.

    Example:
        >>> placeholder("<list[path]>"), placeholder("<onnx|torch>"), placeholder("<bool>")
        ('PATH', '[onnx|torch]', None)
    """
    if not python_type:
        return None
    label = python_type.strip("<>").removesuffix("...")
    label = re.sub(r"^list\[(.*)\]$", r"\1", label)
    if label == "bool":
        return None
    if label in PLACEHOLDERS:
        return PLACEHOLDERS[label]
    return f"[{label}]" if "|" in label else label.upper()


def describe_range(low: float | None, high: float | None) -> str | None:
    """``at least 1``, ``at most 8`` or ``0 to 1``, for the help's square brackets."""
    if low is None and high is None:
        return None
    if high is None:
        return f"at least {low}"
    if low is None:
        return f"at most {high}"
    return f"{low} to {high}"


def _argument_type(self: Any, ctx: Any) -> str | None:
    return placeholder(self.display_type(ctx))


def _option_type(self: Any, ctx: Any) -> str | None:
    if self.metavar is not None:
        return self.metavar
    if self.is_flag or self.count:
        return None
    return placeholder(self.display_type(ctx))


def _argument_name(self: Any) -> str:
    name = self.metavar or self.name.upper()
    return name if self.nargs == 1 else f"{name}..."


def _argument_usage(self: Any) -> str:
    return _argument_name(self) if self.required else f"[{_argument_name(self)}]"


def _range(self: Any) -> str | None:
    if getattr(self, "count", False) and self.min == 0 and self.max is None:
        return None
    return describe_range(self.min, self.max)


def use_cli_help() -> None:
    """Make every Typer command in this process show CLI placeholders instead of Python types."""
    core.TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]
    core.TyperOption.display_type_rich = _option_type  # type: ignore[method-assign]
    core.TyperArgument._rich_display_name = _argument_name  # type: ignore[method-assign]
    core.TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
    for cls in (core.TyperArgument, core.TyperOption):
        cls._get_number_range_help_str = _range  # type: ignore[method-assign]
