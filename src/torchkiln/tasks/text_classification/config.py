"""The text classification config: its ``task`` and ``data`` sections and its run config."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from torchkiln.components.classification_threshold import (
    POSITIVE_CLASS_HELP,
    THRESHOLD_HELP,
    ThresholdConfig,
    check_binary_settings,
)
from torchkiln.core.config import DataConfig, RunConfig, SplitConfig, Strict, TaskConfig


class TextClassificationTaskConfig(TaskConfig):
    kind: Literal["text-classification"] = "text-classification"
    top_k: Annotated[int, Field(ge=1)] = 2
    positive_class: str | None = Field(None, description=POSITIVE_CLASS_HELP)
    threshold: ThresholdConfig | None = Field(None, description=THRESHOLD_HELP)


class TokenizerConfig(Strict):
    """How text becomes token ids. ``auto``: a pretrained model's own tokenizer, else a new WordPiece one."""

    kind: Literal["auto", "wordpiece", "bpe", "pretrained"] = "auto"
    vocab_size: Annotated[int, Field(ge=50, le=1_000_000)] = 8000
    lowercase: bool = True
    min_frequency: Annotated[int, Field(ge=1)] = 2
    pad_id: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Filled in from the tokenizer; the id rows are padded with."
    )


class TextDataConfig(DataConfig):
    """The ``data`` section of text tasks: a CSV, TSV or JSONL file, or a catalog name."""

    path: str = Field(description="A .csv/.tsv/.jsonl file or a catalog name (kiln list datasets).")
    format: Literal["auto", "csv", "tsv", "jsonl", "catalog"] = "auto"
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = Field(
        default=None, description="A column holding train/val/test per row; otherwise data.split applies."
    )
    split: SplitConfig = SplitConfig()
    classes: list[str] | None = None
    max_length: Annotated[int, Field(ge=4, le=8192)] | Literal["auto"] = Field(
        default=128,
        description="Tokens per text; longer texts are truncated. auto: the train split's 95th percentile, "
        "rounded up to a multiple of 8, at most 512 (or the model's positions); a run saves the number.",
    )
    tokenizer: TokenizerConfig = TokenizerConfig()
    bucket: bool = Field(default=True, description="Batch texts of similar length (less padding).")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: training draws every class equally often (with replacement)."
    )
    limit_per_class: Annotated[int, Field(ge=1)] | None = None
    on_error: Literal["raise", "skip"] = "raise"


class TextRunConfig(RunConfig):
    task: TextClassificationTaskConfig
    data: TextDataConfig

    @model_validator(mode="after")
    def _binary_settings(self) -> TextRunConfig:
        # With data.classes known (given, or filled in by prepare): a threshold needs two classes.
        check_binary_settings(self.task.positive_class, self.task.threshold, self.data.classes)
        return self
