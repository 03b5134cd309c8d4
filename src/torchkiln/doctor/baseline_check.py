"""The linear baseline a network must beat, and whether this config's last run did.

A classifier that a ten-line TF-IDF (or pixels) + logistic regression pipeline beats is the book's "skipping
the fundamentals" mistake. ``kiln doctor`` fits the baseline on train, C chosen on val
(:mod:`torchkiln.tasks.classification_baseline`; cached, so the training summary's comparison is then free),
says what it reaches on val, and warns when the latest finished run of this config is below it. Not cheap
(seconds to a minute on large image sets), so ``kiln train``'s quick pass leaves it to the training summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torchkiln.components.classification_baseline import BELOW_BASELINE_FIXES
from torchkiln.core.errors import KilnError
from torchkiln.doctor.findings import Finding
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import Subject
from torchkiln.tasks.classification_baseline import val_accuracy


def latest_run(runs_dir: str, run_name: str) -> tuple[Path, dict[str, Any]] | None:
    """The newest run directory of ``run_name`` with a bundle, and its ``bundle.json``; None without one."""
    runs = sorted(Path(runs_dir, run_name).glob("*/bundle/bundle.json"), key=lambda p: p.parent.parent.name)
    for meta_file in reversed(runs):
        try:
            return meta_file.parent.parent, json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


@check("baseline", cheap=False)
def baseline(s: Subject) -> list[Finding]:
    """What a linear baseline reaches on val, and whether this config's latest run beats it."""
    cfg, data = s.resolved, s.data
    if cfg is None or data is None:
        return []
    try:
        found = val_accuracy(cfg, s.task, data)
    except KilnError as exc:  # one class in train, scikit-learn missing
        return [Finding("baseline", "info", f"No baseline was fit: {exc}")]
    if found is None:  # no baseline for this task, turned off, or no val split
        return []
    result, accuracy = found
    said = f"A linear baseline reaches {accuracy:.4f} accuracy on val ({result.describe()})"
    run = latest_run(cfg.runs_dir, cfg.run_name)
    model = (run[1].get("trained") or {}).get("metrics", {}).get("val/accuracy") if run else None
    if run is None or model is None:
        return [Finding("baseline", "info", f"{said}: a network worth training must beat it.")]
    where = f"the latest run of this config ({run[0]}) reached {float(model):.4f}"
    if float(model) < accuracy:
        return [
            Finding(
                "baseline",
                "warning",
                f"{said}; {where}, below it: the network does not beat a linear baseline.",
                BELOW_BASELINE_FIXES,
            )
        ]
    return [Finding("baseline", "info", f"{said}; {where}, above it.")]
