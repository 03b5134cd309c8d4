"""Find the column a setting names in a table's header: exactly, else by a unique case-insensitive match.

Shared by the text table, the image manifest and the time-series reader, so a header written ``Review``
and a config that says ``review`` agree in one way everywhere, with one warning line that says which
name to write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torchkiln.core.errors import DataError

log = logging.getLogger("torchkiln.data")


def match_column(name: str, columns: Sequence[str], *, setting: str, source: str) -> str | None:
    """The column of ``columns`` that ``name`` means, or ``None`` when none does.

    An exact match wins. Otherwise a single column equal to ``name`` ignoring case is used, with a
    warning on the ``torchkiln.data`` logger that names the column to write in ``setting``.

    Args:
        name: the column name the config gives.
        columns: the table's header.
        setting: the config key that gave ``name`` (``data.text_column``), for the messages.
        source: what the table is (``Text file 'x.csv'``), for the error.

    Returns:
        The column's name as the header writes it, or ``None`` when no column matches, even ignoring
        case (the caller raises its own error, which knows the role of the column).

    Raises:
        DataError: two or more columns differ from ``name`` only in case, so the match is ambiguous.

    Example:
        >>> match_column("Review", ["review", "label"], setting="data.text_column", source="x.csv")
        'review'
    """
    if name in columns:
        return name
    folded = name.casefold()
    found = [c for c in columns if c.casefold() == folded]
    if not found:
        return None
    if len(found) > 1:
        both = " and ".join(f"'{c}'" for c in found)
        raise DataError(
            f"{source} has no column '{name}', and {len(found)} columns differ from it only in case: {both}; "
            f"expected one column that {setting} names. Fix: set `{setting}` to one of them exactly, or "
            f"rename the others."
        )
    log.warning("%s '%s' matched the column '%s'; write that name to silence this", setting, name, found[0])
    return found[0]
