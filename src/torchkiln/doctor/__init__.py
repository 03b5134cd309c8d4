"""``kiln doctor``: checks of the data and the config before any compute, each finding with its fix.

The checks are registered functions (:data:`CHECKS`, ``@check``): the config's (``config_checks``), the
labels' and the pixels' (``data_checks``), leakage (``duplicate_checks``), a series' (``series_checks``)
and label noise (``label_noise``, opt-in). They read the config, the task (``tasks.base``) and the data
as the task's optional ``doctor_data`` hook gives it (:mod:`torchkiln.components.doctor_data`), so no
check names a task family.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, did_you_mean
from torchkiln.doctor import (  # noqa: F401  (each registers its checks)
    baseline_check,
    config_checks,
    data_checks,
    duplicate_checks,
    label_noise,
    series_checks,
)
from torchkiln.doctor.findings import SEVERITIES, Finding
from torchkiln.doctor.registry import CHECKS, ORDER, Check, check
from torchkiln.doctor.subject import DoctorOptions, Subject, examine

__all__ = ["CHECKS", "ORDER", "Check", "DoctorOptions", "DoctorReport", "Finding", "check", "run_checks"]


@dataclass(frozen=True)
class DoctorReport:
    """What :func:`run_checks` found, worst first, and how long each check took (seconds)."""

    findings: list[Finding]
    seconds: dict[str, float]  # "data-loads" (prepare and the task's view), then each check run

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def as_dict(self) -> dict[str, object]:
        return {
            "findings": [f.as_dict() for f in self.findings],
            "counts": {s: self.count(s) for s in SEVERITIES},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def selected(*, quick: bool, opt_in: Collection[str]) -> list[Check]:
    """The checks a run makes: the cheap ones (``quick``) or all but the opt-in ones, plus ``opt_in``.

    Raises:
        ConfigError: an opt-in name that is not a check.
    """
    for name in opt_in:
        if name not in CHECKS:
            raise ConfigError(
                f"'{name}' is not a doctor check.{did_you_mean(name, CHECKS.names())} Expected one of "
                f"{', '.join(ORDER)} (kiln doctor --list)."
            )
    checks = [CHECKS.get(name) for name in ORDER]
    return [c for c in checks if c.name in opt_in or (not c.opt_in and (c.cheap or not quick))]


def run_checks(
    cfg: RunConfig,
    *,
    cheap_only: bool = False,
    opt_in: Collection[str] = (),
    options: DoctorOptions | None = None,
    prepared: tuple[RunConfig, Any] | None = None,
) -> DoctorReport:
    """Check the data and the config of ``cfg`` before any compute.

    Args:
        cfg: a run config as loaded (``load_config``): ``model_fields_set`` must say what the user set.
        cheap_only: only the checks that take seconds (what ``kiln train`` runs first); image files are
            then read only for splits of up to 2,000 files.
        opt_in: checks that run only when named, e.g. ``("label-noise",)``.
        options: the label-noise fit's folds and epochs (``quick`` follows ``cheap_only``).
        prepared: ``task.prepare(cfg)``'s result when the caller has it (a run about to train): the data
            is not loaded a second time.

    Returns:
        The findings, errors first, then warnings, then infos (each group in the checks' order).

    Raises:
        ConfigError: an unknown name in ``opt_in``.

    Example:
        >>> report = run_checks(load_config("kiln.yaml"), cheap_only=True)
        >>> [f.message for f in report.errors]
    """
    checks = selected(quick=cheap_only, opt_in=opt_in)
    base = options or DoctorOptions()
    options = DoctorOptions(quick=cheap_only, noise_epochs=base.noise_epochs, noise_folds=base.noise_folds)
    start = time.perf_counter()
    subject = examine(cfg, options, prepared=prepared)
    seconds = {"data-loads": time.perf_counter() - start}
    findings: list[Finding] = []
    for c in checks:
        start = time.perf_counter()
        findings += c.run(subject)
        seconds[c.name] = seconds.get(c.name, 0.0) + time.perf_counter() - start
    findings += _unread(subject)
    rank = {name: i for i, name in enumerate(ORDER)}
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), rank.get(f.check, len(rank))))
    return DoctorReport(findings, seconds)


def _unread(s: Subject) -> list[Finding]:
    """What the quick pass left unread, so that no finding is taken for a clean bill."""
    return [
        Finding(
            "duplicates",
            "info",
            f"{split}: its {n:,} image files were not read in the quick pass (kiln "
            f"train's), so their duplicates, exposure and normalization were not checked.",
            "Run kiln doctor CONFIG, which reads them all.",
            count=n,
        )
        for split, n in s.unscanned.items()
    ]
