"""How long the train texts are in tokens, how many ``data.max_length`` cuts, and ``max_length: auto``.

A text longer than ``max_length`` tokens is truncated: the model never reads its end. Nothing fails when
that happens to half of the texts, so a training run (and ``kiln config show``) says how long the train
texts are and warns when more than :data:`WARN_SHARE` of them are cut.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("torchkiln.data")

AUTO_PERCENTILE = 95  # max_length: auto covers this share of the train texts in full
AUTO_CAP = 512  # ... but never more: attention cost grows with the square of the length
AUTO_MULTIPLE = 8  # tensor-core friendly widths
WARN_SHARE = 0.10  # more truncated train texts than this is a warning


@dataclass(frozen=True)
class TokenLengths:
    """The train split's token counts (special tokens included, before truncation) against ``max_length``."""

    median: float
    p90: float
    p95: float
    longest: int
    truncated: int  # texts longer than max_length
    texts: int
    max_length: int

    @property
    def share(self) -> float:
        """The share of texts that ``max_length`` truncates."""
        return self.truncated / self.texts if self.texts else 0.0

    def spread(self) -> str:
        return (
            f"median {self.median:g} tokens, 90th percentile {self.p90:g}, 95th {self.p95:g}, "
            f"max {self.longest}"
        )


def token_lengths(counts: Sequence[int], max_length: int) -> TokenLengths:
    """The distribution of ``counts`` and how many exceed ``max_length``.

    Args:
        counts: each train text's token count before truncation (special tokens included).
        max_length: the longest input the model takes, in tokens.

    Returns:
        The median, 90th and 95th percentiles (linear interpolation), the longest, and the truncated count.

    Raises:
        ValueError: ``counts`` is empty.

    Example:
        >>> token_lengths([10, 20, 30, 40], max_length=25).truncated
        2
    """
    if len(counts) == 0:
        raise ValueError("token_lengths needs at least one token count; got none.")
    n = np.asarray(counts, dtype=np.int64)
    median, p90, p95 = (float(np.percentile(n, q)) for q in (50, 90, AUTO_PERCENTILE))
    return TokenLengths(
        round(median, 1),
        round(p90, 1),
        round(p95, 1),
        int(n.max()),
        int((n > max_length).sum()),
        len(n),
        max_length,
    )


def auto_max_length(counts: Sequence[int], *, cap: int = AUTO_CAP, least: int = AUTO_MULTIPLE) -> int:
    """``data.max_length: auto``: the 95th percentile of ``counts``, rounded up to a multiple of 8, capped.

    Args:
        counts: the train texts' token counts before truncation (special tokens included).
        cap: the largest value to return (512, or fewer where the model has fewer positions).
        least: the smallest value to return.

    Returns:
        ``min(cap, max(least, ceil(p95 / 8) * 8))``.

    Raises:
        ValueError: ``counts`` is empty.

    Example:
        >>> auto_max_length([10] * 19 + [300])  # p95 = 24.5 -> 32
        32
    """
    p95 = token_lengths(counts, cap).p95
    return min(cap, max(least, math.ceil(p95 / AUTO_MULTIPLE) * AUTO_MULTIPLE))


def log_token_lengths(lengths: TokenLengths, *, auto: bool) -> None:
    """A note with the distribution on ``torchkiln.data``; a warning when over 10 % of texts are cut."""
    how = f"max_length: auto chose {lengths.max_length}" if auto else f"max_length {lengths.max_length}"
    cut = f"{lengths.truncated} of {lengths.texts} ({lengths.share:.1%}) truncated"
    log.info(f"Train texts: {lengths.spread()}; {how}: {cut}.")
    if lengths.share > WARN_SHARE:
        log.warning(
            f"data.max_length {lengths.max_length} truncates {lengths.share:.1%} of the train texts "
            f"({lengths.spread()}), so the model never reads their ends. Expected at most "
            f"{WARN_SHARE:.0%}. Fix: set data.max_length: auto (the 95th percentile, rounded up to a "
            f"multiple of 8, at most {AUTO_CAP}) or a number such as {math.ceil(lengths.p95)}."
        )
