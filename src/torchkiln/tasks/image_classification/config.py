"""The image classification config: its ``task`` and ``data`` sections and its run config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from torchkiln.components.augment import AugmentStep
from torchkiln.core.config import DataConfig, RunConfig, SplitConfig, TaskConfig


class ImageClassificationTaskConfig(TaskConfig):
    kind: Literal["image-classification"] = "image-classification"
    top_k: Annotated[int, Field(ge=1)] = 5


class ImageDataConfig(DataConfig):
    path: str = Field(description="An image folder, a CSV manifest, an .npz/.idx file, or a catalog name.")
    format: Literal["auto", "folder", "csv", "npz", "idx", "catalog"] = "auto"
    path_column: str = Field("path", description="A CSV manifest's column of image paths.")
    label_column: str = Field("label", description="A CSV manifest's column of labels.")
    split_column: str | None = Field(
        "split", description="A CSV manifest's train/val/test column, used when the file has it."
    )
    split: SplitConfig = SplitConfig()
    classes: list[str] | None = None
    image_size: Annotated[int, Field(ge=4, le=4096)] | None = None
    channels: Literal[1, 3] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: list[AugmentStep] = Field(default=[])
    limit_per_class: Annotated[int, Field(ge=1)] | None = None
    on_error: Literal["raise", "skip"] = "raise"
    cache: Literal["auto", "memory", "none"] = "auto"
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: training draws every class equally often (with replacement)."
    )
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    on_device: Literal["auto"] | bool = Field(
        "auto",
        description="Keep in-memory images on the run's device and build and augment batches there. "
        "auto: on CUDA, when a split takes at most a quarter of the free GPU memory.",
    )

    @model_validator(mode="after")
    def _stats_match(self) -> ImageDataConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"data.{name} needs {self.channels} values (one per channel); got {values}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"data.std values must be > 0; got {self.std}")
        return self


class ImageRunConfig(RunConfig):
    task: ImageClassificationTaskConfig
    data: ImageDataConfig
