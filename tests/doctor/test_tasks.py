"""Every registered task gives the doctor its data (the ``doctor_data`` hook), and its own tiny example
passes the quick checks without an error, as ``kiln train`` runs them first."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchkiln.components.doctor_data import DoctorSource
from torchkiln.doctor.subject import DoctorOptions, examine
from torchkiln.tasks import TASKS
from torchkiln.tasks.base import load_config

from .planted import examine as report_on

KINDS = TASKS.names()


@pytest.mark.parametrize("kind", KINDS)
def test_every_task_has_the_hook_and_its_example_has_no_error(kind: str, tmp_path: Path) -> None:
    task = TASKS.get(kind)
    assert isinstance(task, DoctorSource)
    raw = task.example_config(tmp_path)
    subject = examine(load_config(raw), DoctorOptions(quick=True))
    # What loading says as info (a text split's token lengths) is no problem.
    assert subject.view is not None and [f for f in subject.loading if f.severity != "info"] == []
    items = subject.view.series is not None or any(len(p) for p in subject.view.splits.values())
    assert items, "the view holds no item"
    assert [f.message for f in report_on(raw, cheap_only=True).errors] == []
