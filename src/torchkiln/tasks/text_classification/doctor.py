"""The text data as ``kiln doctor`` reads it: the task's ``doctor_data`` hook."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from torchkiln.components.doctor_data import DoctorData, SplitItems, train_folds
from torchkiln.core.config import RunConfig
from torchkiln.tasks.text_classification.config import TextDataConfig

SNIPPET = 40  # characters of a text quoted in a finding


def _name(part: Any):
    def name(i: int) -> str:
        text = " ".join(part.texts[i].split())
        quoted = text if len(text) <= SNIPPET else text[: SNIPPET - 3] + "..."
        return f"row {part.rows[i]} ({quoted!r})"

    return name


def _subset(part: Any, index: np.ndarray) -> Any:
    """The items ``index`` of a ``TextSplit`` (the task's: ``task.py`` imports this module, not back)."""
    rows = index.tolist()
    return dataclasses.replace(
        part,
        ids=[part.ids[i] for i in rows],
        labels=part.labels[index],
        texts=[part.texts[i] for i in rows],
        rows=[part.rows[i] for i in rows],
    )


def doctor_data(cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData:
    """Each split's texts, labels and source rows (``data``: the task's ``TextData``, or None).

    ``fold`` makes the handle of a label-noise fold: train is the ``fit`` texts, val the ``held`` ones, with
    the run's tokenizer (fit on all of train: a tokenizer sees no labels).
    """
    d = cfg.data
    if data is None or not isinstance(d, TextDataConfig):
        return DoctorData()  # prepare refused the data: its error is the finding
    return DoctorData(
        splits={
            name: SplitItems(name=_name(part), labels=part.labels.numpy(), texts=part.texts)
            for name, part in data.splits.items()
        },
        classes=data.classes,
        balancing="data.sampler: balanced" if d.sampler == "balanced" else "",
        fold=train_folds(data, _subset),
    )
