"""How the Versions and Runs pages write a figure."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 3) -> str:
    """A figure as text: floats to ``digits`` places (tiny ones in scientific form), None as a dash,
    anything else as it is.

    Example:
        >>> fmt(0.84512), fmt(0.00002), fmt(None), fmt(600)
        ('0.845', '2.00e-05', '—', '600')
    """
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"


def fmt_p(value: Any) -> str:
    """A p-value to three significant digits: ``0.000921``."""
    return f"{value:.3g}" if isinstance(value, int | float) and not isinstance(value, bool) else fmt(value)
