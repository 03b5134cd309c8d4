"""The run config every task shares: pydantic v2 models with ``extra="forbid"``.

The smallest config a user writes works as written; every other setting has a default, and the
data-dependent ones (classes, image size, channels, normalization, scalers) are filled in from the
data by the task's ``prepare``, which returns a *new* config. Code never mutates a loaded config.
Each task family defines its ``task`` and ``data`` sections and a RunConfig subclass (its
``config.py``); :func:`torchkiln.tasks.base.validate` picks that subclass by ``task.kind``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (e.g. cuda:1), N for cuda:N, or mps"


def device_name(value: Any) -> Any:
    """A device setting in its one spelling: a bare GPU number (``0``, ``"1"``) means ``cuda:N``, as in
    Ultralytics; anything else is returned as given, for the caller to check against ``DEVICE_NAME``.

    Example:
        >>> device_name(0), device_name("1"), device_name("cpu")
        ('cuda:0', 'cuda:1', 'cpu')
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"cuda:{value}"
    if isinstance(value, str) and value.strip().isdigit():
        return f"cuda:{int(value)}"
    return value


class SplitConfig(Strict):
    """Fractions used only when the data brings no split of its own (``val`` also when it brings no val,
    or one smaller than ``min_val``)."""

    val: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    test: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    min_val: Annotated[int, Field(ge=0)] = Field(
        50,
        description="Classification data: a val split the data brings with fewer items than this is merged "
        "into train and carved again (data.split.val of train), with a warning; 0 keeps it as it is.",
    )

    @model_validator(mode="after")
    def _leave_some_train(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test must be < 0.9 so training keeps data; got {self.val + self.test}")
        return self


# --- model --------------------------------------------------------------------------------------
class ModelConfig(Strict):
    name: str = "cnn"
    args: dict[str, Any] = {}
    pretrained: bool | str = Field(
        default=False,
        description="true: the weights packaged with the model; a path: a local .safetensors/.pth file.",
    )
    init_from: str | None = Field(
        default=None,
        description="A bundle (or run directory) whose weights start this new run: fine-tuning, retraining.",
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
    class_weights: Literal["auto"] | list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        description="Classifiers: a loss weight per class, or auto (n / (classes * count), from train).",
    )
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    accumulate: Annotated[int, Field(ge=1)] = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool | Literal["reduce-overhead", "max-autotune"] = Field(
        default=False,
        description="torch.compile the modules; reduce-overhead adds CUDA graphs (static shapes).",
    )
    device: str = "auto"
    monitor: str = Field(default="val/accuracy", description="Metric that picks the best checkpoint.")
    monitor_mode: Literal["max", "min"] = "max"
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    checkpoint_every: Annotated[int, Field(ge=0)] = 200
    log_every: Annotated[int, Field(ge=1)] = 50
    # One line every N epochs (and the last); 0: none, only the final summary. A 300-epoch run need not
    # print 300 lines.
    log_epochs: Annotated[int, Field(ge=0)] = 1
    max_minutes: Annotated[float, Field(gt=0)] | None = None
    deterministic: bool = False
    ddp_timeout: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="Seconds a rank of a multi-process run waits for the others before it gives up.",
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, v: Any) -> Any:
        v = device_name(v)
        if isinstance(v, str) and not DEVICE_NAME.fullmatch(v):
            raise ValueError(f"device must be one of {DEVICE_CHOICES}")  # the error adds "Got ..."
        return v


class TrackingConfig(Strict):
    tensorboard: bool = True
    mlflow: bool = True
    mlflow_uri: str | None = Field(
        default=None,
        description="Any MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<runs_dir>/mlflow.db",
    )
    experiment: str | None = None
    histograms: bool = True


class ReferenceConfig(Strict):
    """The reference profile of held-out data a bundle keeps for drift monitoring (reference.safetensors)."""

    split: Literal["train", "val", "test", "none"] = Field(
        default="val", description="The split profiled at the end of training; none writes no reference."
    )
    items: Annotated[int, Field(ge=1, le=100_000)] = Field(
        default=2000, description="At most this many items, a sample drawn with the run's seed."
    )
    dims: Annotated[int, Field(ge=1, le=256)] = Field(
        default=16, description="Penultimate-layer features are reduced by PCA to at most this many."
    )


class EvaluateConfig(Strict):
    split: Literal["train", "val", "test"] = "test"
    batch_size: Annotated[int, Field(ge=1)] = 256
    mistakes: Annotated[int, Field(ge=0, le=200)] = 24
    reference: ReferenceConfig = ReferenceConfig()
    baseline: bool = Field(
        default=True,
        description="Classifiers: fit a linear baseline (TF-IDF or pixels + logistic regression) on the same "
        "splits; kiln evaluate reports the model beside it, training warns when val is below it.",
    )


# --- tuning (kiln tune) -------------------------------------------------------------------------
PARAM_FORMS = (
    "{loguniform: [low, high]}, {uniform: [low, high]}, {int: [low, high], step: k, log: bool} or "
    "{choice: [a, b, ...]}"
)


class ParamSpace(Strict):
    """The distribution of one tuned setting. Written as one of ``PARAM_FORMS``; stored as kind and bounds.

    Example:
        >>> ParamSpace.model_validate({"loguniform": [1e-4, 1e-1]}).kind
        'loguniform'
    """

    kind: Literal["loguniform", "uniform", "int", "choice"]
    low: int | float | None = None
    high: int | float | None = None
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _written_form(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or "kind" in raw:
            return raw
        kinds = [k for k in ("loguniform", "uniform", "int", "choice") if k in raw]
        if len(kinds) != 1:
            raise ValueError(f"a tuned setting is one of {PARAM_FORMS}; got {raw}")
        kind, rest = kinds[0], {k: v for k, v in raw.items() if k != kinds[0]}
        if kind == "choice":
            return {"kind": kind, "choices": raw[kind], **rest}
        bounds = raw[kind]
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise ValueError(f"{kind} takes [low, high]; got {bounds!r}")
        return {"kind": kind, "low": bounds[0], "high": bounds[1], **rest}

    @model_serializer(mode="plain")
    def _as_written(self) -> dict[str, Any]:
        # Dumped as written ({loguniform: [1.0e-4, 0.1]}), so that kiln config show and a saved config
        # read like the file.
        if self.kind == "choice":
            return {"choice": self.choices}
        extra = {"step": self.step} if self.step != 1 else {}
        return {self.kind: [self.low, self.high], **extra, **({"log": True} if self.log else {})}

    @model_validator(mode="after")
    def _sound(self) -> ParamSpace:
        if self.kind == "choice":
            if not self.choices:
                raise ValueError("choice needs at least one value: {choice: [a, b, ...]}")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high; got [{self.low}, {self.high}]")
        if self.kind != "int" and (self.step != 1 or self.log):
            raise ValueError(f"step and log are settings of int ranges, not of {self.kind}")
        if self.kind == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0; got {self.low}. Use uniform for a range from 0")
        if self.kind == "int":
            if not (float(self.low).is_integer() and float(self.high).is_integer()):
                raise ValueError(f"int needs whole bounds; got [{self.low}, {self.high}]. Use uniform")
            if self.log and (self.low < 1 or self.step != 1):
                raise ValueError("int with log: true needs low >= 1 and no step")
        return self


class TuneSampler(Strict):
    name: Literal["tpe", "random"] = "tpe"
    startup_trials: Annotated[int, Field(ge=0)] = Field(
        default=5, description="tpe: trials sampled at random before the model of the results takes over."
    )


class TunePruner(Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    startup_trials: Annotated[int, Field(ge=0)] = Field(
        default=3, description="median: trials that finish before any trial is pruned."
    )
    warmup_epochs: Annotated[int, Field(ge=0)] = Field(
        default=1, description="median: epochs every trial trains before it can be pruned."
    )
    min_epochs: Annotated[int, Field(ge=1)] = Field(
        default=1, description="hyperband: the fewest epochs a trial trains (its smallest budget)."
    )
    reduction_factor: Annotated[int, Field(ge=2)] = Field(
        default=3, description="hyperband: 1 / the fraction of trials promoted from one rung to the next."
    )


class TuneConfig(Strict):
    """The ``tune`` section: what ``kiln tune`` searches, and how. Training ignores it."""

    metric: str | None = Field(
        default=None, description="An epoch figure such as val/loss; default: train.monitor."
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Default: from train.monitor_mode (max: maximize)."
    )
    params: dict[str, ParamSpace] = Field(min_length=1, description="A config key -> its distribution.")
    sampler: TuneSampler = TuneSampler()
    pruner: TunePruner = TunePruner()
    trials: Annotated[int, Field(ge=1)] = 20
    timeout: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Seconds after which no new trial starts; running ones finish."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        # `sampler: random` is shorthand for `sampler: {name: random}`, and so for the pruner.
        if isinstance(raw, dict):
            raw = {
                k: {"name": v} if k in ("sampler", "pruner") and isinstance(v, str) else v
                for k, v in raw.items()
            }
        return raw

    @field_validator("params")
    @classmethod
    def _keys(cls, params: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        for key in params:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
                raise ValueError(
                    f"'{key}' is not a config key; write keys as in --set, e.g. train.optimizer.lr"
                )
            if key.split(".")[0] in ("tune", "runs_dir"):
                raise ValueError(f"'{key}' cannot be tuned: it decides where and how the study itself runs")
        return params

    def objective(self, train: TrainConfig) -> tuple[str, Literal["maximize", "minimize"]]:
        """The figure trials are judged by and its direction, defaults filled in from ``train``."""
        direction = self.direction or ("maximize" if train.monitor_mode == "max" else "minimize")
        return self.metric or train.monitor, direction


class TaskConfig(Strict):
    """The ``task`` section; each family's subclass fixes ``kind`` and adds its settings."""

    kind: str


class DataConfig(Strict):
    """The ``data`` section; each family's subclass says what a data set is (a path at least)."""

    path: str


class RunConfig(Strict):
    """The settings every run has. A family's subclass narrows ``task`` and ``data`` to its own types;
    :func:`torchkiln.tasks.base.validate` picks the subclass by ``task.kind``.
    """

    task: TaskConfig
    data: DataConfig
    default_monitor: ClassVar[tuple[str, str]] = ("val/accuracy", "max")  # (train.monitor, monitor_mode)
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0
    name: str | None = None
    runs_dir: str = "runs"
    tune: TuneConfig | None = Field(
        default=None, description="What kiln tune searches; kiln train ignores it."
    )

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
            monitor, mode = cls.default_monitor
            if "train" not in raw or isinstance(raw.get("train"), dict):
                raw["train"] = {"monitor": monitor, "monitor_mode": mode, **raw.get("train", {})}
        return raw

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        stem = self.data.path.rstrip("/").split("/")[-1].split(".")[0] or "data"
        return f"{stem}-{self.model.name}"


def quick_run(runs_dir: str, *, batch_size: int) -> dict[str, Any]:
    """The ``train``, ``tracking`` and ``runs_dir`` sections of a run that takes seconds on a CPU.

    One epoch in fp32 without a schedule (one-cycle needs more than a few steps) and without tracking; the
    task families' example configs (``Task.example_config``) share it.
    """
    train = {"epochs": 1, "batch_size": batch_size, "scheduler": {"name": "none"}}
    train |= {"device": "cpu", "precision": "fp32"}
    return {"train": train, "tracking": {"tensorboard": False, "mlflow": False}, "runs_dir": runs_dir}
