"""What a check reports: a :class:`Finding` (how bad, what, the fix), and the wording helpers of messages."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")
EXAMPLES = 3  # items quoted in a finding's message; --json lists up to ITEMS
ITEMS = 1000


@dataclass(frozen=True)
class Finding:
    """One thing a check found: how bad, what (counts and an example item), and the fix.

    ``error``: the run would fail or measure nothing (``kiln train`` stops); ``warning``: it runs, but
    a result is wrong or misleading; ``info``: worth knowing, harmless as it is.
    """

    check: str
    severity: Severity
    message: str  # what was found, with counts and an example
    fix: str = ""  # "" when the message says it (a loader's own error)
    count: int | None = None  # items concerned, when the finding counts items
    items: tuple[str, ...] = ()  # the items concerned, most telling first (at most ITEMS)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items": list(self.items)}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``3 images``, ``1 image``: a count and its noun."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def share(n: int, total: int) -> str:
    """``12 of 10,000 (0.12%)``."""
    return f"{n:,} of {total:,} ({100 * n / max(total, 1):.2g}%)"
