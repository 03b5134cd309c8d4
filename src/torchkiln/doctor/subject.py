"""What the checks examine: the config as written, its task, and the data as ``prepare`` and the task's
``doctor_data`` hook give it. Built once per ``kiln doctor``; image scans are made once and shared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torchkiln.components.doctor_data import DoctorData, SplitItems, doctor_data
from torchkiln.components.image_scan import ImageScan, scan_images
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import KilnError
from torchkiln.doctor.findings import Finding
from torchkiln.tasks.base import Task, get_task

QUICK_FILES = 2000  # images read from files in the quick pass (kiln train); kiln doctor reads them all
LOADS = "data-loads"


@dataclass(frozen=True)
class DoctorOptions:
    """How thorough a run of the checks is.

    Attributes:
        quick: only the cheap checks, and image files read only up to QUICK_FILES (what kiln train runs).
        noise_epochs: epochs of each fold's fit in the label-noise check.
        noise_folds: folds of that fit (each train item is predicted by a model that did not see it).
    """

    quick: bool = False
    noise_epochs: int = 2
    noise_folds: int = 2


@dataclass
class Subject:
    """The config, its task and its data, for the checks to read (never to change).

    Attributes:
        cfg: the config as written: ``cfg.model_fields_set`` (and its sections') say what the user set.
        task: the config's task.
        resolved: the config ``prepare`` resolved from the data; None if ``prepare`` refused it.
        data: what ``prepare`` returned (the task's data handle); None if it refused.
        view: the data as the checks read it (the task's ``doctor_data``); None without the hook.
        loading: what loading the data said: its error, and the warnings it logged.
        options: how thorough this run is.
    """

    cfg: RunConfig
    task: Task
    resolved: RunConfig | None
    data: Any
    view: DoctorData | None
    loading: list[Finding]
    options: DoctorOptions
    unscanned: dict[str, int] = field(default_factory=dict)  # split -> images the quick pass left unread
    _scans: dict[str, ImageScan | None] = field(default_factory=dict)

    def items(self, split: str) -> SplitItems | None:
        """The items of ``split``, None if the data has none (or no view)."""
        part = self.view.splits.get(split) if self.view is not None else None
        return part if part is not None and len(part) else None

    def scan(self, split: str) -> ImageScan | None:
        """The one pass over ``split``'s images (made once); None without images, or when the quick pass
        leaves a split of many image files unread (``unscanned`` says how many)."""
        if split not in self._scans:
            part = self.items(split)
            source = part.images if part is not None else None
            if source is None:
                self._scans[split] = None
            elif self.options.quick and not source.in_memory and len(source) > QUICK_FILES:
                self.unscanned[split] = len(source)
                self._scans[split] = None
            else:
                self._scans[split] = scan_images(source)
        return self._scans[split]


class _Collect(logging.Filter):
    """Keeps what a logger says instead of letting it print: the doctor reports it as findings."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextmanager
def _collected(name: str) -> Iterator[list[logging.LogRecord]]:
    logger, keep = logging.getLogger(name), _Collect()
    logger.addFilter(keep)
    try:
        yield keep.records
    finally:
        logger.removeFilter(keep)


def examine(
    cfg: RunConfig, options: DoctorOptions, *, prepared: tuple[RunConfig, Any] | None = None
) -> Subject:
    """Load the data of ``cfg`` as a run would (``prepare``) and the task's view of it, keeping what failed.

    A refusal (a corrupt image, an unsorted series) becomes an error finding instead of an exception, so
    the other checks still run; what ``prepare`` logs (a thin class) becomes a warning or info finding.
    ``prepared``: what ``prepare`` already returned for ``cfg`` (a run that loaded its data), used as is.
    """
    task = get_task(cfg.task.kind)
    loading: list[Finding] = []
    resolved, data = prepared if prepared is not None else (None, None)
    with _collected("torchkiln.data") as records:
        try:
            if prepared is None:
                resolved, data = task.prepare(cfg)
        except KilnError as exc:
            loading.append(Finding(LOADS, "error", str(exc)))
    for r in records:
        loading.append(Finding(LOADS, "warning" if r.levelno >= logging.WARNING else "info", r.getMessage()))
    try:
        view = doctor_data(task, cfg, resolved, data)
    except KilnError as exc:
        view = None
        if data is not None:  # else prepare's own error says it
            loading.append(Finding(LOADS, "error", str(exc)))
    return Subject(cfg, task, resolved, data, view, loading, options)
