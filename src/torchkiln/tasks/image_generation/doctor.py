"""The generator's training images as ``kiln doctor`` reads them: the task's ``doctor_data`` hook."""

from __future__ import annotations

from torchkiln.components.doctor_data import ArrayImages, DoctorData, SplitItems
from torchkiln.core.config import RunConfig
from torchkiln.tasks.image_generation.data import GenerationData


def doctor_data(cfg: RunConfig, resolved: RunConfig | None, data: GenerationData | None) -> DoctorData:
    """Each split's images (in memory) and classes; pixels are scaled to [-1, 1], never normalized by data."""
    if data is None:
        return DoctorData()  # prepare refused the data: its error is the finding
    return DoctorData(
        splits={
            name: SplitItems(
                name=lambda i: f"#{i}", labels=part.labels.numpy(), images=ArrayImages(part.images)
            )
            for name, part in data.splits.items()
        },
        classes=data.classes,
    )
