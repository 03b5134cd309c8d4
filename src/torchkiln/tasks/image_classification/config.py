"""The image classification config: its ``task`` and ``data`` sections and its run config."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from torchkiln.components.augment import AugmentStep
from torchkiln.components.classification_threshold import (
    POSITIVE_CLASS_HELP,
    THRESHOLD_HELP,
    ThresholdConfig,
    check_binary_settings,
)
from torchkiln.core.config import DataConfig, RunConfig, SplitConfig, TaskConfig


class ImageClassificationTaskConfig(TaskConfig):
    kind: Literal["image-classification"] = "image-classification"
    top_k: Annotated[int, Field(ge=1)] = 5
    positive_class: str | None = Field(None, description=POSITIVE_CLASS_HELP)
    threshold: ThresholdConfig | None = Field(None, description=THRESHOLD_HELP)


class ImageDataConfig(DataConfig):
    path: str = Field(description="An image folder, a CSV manifest, an .npz/.idx file, or a catalog name.")
    format: Literal["auto", "folder", "csv", "npz", "idx", "catalog"] = "auto"
    path_column: str = Field("path", description="A CSV manifest's column of image paths.")
    label_column: str = Field("label", description="A CSV manifest's column of labels.")
    split_column: str | None = Field(
        "split", description="A CSV manifest's train/val/test column, used when the file has it."
    )
    split: SplitConfig = SplitConfig()
    group_column: str | None = Field(
        None, description="A CSV manifest's column of group ids (patients): no group spans two splits."
    )
    group_pattern: str | None = Field(
        None,
        description="A regex over each file name whose first group is the patient id, e.g. "
        "'(person\\d+|IM-\\d+)' for Kaggle's chest_xray: no patient spans two splits.",
    )
    classes: list[str] | None = None
    image_size: Annotated[int, Field(ge=4, le=4096)] | None = None
    channels: Literal[1, 3] | None = None
    contrast: Literal["none", "clahe"] = Field(
        "none", description="clahe: adaptive histogram equalization of every image, as preprocessing."
    )
    clahe_clip_limit: Annotated[float, Field(gt=0, le=1)] = Field(
        0.01, description="CLAHE's clip limit (scikit-image's): higher gives more local contrast."
    )
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

    @model_validator(mode="after")
    def _one_group_source(self) -> ImageDataConfig:
        if self.group_column is not None and self.group_pattern is not None:
            raise ValueError(
                "data.group_column and data.group_pattern both name the groups; give one (the manifest's "
                "column, or a regex over the file names)"
            )
        if self.group_pattern is not None:
            try:
                groups = re.compile(self.group_pattern).groups
            except re.error as exc:
                raise ValueError(f"data.group_pattern '{self.group_pattern}' is not a regex: {exc}") from None
            if groups < 1:
                raise ValueError(
                    f"data.group_pattern '{self.group_pattern}' has no group; put the patient id in "
                    f"parentheses, e.g. '(person\\d+)_'"
                )
        return self

    @property
    def clahe(self) -> float | None:
        """CLAHE's clip limit when data.contrast is clahe, else None: what the decoding path takes."""
        return self.clahe_clip_limit if self.contrast == "clahe" else None


class ImageRunConfig(RunConfig):
    task: ImageClassificationTaskConfig
    data: ImageDataConfig

    @model_validator(mode="after")
    def _binary_settings(self) -> ImageRunConfig:
        # With data.classes known (given, or filled in by prepare): a threshold needs two classes.
        check_binary_settings(self.task.positive_class, self.task.threshold, self.data.classes)
        return self
