"""Evaluate a forecasting bundle beside the classical baselines, on exactly the same windows.

Every model forecasts the windows of one split: from each origin ``o``, the next ``horizon`` steps,
reading only ``series[:o]``. The network gets the windows the task's loader builds; naive, seasonal
naive, ETS and ARIMA (:mod:`torchkiln.tasks.forecasting.baselines`) are chosen and fitted on the train rows
alone and then run from the same origins. All are scored against the same targets, in the data's own
units, by :mod:`torchkiln.tasks.forecasting.metrics`.

Example:
    >>> result = evaluate_forecast(load_bundle("runs/air/20261124-201525"), split="test", out_dir=Path("ev"))
    >>> result.metrics["model"]["relative_mae"]  # < 1: better than seasonal naive on these windows
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.table import Table
from torch.utils.data import DataLoader

from torchkiln.artifacts.bundle import Bundle, without_pretrained
from torchkiln.components.splits import SPLITS
from torchkiln.core.errors import BundleError, DataError
from torchkiln.core.io import atomic_write_text
from torchkiln.tasks.forecasting.baselines import fit_baselines
from torchkiln.tasks.forecasting.config import ForecastingTaskConfig, TimeSeriesDataConfig
from torchkiln.tasks.forecasting.data import iso_time
from torchkiln.tasks.forecasting.metrics import forecast_errors, summarize_errors
from torchkiln.tasks.forecasting.report import SplitForecasts, render_report
from torchkiln.tasks.forecasting.windows import unscale

MODEL = "model"  # the network's key in every per-model dict; the baselines use their method names
REFERENCE = "seasonal_naive"  # relative_mae divides by its MAE on the same windows
CLASSICAL = ("ets", "arima")  # fitted baselines: skipped with a note when they cannot run
T = TypeVar("T")


MODEL_NAMES = {"model": "network", "naive": "naive", "seasonal_naive": "seasonal naive"}
REL_MAE = "rel. MAE = MAE / seasonal naive's MAE on the same windows (< 1 beats it)."


def forecast_table(title: str, metrics: dict[str, dict[str, float]]) -> Table:
    """Models x (MAE, RMSE, sMAPE, MASE, rel. MAE), the network first."""
    table = Table(title=title)
    table.add_column("model")
    for header in ("MAE", "RMSE", "sMAPE %", "MASE", "rel. MAE"):
        table.add_column(header, justify="right")
    for name, m in metrics.items():
        values = (m["mae"], m["rmse"], m["smape"], m["mase"], m["relative_mae"])
        table.add_row(
            MODEL_NAMES.get(name, name.upper()), *(f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" for v in values)
        )
    return table


@dataclass(frozen=True)
class ForecastEvalResult:
    """What ``kiln evaluate`` measured on a forecasting bundle; ``metrics_file`` holds all of it.

    Attributes:
        metrics: ``"model"`` (the network), ``"naive"``, ``"seasonal_naive"``, ``"ets"``, ``"arima"``
            -> overall ``mae``, ``rmse``, ``mape`` and ``smape`` (percent), ``mase`` and ``relative_mae``
            (MAE / seasonal naive's MAE on the same windows). The network's also has ``coverage``: the
            share of targets inside ``interval``.
        per_step: the same metrics per horizon step (lists of ``horizon`` floats), per model.
        baselines: per baseline, one model name per target column, e.g. ``{"ets": ["ETS(M,A,M)"]}``.
        report: the written ``report.html``. metrics_file: the written ``metrics.json``.
        split: the split evaluated. windows: how many forecast windows (origins) it has.
        span: the first and last timestamp of the split's targets (ISO 8601).
        interval: the network's outermost quantile levels, e.g. ``(0.1, 0.9)``; None with the median alone.
        notes: what was skipped and why (ETS and ARIMA without statsmodels, ...).
        forecasts: every model's forecasts of the split's windows, and the targets (kiln backtest pools
            them over its folds).
    """

    metrics: dict[str, dict[str, float]]
    per_step: dict[str, dict[str, list[float]]]
    baselines: dict[str, list[str]]
    report: Path
    metrics_file: Path
    split: str
    windows: int
    span: tuple[str, str]
    interval: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    forecasts: SplitForecasts | None = field(default=None, repr=False, compare=False)

    def summary(self) -> list[Any]:
        """The models x metrics table, what rel. MAE means, and the interval's coverage."""
        title = f"{self.split} split: {self.windows} windows, same for every model"
        lines: list[Any] = [forecast_table(title, self.metrics), REL_MAE]
        if self.interval is not None:
            lo, hi = self.interval
            coverage = 100 * self.metrics["model"]["coverage"]
            lines.append(
                f"coverage of the {lo:g}-{hi:g} interval: {coverage:.1f} % (nominal {100 * (hi - lo):.0f} %)"
            )
        return lines


def evaluate_forecast(
    bundle: Bundle, *, split: str, out_dir: Path, device: torch.device | None = None
) -> ForecastEvalResult:
    """Score a forecasting bundle and the four baselines on ``split``; write metrics.json and report.html.

    Args:
        bundle: a loaded forecasting bundle (:func:`~torchkiln.artifacts.bundle.load_bundle`).
        split: ``train``, ``val`` or ``test``.
        out_dir: folder to write into; created if missing.
        device: where the network runs; default CPU.

    Returns:
        A :class:`ForecastEvalResult`: overall and per-step metrics per model, the chosen baseline
        models, and the paths of both files.

    Raises:
        DataError: the split is unknown or has no windows, or seasonal naive has no value one season
            before a window.
        BundleError: the bundle's config is not resolved (no data.mase_scale or data.scaler_stats).

    Example:
        >>> r = evaluate_forecast(load_bundle("runs/air/20261124-201525"), split="test", out_dir=Path("ev"))
        >>> r.metrics["model"]["mase"], r.baselines["arima"]
    """
    cfg = bundle.config
    d, _ = _parts(bundle)
    mase_scale = _resolved(bundle, d.mase_scale, "mase_scale")  # checked before the slow forecasts
    fc = forecast_split(bundle, split=split, device=device or torch.device("cpu"))
    metrics, per_step = score(fc, mase_scale=np.asarray(mase_scale))
    title = f"{cfg.run_name}: {split} split"
    extra = _summary(bundle, fc, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file, report = out_dir / "metrics.json", out_dir / "report.html"
    model_metrics: dict[str, Any] = {**metrics[MODEL], "interval": list(fc.interval) if fc.interval else None}
    payload = {
        "title": title,
        "split": split,
        "model": cfg.model.name,
        "targets": fc.frame.target_names,
        "windows": len(fc.origins),
        "horizon": fc.target.shape[1],
        "origins": [iso_time(fc.frame.time[o]) for o in fc.origins],
        "train_steps": fc.bounds["train"][1],
        "season": d.season,
        "quantiles": list(fc.levels),
        "metrics": {**metrics, MODEL: model_metrics},
        "per_step": per_step,
        "baselines": fc.baselines,
        "notes": list(fc.notes),
        "extra": extra,
    }
    atomic_write_text(metrics_file, json.dumps(_json_ready(payload), indent=2, allow_nan=False) + "\n")
    page = render_report(
        fc, metrics, per_step, model_name=cfg.model.name, split=split, title=title, extra=extra
    )
    atomic_write_text(report, page)
    first, stop = fc.bounds[split]
    span = (iso_time(fc.frame.time[first]), iso_time(fc.frame.time[stop - 1]))
    return ForecastEvalResult(
        metrics,
        per_step,
        fc.baselines,
        report,
        metrics_file,
        split,
        len(fc.origins),
        span,
        fc.interval,
        fc.notes,
        fc,
    )


def forecast_split(bundle: Bundle, *, split: str, device: torch.device) -> SplitForecasts:
    """Forecast every window of ``split`` with the network and the baselines (fitted on train only).

    Raises:
        DataError: as :func:`evaluate_forecast`.
    """
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'. Expected one of {', '.join(SPLITS)}.")
    cfg, task = bundle.config, bundle.task
    d, t = _parts(bundle)
    # Resolved already: the scaler and MASE's scale come from the bundle's config, not refit.
    _, data = task.prepare(without_pretrained(cfg), splits={split}, state=bundle.state)
    origins = np.asarray(data.splits[split], dtype=np.int64)
    if len(origins) == 0:
        raise DataError(
            f"The {split} split of '{d.path}' has no forecast windows, so there is nothing to evaluate. "
            f"Use --split val, or give the data a {split} split (data.split.{split} > 0)."
        )
    quantiles = network_quantiles(bundle, task.loader(cfg, data, split, train=False), device)
    series = data.frame.targets  # (N, C), original units
    target = series[origins[:, None] + np.arange(d.horizon)]  # (W, H, C)
    # An internal invariant, not an input check: the forecasting task's own loader (evaluation: no
    # shuffle, no drop_last) yields exactly these origins' windows, in order.
    assert quantiles.shape[1:] == target.shape, "the loader yields one window per origin, in order"
    forecasts, described, notes = run_baselines(
        series, origins, horizon=d.horizon, season=d.season or 1, train_end=data.bounds["train"][1]
    )
    return SplitForecasts(
        frame=data.frame,
        bounds=data.bounds,
        lookback=d.lookback,
        origins=origins,
        target=target,
        points={MODEL: quantiles[t.quantiles.index(0.5)], **forecasts},
        quantiles=quantiles,
        levels=tuple(t.quantiles),
        baselines=described,
        notes=tuple(notes),
    )


@torch.inference_mode()
def network_quantiles(bundle: Bundle, loader: DataLoader, device: torch.device) -> np.ndarray:
    """The network's quantile forecasts ``(Q, W, H, C)`` in the data's units, windows in loader order."""
    d, _ = _parts(bundle)
    stats = _resolved(bundle, d.scaler_stats, "scaler_stats")
    model = bundle.model.to(device).eval()
    parts = []
    for batch in loader:
        x, _ = bundle.task.to_device(batch, device, channels_last=False)
        out = model(x).double().cpu().movedim(-1, 0)  # (Q, B, H, C), scaled; unscale works on the last axis
        parts.append(unscale(out, stats).numpy())
    return np.concatenate(parts, axis=1)


def run_baselines(
    series: np.ndarray, origins: np.ndarray, *, horizon: int, season: int, train_end: int
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], list[str]]:
    """Naive, seasonal naive, ETS and ARIMA from ``origins``, fitted on ``series[:train_end]`` only.

    ETS or ARIMA is skipped, with a note, when statsmodels is missing or no candidate can be fitted.

    Returns:
        ``(forecasts, models, notes)``: per method a ``(W, H, C)`` array, per method one model name per
        column (:meth:`FittedBaselines.describe`), and what was skipped.

    Raises:
        DataError: seasonal naive has no value one season before an origin.
    """
    forecasts: dict[str, np.ndarray] = {}
    described: dict[str, list[str]] = {}
    notes = []
    for methods in (("naive", "seasonal_naive"), *((m,) for m in CLASSICAL)):
        try:
            fitted = fit_baselines(series, train_end=train_end, season=season, methods=methods)
            forecasts |= fitted.forecast(series, origins, horizon=horizon)
        except ImportError as exc:  # statsmodels (the 'forecast' extra) is missing: keep the naive two
            notes.append(f"{methods[0].upper()} was skipped: {exc}")
            continue
        except DataError as exc:
            if methods[0] not in CLASSICAL:
                raise
            notes.append(f"{methods[0].upper()} was skipped: {exc}")
            continue
        described |= fitted.describe()
    return forecasts, described, notes


def score(
    fc: SplitForecasts, *, mase_scale: np.ndarray
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """Overall and per-step metrics of every model in ``fc``, plus relative MAE and the network's coverage."""
    overall, per_step = {}, {}
    for name, pred in fc.points.items():
        overall[name] = summarize_errors(pred, fc.target, mase_scale=mase_scale)
        steps = forecast_errors(pred, fc.target, mase_scale=mase_scale)
        per_step[name] = {metric: values.tolist() for metric, values in steps.items()}
    reference, reference_steps = overall[REFERENCE]["mae"], np.asarray(per_step[REFERENCE]["mae"])
    for name in overall:
        overall[name]["relative_mae"] = float(_ratio(np.asarray(overall[name]["mae"]), np.asarray(reference)))
        per_step[name]["relative_mae"] = _ratio(np.asarray(per_step[name]["mae"]), reference_steps).tolist()
    if fc.interval is not None:
        inside = (fc.target >= fc.quantiles[0]) & (fc.target <= fc.quantiles[-1])  # (W, H, C)
        overall[MODEL]["coverage"] = float(inside.mean())
        per_step[MODEL]["coverage"] = inside.mean(axis=(0, 2)).tolist()
    return overall, per_step


# --- helpers ----------------------------------------------------------------------------------------


def _parts(bundle: Bundle) -> tuple[TimeSeriesDataConfig, ForecastingTaskConfig]:
    d, t = bundle.config.data, bundle.config.task
    if not isinstance(d, TimeSeriesDataConfig) or not isinstance(t, ForecastingTaskConfig):
        raise DataError(
            f"evaluate_forecast got a '{t.kind}' bundle. Expected a forecasting bundle. "
            "Fix: use torchkiln.api.evaluate, which picks the right evaluation for each task."
        )
    return d, t


def _resolved(bundle: Bundle, value: T | None, field: str) -> T:
    """``data.<field>`` of a bundle's config, which training resolved; unset is a BundleError."""
    if value is None:
        raise BundleError(
            f"Bundle '{bundle.path}' has no data.{field} in its config.yaml; expected the resolved config "
            f"that training writes (it fills data.{field} in from the train split). Fix: restore "
            f"config.yaml from the run, or retrain to rewrite the bundle."
        )
    return value


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def _summary(bundle: Bundle, fc: SplitForecasts, split: str) -> dict[str, str]:
    time, (_, train_end) = fc.frame.time, fc.bounds["train"]
    windows, horizon = fc.target.shape[:2]
    return {
        "bundle": str(bundle.path),
        "model": bundle.config.model.name,
        "data": bundle.config.data.path,
        "split": split,
        "windows": f"{windows} of {horizon} steps, origins {iso_time(time[fc.origins[0]])} .. "
        f"{iso_time(time[fc.origins[-1]])}",
        "train part": f"{train_end} steps, {iso_time(time[0])} .. {iso_time(time[train_end - 1])}",
        "trained": str(bundle.meta.get("trained", {}).get("epochs", "?")) + " epochs",
        "intervals": _calibration(bundle.meta.get("calibration", {}).get("intervals")),
    }


def _calibration(report: dict[str, Any] | None) -> str:
    if not report:
        return (
            "as the network predicts them (not calibrated: task.conformal is off, there is no val split, "
            "or the quantiles hold no interval around the median)"
        )
    return (
        f"widened on the {report['split']} split by conformalized quantile regression: "
        f"{100 * report['coverage_before']:.1f} % -> {100 * report['coverage_after']:.1f} % of its "
        f"{report['windows']} windows' targets inside ({100 * report['nominal']:g} % nominal)"
    )


def _json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _json_ready(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
