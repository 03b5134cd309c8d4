"""The image data as ``kiln doctor`` reads it: the task's ``doctor_data`` hook."""

from __future__ import annotations

import numpy as np
import torch

from torchkiln.components.doctor_data import (
    ArrayImages,
    DoctorData,
    FileImages,
    Normalization,
    SplitItems,
    train_folds,
)
from torchkiln.core.config import RunConfig
from torchkiln.tasks.image_classification.config import ImageDataConfig
from torchkiln.tasks.image_classification.data import ImageData, SplitData


def _items(part: SplitData, data: ImageData) -> SplitItems:
    paths = part.paths
    source = (
        ArrayImages(part.images)
        if part.images is not None
        else FileImages(paths or (), size=data.size, channels=data.channels)
    )
    return SplitItems(
        name=(lambda i: f"'{paths[i]}'") if paths is not None else (lambda i: f"#{i}"),
        labels=part.labels.numpy(),
        images=source,
    )


def _subset(part: SplitData, index: np.ndarray) -> SplitData:
    rows = torch.from_numpy(index)
    return SplitData(
        part.labels[rows],
        images=part.images[rows] if part.images is not None else None,
        paths=tuple(part.paths[i] for i in index) if part.paths is not None else None,
    )


def _normalization(cfg: RunConfig, d: ImageDataConfig, data: ImageData) -> Normalization | None:
    """Who chose the normalization when the train split did not: the config, or the pretrained weights."""
    if {"mean", "std"} & d.model_fields_set:
        return Normalization(data.mean, data.std, "data.mean / data.std in the config")
    if cfg.model.pretrained:
        return Normalization(data.mean, data.std, f"the pretrained weights of model '{cfg.model.name}'")
    return None  # computed from the train split: it fits by construction


def doctor_data(cfg: RunConfig, resolved: RunConfig | None, data: ImageData | None) -> DoctorData:
    """Each split's images (in memory, or the files), labels and file names; how they are normalized.

    ``fold`` makes the handle of a label-noise fold: train is the ``fit`` items, val the ``held`` ones.
    """
    d = cfg.data
    if data is None or not isinstance(d, ImageDataConfig):
        return DoctorData()  # prepare refused the data: its error is the finding
    return DoctorData(
        splits={name: _items(part, data) for name, part in data.splits.items()},
        classes=data.classes,
        normalization=_normalization(cfg, d, data),
        balancing="data.sampler: balanced" if d.sampler == "balanced" else "",
        fold=train_folds(data, _subset),
    )
