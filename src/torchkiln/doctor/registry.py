"""The registry of checks (``@check``), as timm registers models.

A check is one small function of the :class:`~torchkiln.doctor.subject.Subject` (the config, the task and
its data) that returns its findings; its docstring's first line is what ``kiln doctor --list`` shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchkiln.core.registry import Registry
from torchkiln.doctor.findings import Finding
from torchkiln.doctor.subject import Subject


@dataclass(frozen=True)
class Check:
    """A registered check: ``run(subject)`` returns its findings."""

    name: str
    run: Callable[[Subject], list[Finding]]
    cheap: bool  # kiln train runs it before training (seconds at most)
    opt_in: bool  # runs only when asked for by name (kiln doctor --label-noise)
    doc: str

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


CHECKS = Registry[Check]("doctor check")
ORDER: list[str] = []  # registration order: findings of one severity are listed in it


def check(name: str, *, cheap: bool = True, opt_in: bool = False) -> Callable[[Callable], Callable]:
    """Register a check under ``name``; its docstring says what it checks (first line) and why.

    Example:
        >>> @check("seed")
        ... def seed(s: Subject) -> list[Finding]:
        ...     '''The seed is set in the config.'''
    """

    def deco(fn: Callable[[Subject], list[Finding]]) -> Callable[[Subject], list[Finding]]:
        entry = Check(name, fn, cheap, opt_in, fn.__doc__ or "")
        CHECKS.add(name, entry, summary=entry.summary)
        ORDER.append(name)
        return fn

    return deco
