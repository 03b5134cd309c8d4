"""The run folders ``kiln train``, ``kiln evaluate`` and ``kiln export`` leave, read without loading a run.

    RUNS_DIR/<name>/<time>/
        config.yaml                           the resolved config (task, model, monitor)
        history.json                          per epoch: {"train/loss": ..., "val/accuracy": ..., "epoch": 0}
        bundle/bundle.json                    ``trained``: epochs, best epoch, seconds, its metrics
        eval/<split>/metrics.json             the numbers of each evaluation, beside report.html
        exports/<variant>/export_report.html  the checks and benchmark of each export

Nothing is imported or unpickled, so listing a folder of runs is quick and needs no MLflow. ``kiln runs``
and the dashboard's Runs page read runs through this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class RunSummary:
    """What one run folder says about itself; fields are None where the run has not written them."""

    path: Path
    task: str | None = None
    model: str | None = None
    monitor: str | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    seconds: float | None = None
    stopped: str = ""
    best: dict[str, float] = field(default_factory=dict)  # the best epoch's metrics
    evaluations: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> numbers

    @property
    def monitored(self) -> float | None:
        return self.best.get(self.monitor) if self.monitor else None

    def figures(self) -> dict[str, Any]:
        """One flat mapping for tables and --json: the settings, then the best epoch's, then each split's."""
        row: dict[str, Any] = {
            "task": self.task,
            "model": self.model,
            "epochs": self.epochs,
            "best epoch": None if self.best_epoch is None else self.best_epoch + 1,
            "seconds": self.seconds,
        }
        row |= {k: v for k, v in self.best.items() if k != "epoch"}
        for split, numbers in sorted(self.evaluations.items()):
            row |= {f"{split}/{k}": v for k, v in numbers.items()}
        return row


@dataclass(frozen=True)
class RunReport:
    """A report file a run holds: an evaluation's ``report.html`` or an export's ``export_report.html``."""

    kind: Literal["evaluation", "export"]
    name: str  # the split evaluated, or the export variant
    path: Path


def read_run(path: Path) -> RunSummary | None:
    """The summary of ``path``, or None if it is not a run folder (no config.yaml).

    Example:
        >>> read_run(Path("runs/shapes/20261124-101500")).evaluations["test"]["accuracy"]
        0.93
    """
    config = path / "config.yaml"
    if not config.is_file():
        return None
    run = RunSummary(path)
    try:
        cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        task = cfg.get("task")
        run.task = task.get("kind") if isinstance(task, dict) else task
        run.model = (cfg.get("model") or {}).get("name")
        run.monitor = (cfg.get("train") or {}).get("monitor")
    except (yaml.YAMLError, AttributeError, OSError):
        pass
    trained = _json(path / "bundle" / "bundle.json").get("trained") or {}
    run.epochs, run.best_epoch = trained.get("epochs"), trained.get("best_epoch")
    run.seconds, run.stopped = trained.get("seconds"), trained.get("stopped") or ""
    run.best = {k: v for k, v in (trained.get("metrics") or {}).items() if isinstance(v, int | float)}
    for metrics in sorted(path.glob("eval/*/metrics.json")):
        data = _json(metrics)
        numbers = _numbers(data) | {f"model/{k}": v for k, v in _numbers(data.get("model") or {}).items()}
        if numbers:
            run.evaluations[metrics.parent.name] = numbers
    return run


def find_runs(root: Path) -> list[RunSummary]:
    """Every run folder under ``root`` (``runs/<name>/<timestamp>``), newest first."""
    found = [r for p in root.glob("*/*") if p.is_dir() and (r := read_run(p)) is not None]
    return sorted(found, key=lambda r: r.path.name, reverse=True)


def read_history(path: Path) -> list[dict[str, float | None]]:
    """The per-epoch figures of run ``path`` (``history.json``); empty when it has none yet.

    Only numbers are kept; a NaN or infinite loss becomes None (JSON has no NaN).

    Example:
        >>> read_history(Path("runs/shapes/20261124-101500"))[0]
        {'train/loss': 1.02, 'val/loss': 0.91, 'val/accuracy': 0.62, 'epoch': 0}
    """
    try:
        data = json.loads((path / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    return [
        {k: (float(v) if math.isfinite(v) else None) for k, v in _numbers(entry).items()}
        for entry in data
        if isinstance(entry, dict)
    ]


def run_reports(path: Path) -> list[RunReport]:
    """The report files run ``path`` holds: each evaluation's, then each export's."""
    found = [RunReport("evaluation", p.parent.name, p) for p in sorted(path.glob("eval/*/report.html"))]
    found += [
        RunReport("export", p.parent.name, p) for p in sorted(path.glob("exports/*/export_report.html"))
    ]
    return [r for r in found if r.path.is_file()]


HEADLINE = ("accuracy", "macro_f1", "model/mase", "model/rmse")  # what a list shows of an evaluation


def headline(numbers: dict[str, float]) -> list[str]:
    """The names of an evaluation's numbers a list shows: the usual ones it has, else its first two."""
    return [k for k in HEADLINE if k in numbers] or list(numbers)[:2]


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _numbers(data: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)}
