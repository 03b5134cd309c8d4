"""The detection data as ``kiln doctor`` reads it: the task's ``doctor_data`` hook."""

from __future__ import annotations

from torchkiln.components.doctor_data import DoctorData, FileImages, Normalization, SplitItems
from torchkiln.core.config import RunConfig
from torchkiln.tasks.object_detection.config import DetectionDataConfig
from torchkiln.tasks.object_detection.data import DetectionData

SIZE = 64  # pixels a side the images are read at: enough for thumbnails and pixel statistics


def _normalization(cfg: RunConfig, resolved: RunConfig) -> Normalization | None:
    d, r = cfg.data, resolved.data
    if not isinstance(r, DetectionDataConfig) or r.mean is None or r.std is None:
        return None
    if {"mean", "std"} & d.model_fields_set:
        source = "data.mean / data.std in the config"
    elif cfg.model.pretrained:
        source = f"the pretrained weights of model '{cfg.model.name}'"
    else:
        source = "ImageNet's statistics (the detectors' default)"
    return Normalization(tuple(r.mean), tuple(r.std), source)


def doctor_data(cfg: RunConfig, resolved: RunConfig | None, data: DetectionData | None) -> DoctorData:
    """Each split's images, read from their files at SIZE pixels (boxes aside), and their normalization."""
    if data is None or resolved is None:
        return DoctorData()  # prepare refused the data: its error is the finding
    splits = {}
    for name, records in data.splits.items():
        paths = [r.path for r in records]
        splits[name] = SplitItems(
            name=lambda i, paths=paths: f"'{paths[i]}'", images=FileImages(paths, size=SIZE, channels=3)
        )
    return DoctorData(splits=splits, classes=data.classes, normalization=_normalization(cfg, resolved))
