"""The object detection config: its ``task`` and ``data`` sections and its run config."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from torchkiln.components.augment import ColorJitter, HorizontalFlip, VerticalFlip
from torchkiln.core.config import DataConfig, ModelConfig, RunConfig, SplitConfig, Strict, TaskConfig


class DetectionTaskConfig(TaskConfig):
    kind: Literal["object-detection"] = "object-detection"
    score_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.5, description="Answers keep boxes scoring at least this; precision/recall/F1 are taken here."
    )
    max_detections: Annotated[int, Field(ge=1, le=1000)] = Field(
        100, description="At most this many boxes per image, highest score first."
    )
    iou_threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(
        0.5, description="A prediction matches a true box at this IoU or more (precision, recall, drawing)."
    )


class ScaleJitter(Strict):
    """Zoom each training tile by a random factor in ``scale`` (boxes move with it), then crop or pad back."""

    name: Literal["scale_jitter"]
    scale: tuple[float, float] = (0.75, 1.33)


DetectionAugmentStep = Annotated[
    HorizontalFlip | VerticalFlip | ColorJitter | ScaleJitter, Field(discriminator="name")
]
DEFAULT_AUGMENT = [
    HorizontalFlip(name="horizontal_flip"),
    VerticalFlip(name="vertical_flip"),
    ColorJitter(name="color_jitter", brightness=0.2, contrast=0.2, saturation=0.2),
]


class DetectionDataConfig(DataConfig):
    path: str = Field(
        description="A Pascal VOC folder (Annotations/ + JPEGImages/) or one XML, a COCO JSON file, a CSV "
        "(path,xmin,ymin,xmax,ymax,label), a YOLO images folder, or a catalog name (trees)."
    )
    format: Literal["auto", "voc", "coco", "csv", "yolo", "catalog"] = "auto"
    images: str | None = Field(
        None, description="The folder the annotations' image names are relative to (default: beside them)."
    )
    classes: list[str] | None = Field(
        None, description="The class names, in label order; YOLO needs them (or a classes.txt)."
    )
    split: SplitConfig = SplitConfig()
    tile_size: Annotated[int, Field(ge=64, le=4096)] = Field(
        512, description="Training crops are at most this big; larger images are predicted tile by tile."
    )
    scale: Annotated[float, Field(gt=0.0, le=4.0)] = Field(
        1.0,
        description="Zoom every image by this factor inside the detector (2 for objects under ~30 px); "
        "answers stay in the input's pixels.",
    )
    tile_overlap: Annotated[float, Field(ge=0.0, le=0.5)] = Field(
        0.25, description="The share of a tile that overlaps its neighbour when an image is tiled."
    )
    augment: list[DetectionAugmentStep] = Field(default=list(DEFAULT_AUGMENT))
    anchor_sizes: list[Annotated[int, Field(ge=2)]] | None = Field(
        None,
        description="One anchor size per feature level, in the detector's pixels (after data.scale); "
        "default: from the training boxes' sizes.",
    )
    mean: list[float] | None = Field(
        None,
        description="Per-channel mean of [0, 1] pixels; default: the pretrained weights' (or ImageNet's).",
    )
    std: list[float] | None = Field(None, description="Per-channel std of [0, 1] pixels; default as mean.")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = 0

    @model_validator(mode="after")
    def _anchors(self) -> DetectionDataConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != 3:
                raise ValueError(f"data.{name} needs 3 values (R, G, B); got {values}")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"data.std values must be > 0; got {self.std}")
        sizes = self.anchor_sizes
        if sizes is not None and (len(sizes) != 5 or sorted(sizes) != sizes):
            raise ValueError(
                f"data.anchor_sizes needs 5 increasing sizes in pixels (one per feature level, finest "
                f"first), e.g. [8, 16, 32, 64, 128]; got {sizes}"
            )
        return self


class DetectionModelConfig(ModelConfig):
    name: str = "fasterrcnn_lite0_fpn"


class DetectionRunConfig(RunConfig):
    task: DetectionTaskConfig
    data: DetectionDataConfig
    model: DetectionModelConfig = DetectionModelConfig()
    default_monitor: ClassVar[tuple[str, str]] = ("val/map_50", "max")
