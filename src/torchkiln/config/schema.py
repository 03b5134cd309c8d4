"""The run config: pydantic v2 models with ``extra="forbid"``.

The smallest config a user writes works as written; every other setting has a default, and the
data-dependent ones (classes, image size, channels, normalization) are filled in from the data by
:func:`torchkiln.config.resolve`, which returns a *new* config. Code never mutates a loaded config.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- task ---------------------------------------------------------------------------------------
class ImageClassificationTaskConfig(Strict):
    kind: Literal["image-classification"] = "image-classification"
    top_k: Annotated[int, Field(ge=1)] = 5


class TextClassificationTaskConfig(Strict):
    kind: Literal["text-classification"] = "text-classification"
    top_k: Annotated[int, Field(ge=1)] = 2


class ForecastingTaskConfig(Strict):
    """Multi-step forecasts with prediction intervals from quantile (pinball) loss."""

    kind: Literal["forecasting"] = "forecasting"
    quantiles: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(
        default=[0.1, 0.5, 0.9],
        description="Quantiles the model predicts; 0.5 (the median) is the point forecast.",
    )
    conformal: bool = Field(
        default=True,
        description="After training, widen each quantile interval that covered less than its nominal "
        "share of the val split until it does (conformalized quantile regression, per horizon step and "
        "target; an interval is never narrowed).",
    )

    @field_validator("quantiles")
    @classmethod
    def _median_and_sorted(cls, v: list[float]) -> list[float]:
        if 0.5 not in v:
            raise ValueError(f"quantiles must include 0.5 (the point forecast); got {v}. Add 0.5.")
        if sorted(set(v)) != v:
            raise ValueError(f"quantiles must be increasing and distinct; got {v}. Sort them.")
        return v


# Detection joins this union on ``kind``.
TaskConfig = Annotated[
    ImageClassificationTaskConfig | TextClassificationTaskConfig | ForecastingTaskConfig,
    Field(discriminator="kind"),
]
TEXT_TASKS = frozenset({"text-classification"})  # tasks whose ``data`` section is a TextDataConfig
SERIES_TASKS = frozenset({"forecasting"})  # tasks whose ``data`` section is a TimeSeriesDataConfig


# --- data ---------------------------------------------------------------------------------------
class SplitConfig(Strict):
    """Fractions used only when the data brings no split of its own."""

    val: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    test: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1

    @model_validator(mode="after")
    def _leave_some_train(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test must be < 0.9 so training keeps data; got {self.val + self.test}")
        return self


class RandomCrop(Strict):
    name: Literal["random_crop"]
    padding: Annotated[int, Field(ge=0)] = 4


class RandomResizedCrop(Strict):
    name: Literal["random_resized_crop"]
    scale: tuple[float, float] = (0.6, 1.0)


class HorizontalFlip(Strict):
    name: Literal["horizontal_flip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5


class VerticalFlip(Strict):
    name: Literal["vertical_flip"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.5


class Rotation(Strict):
    name: Literal["rotation"]
    degrees: Annotated[float, Field(ge=0, le=180)] = 10.0


class ColorJitter(Strict):
    name: Literal["color_jitter"]
    brightness: Annotated[float, Field(ge=0)] = 0.2
    contrast: Annotated[float, Field(ge=0)] = 0.2
    saturation: Annotated[float, Field(ge=0)] = 0.2
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class TrivialAugment(Strict):
    name: Literal["trivial_augment"]


class RandAugment(Strict):
    name: Literal["rand_augment"]
    num_ops: Annotated[int, Field(ge=1)] = 2
    magnitude: Annotated[int, Field(ge=0, le=30)] = 9


class RandomErasing(Strict):
    name: Literal["random_erasing"]
    p: Annotated[float, Field(ge=0, le=1)] = 0.25


AugmentStep = Annotated[
    RandomCrop
    | RandomResizedCrop
    | HorizontalFlip
    | VerticalFlip
    | Rotation
    | ColorJitter
    | TrivialAugment
    | RandAugment
    | RandomErasing,
    Field(discriminator="name"),
]


class DataConfig(Strict):
    path: str = Field(description="An image folder, a CSV manifest, an .npz/.idx file, or a catalog name.")
    format: Literal["auto", "folder", "csv", "npz", "idx", "catalog"] = "auto"
    split: SplitConfig = SplitConfig()
    classes: list[str] | None = None
    image_size: Annotated[int, Field(ge=4, le=4096)] | None = None
    channels: Literal[1, 3] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: list[AugmentStep] = []
    limit_per_class: Annotated[int, Field(ge=1)] | None = None
    on_error: Literal["raise", "skip"] = "raise"
    cache: Literal["auto", "memory", "none"] = "auto"
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _stats_match(self) -> DataConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"data.{name} needs {self.channels} values (one per channel); got {values}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"data.std values must be > 0; got {self.std}")
        return self


class TokenizerConfig(Strict):
    """How text becomes token ids. ``auto``: a pretrained model's own tokenizer, else a new WordPiece one."""

    kind: Literal["auto", "wordpiece", "bpe", "pretrained"] = "auto"
    vocab_size: Annotated[int, Field(ge=50, le=1_000_000)] = 8000
    lowercase: bool = True
    min_frequency: Annotated[int, Field(ge=1)] = 2
    pad_id: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Filled in from the tokenizer; the id rows are padded with."
    )


class TextDataConfig(Strict):
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
    max_length: Annotated[int, Field(ge=4, le=8192)] = 128
    tokenizer: TokenizerConfig = TokenizerConfig()
    bucket: bool = Field(default=True, description="Batch texts of similar length (less padding).")
    limit_per_class: Annotated[int, Field(ge=1)] | None = None
    on_error: Literal["raise", "skip"] = "raise"


class TimeSeriesSplitConfig(Strict):
    """Chronological splits: the last ``test`` steps are test, the ``val`` steps before them val.

    A number below 1 is a fraction of the series; 1 or more is a count of time steps. ``gap`` steps
    are dropped before val and before test, so targets right after a boundary do not sit next to
    the training targets they correlate with.
    """

    val: Annotated[float, Field(ge=0.0)] = 0.15
    test: Annotated[float, Field(ge=0.0)] = 0.15
    gap: Annotated[int, Field(ge=0)] = 0

    @field_validator("val", "test")
    @classmethod
    def _count_or_fraction(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"a split is a fraction below 1 or a whole number of steps; got {v}")
        return v


CalendarFeature = Literal["month", "quarter", "dayofweek", "dayofyear", "dayofmonth", "hour", "weekofyear"]


class ScalerStats(Strict):
    """A fitted per-column affine scaler: ``scaled = (f(x) - center) / scale`` with f = log1p or identity."""

    kind: Literal["standard", "minmax", "log1p", "none"]
    center: list[float]
    scale: list[float]


class TimeSeriesDataConfig(Strict):
    """The ``data`` section of forecasting: a CSV with a time column and value columns, or a catalog name."""

    path: str = Field(description="A .csv file or a catalog name (kiln list datasets).")
    format: Literal["auto", "csv", "catalog"] = "auto"
    time_column: str = "time"
    targets: list[str] | None = Field(
        default=None, description="Columns to forecast; default: every numeric column not a covariate."
    )
    covariates: list[str] = Field(
        default=[], description="Columns known in advance (holidays, prices): given for the horizon too."
    )
    calendar: list[CalendarFeature] = Field(
        default=[], description="Calendar features made from the timestamps, used as known covariates."
    )
    freq: str | None = Field(default=None, description="A pandas offset alias (MS, D, h); default: inferred.")
    season: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Steps per season (12 for monthly); default: from the frequency."
    )
    fill: Literal["raise", "interpolate", "ffill"] = Field(
        default="raise", description="Missing timestamps or values: an error, or filled."
    )
    split: TimeSeriesSplitConfig = TimeSeriesSplitConfig()
    scaler: Literal["standard", "minmax", "log1p", "none"] = "standard"
    lookback: Annotated[int, Field(ge=1)] = 24
    horizon: Annotated[int, Field(ge=1)] = 12
    # Filled in from the training part of the data by resolve (never from val or test):
    scaler_stats: ScalerStats | None = None
    mase_scale: list[float] | None = Field(
        default=None, description="Per target: the in-sample MAE of seasonal naive on train (MASE's scale)."
    )
    start: str | None = Field(
        default=None, description="Use rows from this time on (ISO 8601); filled in with the first one used."
    )
    end: str | None = Field(
        default=None, description="Use rows up to this time (ISO 8601); filled in with the last one used."
    )


# --- model --------------------------------------------------------------------------------------
class ModelConfig(Strict):
    name: str = "cnn"
    args: dict[str, Any] = {}
    pretrained: bool | str = Field(
        default=False,
        description="true: the weights packaged with the model; a path: a local .safetensors/.pth file.",
    )
    freeze_backbone: bool = False
    unfreeze_last: Annotated[int, Field(ge=0)] = 0
    backbone_lr_mult: Annotated[float, Field(gt=0, le=1)] = 1.0
    layer_lr_decay: Annotated[float, Field(gt=0, le=1)] | None = Field(
        default=None,
        description="Layer-wise LR decay: block i of N (from the input) trains at lr * decay**(N - i).",
    )


# --- training -----------------------------------------------------------------------------------
class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "adamw"
    lr: Annotated[float, Field(gt=0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(Strict):
    name: Literal["none", "step", "multistep", "cosine", "onecycle", "plateau"] = "onecycle"
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    step_size: Annotated[int, Field(ge=1)] = 10
    milestones: list[int] = [30, 60, 90]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_lr: Annotated[float, Field(ge=0)] = 0.0
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.25
    patience: Annotated[int, Field(ge=0)] = 3

    @model_validator(mode="after")
    def _warmup_only_with_cosine(self) -> SchedulerConfig:
        if self.warmup_epochs and self.name != "cosine":
            raise ValueError(
                f"warmup_epochs is used only by the cosine schedule; this one is '{self.name}', which "
                f"would ignore it. Set name: cosine, or remove warmup_epochs"
                + (" (onecycle warms up by itself: set pct_start)." if self.name == "onecycle" else ".")
            )
        return self


class EarlyStoppingConfig(Strict):
    patience: Annotated[int, Field(ge=1)] | None = None
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class TrainConfig(Strict):
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 128
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    accumulate: Annotated[int, Field(ge=1)] = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    device: str = "auto"
    monitor: str = Field(default="val/accuracy", description="Metric that picks the best checkpoint.")
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint_every: Annotated[int, Field(ge=0)] = 200
    log_every: Annotated[int, Field(ge=1)] = 50
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    deterministic: bool = False

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if v not in ("auto", "cpu", "mps") and not v.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got '{v}'")
        return v


class TrackingConfig(Strict):
    tensorboard: bool = True
    mlflow: bool = True
    mlflow_uri: str | None = Field(
        default=None, description="Any MLflow tracking URI; default: sqlite:///<runs_dir>/mlflow.db"
    )
    experiment: str | None = None
    histograms: bool = True


class EvaluateConfig(Strict):
    split: Literal["train", "val", "test"] = "test"
    batch_size: Annotated[int, Field(ge=1)] = 256
    mistakes: Annotated[int, Field(ge=0, le=200)] = 24


# --- the run ------------------------------------------------------------------------------------
class RunConfig(Strict):
    task: TaskConfig
    data: DataConfig | TextDataConfig | TimeSeriesDataConfig  # which one follows from task.kind
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0
    name: str | None = None
    runs_dir: str = "runs"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        # `task: image-classification` is shorthand for `task: {kind: image-classification}`.
        if isinstance(raw, dict):
            raw = dict(raw)
            if isinstance(raw.get("task"), str):
                raw["task"] = {"kind": raw["task"]}
            if isinstance(raw.get("data"), str):
                raw["data"] = {"path": raw["data"]}
            if cls is RunConfig:  # the union: validate the section the task takes (see run_config_type)
                data = raw.get("data")
                wanted = run_config_type(raw).model_fields["data"].annotation
                if isinstance(data, BaseModel) and not isinstance(data, wanted):
                    data = data.model_dump(exclude_unset=True)
                if isinstance(data, dict):
                    raw["data"] = _validate_at("data", wanted, data)
            kind = raw["task"].get("kind") if isinstance(raw.get("task"), dict) else None
            if kind in SERIES_TASKS and isinstance(raw.get("train", {}), dict):
                # Forecasts are judged by MASE (lower is better), not accuracy.
                raw["train"] = {"monitor": "val/mase", "monitor_mode": "min", **raw.get("train", {})}
        return raw

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        stem = self.data.path.rstrip("/").split("/")[-1].split(".")[0] or "data"
        return f"{stem}-{self.model.name}"


def _validate_at(field: str, model: type[BaseModel], value: Any) -> BaseModel:
    """``model.model_validate(value)``, with error locations under ``field`` as if validated in place."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {
                "type": e["type"],
                "loc": (field, *e["loc"]),
                "input": e["input"],
                **({"ctx": e["ctx"]} if "ctx" in e else {}),
            }
            for e in exc.errors()
        ]
        raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]


class ImageRunConfig(RunConfig):
    data: DataConfig


class TextRunConfig(RunConfig):
    data: TextDataConfig


class ForecastRunConfig(RunConfig):
    data: TimeSeriesDataConfig


def run_config_type(raw: Any) -> type[RunConfig]:
    """The RunConfig subclass for a raw config's task (its ``data`` section differs per task)."""
    task = raw.get("task") if isinstance(raw, dict) else None
    kind = task if isinstance(task, str) else task.get("kind") if isinstance(task, dict) else None
    if kind in TEXT_TASKS:
        return TextRunConfig
    return ForecastRunConfig if kind in SERIES_TASKS else ImageRunConfig
