"""The forecasting config: its ``task`` and ``data`` sections and its run config (judged by MASE)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from torchkiln.core.config import DataConfig, RunConfig, Strict, TaskConfig
from torchkiln.core.errors import ConfigError


class ForecastingTaskConfig(TaskConfig):
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


class TimeSeriesDataConfig(DataConfig):
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


class ForecastRunConfig(RunConfig):
    task: ForecastingTaskConfig
    data: TimeSeriesDataConfig
    default_monitor: ClassVar[tuple[str, str]] = ("val/mase", "min")  # lower is better

    @model_validator(mode="after")
    def _no_classes(self) -> ForecastRunConfig:
        if self.train.class_weights is not None:
            raise ValueError("train.class_weights weighs classes; a forecaster has none. Leave it out")
        return self


# --- accessors: the sections of a forecasting config, and the values prepare fills in ----------------
T = TypeVar("T")


def parts(cfg: RunConfig) -> tuple[TimeSeriesDataConfig, ForecastingTaskConfig]:
    """The data and task sections of a forecasting config; another task's config is a ConfigError."""
    d, t = cfg.data, cfg.task
    if not isinstance(d, TimeSeriesDataConfig) or not isinstance(t, ForecastingTaskConfig):
        wrong = [
            f"{name} section is of type {type(part).__name__}"
            for name, part, want in (("data", d, TimeSeriesDataConfig), ("task", t, ForecastingTaskConfig))
            if not isinstance(part, want)
        ]
        raise ConfigError(
            f"The forecasting task got a config whose {' and whose '.join(wrong)} (task.kind "
            f"'{t.kind}'); expected a forecasting config (TimeSeriesDataConfig, ForecastingTaskConfig). "
            f"Fix: build it with torchkiln.tasks.base.validate (or load_config), which picks the sections "
            f"by task.kind, and hand it to the task of that kind (torchkiln.tasks.get_task)."
        )
    return d, t


def resolved(value: T | None, field: str, what: str) -> T:
    """``data.<field>`` of a resolved config; unset (``prepare`` has not filled it in) is a ConfigError."""
    if value is None:
        raise ConfigError(
            f"{what} needs a resolved config, but data.{field} is not set; expected the config that "
            f"task.prepare returns, which fills data.{field} in from the data (a bundle's config is "
            f"resolved too). Fix: pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
        )
    return value


def num_targets(d: TimeSeriesDataConfig, what: str = "num_targets") -> int:
    return len(resolved(d.targets, "targets", what))


def num_covariates(d: TimeSeriesDataConfig) -> int:
    return len(d.covariates) + len(d.calendar)


def scaling(d: TimeSeriesDataConfig, what: str) -> tuple[list[str], str, ScalerStats]:
    """What turns a history into model inputs and outputs back into values: targets, freq, scaler."""
    targets, freq = resolved(d.targets, "targets", what), resolved(d.freq, "freq", what)
    return targets, freq, resolved(d.scaler_stats, "scaler_stats", what)
