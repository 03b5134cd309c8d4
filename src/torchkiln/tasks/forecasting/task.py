"""Forecasting: a CSV of one or more series (or a catalog series) -> quantile forecasts of the next steps.

No leakage, by construction. The splits are chronological
(:func:`~torchkiln.tasks.forecasting.windows.split_bounds`); the scaler and MASE's scale are fit on the
train rows alone and written into the resolved config, so a bundle carries them; train windows lie wholly
inside train; a val/test window's targets lie inside its split and its inputs are the history before them.

Model input ``(B, lookback + horizon, C + K)``: scaled targets and covariates of the history, then the
covariates of the steps to forecast with zeros in the target columns. Output ``(B, horizon, C, Q)``:
the quantiles of ``task.quantiles`` in scaled units. The loss is the pinball (quantile) loss; metrics are
those of the median forecast, in the data's own units.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torchkiln.components.batches import EpochBatchSampler
from torchkiln.components.doctor_data import DoctorData
from torchkiln.components.metric import Metric
from torchkiln.components.penultimate import forward_with_features, last_linear
from torchkiln.components.splits import SPLITS
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, PredictError
from torchkiln.core.io import absolute_if_exists
from torchkiln.engine.supervised import Supervised
from torchkiln.tasks.base import (
    ParamGroup,
    PredictArgs,
    PrimaryMetric,
    RawItems,
    RequestLimits,
    checked_request,
    validate,
)
from torchkiln.tasks.forecasting.config import (
    ForecastRunConfig,
    num_covariates,
    num_targets,
    parts,
    scaling,
)
from torchkiln.tasks.forecasting.conformal import conformal_offsets, interval_pairs
from torchkiln.tasks.forecasting.data import (
    SeriesFrame,
    calendar_features,
    future_times,
    iso_time,
    read_series,
)
from torchkiln.tasks.forecasting.history import ForecastAnswer, ForecastRequest, History, read_history
from torchkiln.tasks.forecasting.metrics import METRICS, seasonal_naive_scale
from torchkiln.tasks.forecasting.models import Forecaster, create_forecast_model
from torchkiln.tasks.forecasting.windows import fit_scaler, scale, split_bounds, unscale, window_origins

MAX_HISTORY = 100_000  # points per request


@dataclass(frozen=True)
class SeriesData:
    """The whole series, scaled, and the window origins of each split (``len`` = number of windows)."""

    frame: SeriesFrame
    values: torch.Tensor  # (N, C + K) float32: scaled targets, then covariates
    bounds: dict[str, tuple[int, int]]
    splits: dict[str, np.ndarray]  # split -> window origins
    source: str
    problems: tuple[tuple[str, str], ...] = ()  # a series is never thinned: bad rows are errors


class Windows(Dataset):
    """``(epoch, b, indices) -> (x (B, L + H, C + K), y (B, H, C))``, both scaled."""

    def __init__(self, data: SeriesData, split: str, *, lookback: int, horizon: int, targets: int) -> None:
        self.values, self.origins = data.values, torch.from_numpy(data.splits[split])
        self.lookback, self.horizon, self.c = lookback, horizon, targets
        self.offsets = torch.arange(-lookback, horizon)  # rows of a window relative to its origin

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, idx = key
        rows = self.origins[idx].unsqueeze(1) + self.offsets  # (B, L + H)
        x = self.values[rows].clone()  # (B, L + H, C + K)
        y = x[:, self.lookback :, : self.c].clone()
        x[:, self.lookback :, : self.c] = 0.0  # the future's targets are what is asked
        return x, y


class PinballLoss(nn.Module):
    """Mean quantile (pinball) loss over steps, targets and quantiles: ``max(q e, (q - 1) e)``."""

    def __init__(self, quantiles: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("q", torch.tensor(list(quantiles), dtype=torch.float32))

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        err = targets.unsqueeze(-1) - outputs.float()  # (B, H, C, Q)
        return torch.maximum(self.q * err, (self.q - 1) * err).mean()


class ForecastMetrics(Metric):
    """MAE, RMSE, MAPE, sMAPE and MASE of the median forecast in the data's units, and the share of
    targets inside the outermost quantile interval (``coverage``).

    Running sums in float64 on the device, so a training step costs no host sync and an epoch no
    re-concatenation; the definitions are those of :mod:`torchkiln.tasks.forecasting.metrics`.
    """

    SUMS = ("abs_err", "sq_err", "ape", "nonzero", "sape", "scaled_err", "inside", "count")

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        d, t = parts(cfg)
        if d.scaler_stats is None or d.mase_scale is None:
            raise ConfigError(
                "ForecastMetrics needs a resolved config (data.scaler_stats and data.mase_scale are "
                "filled in from the training split). Pass the config that task.prepare returned."
            )
        self.stats, self.median = d.scaler_stats, t.quantiles.index(0.5)
        self.register_buffer("mase_scale", torch.tensor(d.mase_scale, dtype=torch.float64), persistent=False)
        for name in self.SUMS:
            self.add_state(name, torch.zeros((), dtype=torch.float64))

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        out = unscale(outputs.detach().double().movedim(-1, 0), self.stats)  # (Q, B, H, C)
        y = unscale(targets.detach().double(), self.stats)  # (B, H, C)
        pred = out[self.median]
        err = (pred - y).abs()
        nonzero = y != 0
        denom = y.abs() + pred.abs()
        self.abs_err += err.sum()
        self.sq_err += (err * err).sum()
        self.ape += torch.where(nonzero, err / torch.where(nonzero, y.abs(), 1.0), 0.0).sum()
        self.nonzero += nonzero.sum()
        self.sape += torch.where(denom > 0, 2 * err / torch.where(denom > 0, denom, 1.0), 0.0).sum()
        self.scaled_err += (err / self.mase_scale).sum()
        self.inside += ((y >= out[0]) & (y <= out[-1])).sum()
        self.count += y.numel()

    def compute(self) -> dict[str, float]:
        s = {name: float(getattr(self, name)) for name in self.SUMS}
        n = s["count"]
        if not n:
            return {**dict.fromkeys(METRICS, float("nan")), "coverage": float("nan")}
        return {
            "mae": s["abs_err"] / n,
            "rmse": math.sqrt(s["sq_err"] / n),
            "mape": 100 * s["ape"] / s["nonzero"] if s["nonzero"] else float("nan"),
            "smape": 100 * s["sape"] / n,
            "mase": s["scaled_err"] / n,
            "coverage": s["inside"] / n,
        }


class ForecastingTask:
    kind = "forecasting"
    config_type = ForecastRunConfig
    summary = "Multi-step forecasts with intervals from a time-series CSV"
    primary_metric = PrimaryMetric("mase", higher_is_better=False, scale=1.0, unit="MASE")
    image_input = False
    cli_options = frozenset({"history", "horizon"})
    request_only_fields = frozenset({"points"})  # the model reads the last lookback points only
    input_dynamic_axes = (0,)

    # Data ------------------------------------------------------------------------------------------
    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, SeriesData]:
        d, _ = parts(cfg)
        frame = read_series(d)
        bounds = split_bounds(len(frame.time), d.split, lookback=d.lookback, horizon=d.horizon)
        train = frame.targets[bounds["train"][0] : bounds["train"][1]]  # the train rows, and only them
        stats = (
            d.scaler_stats
            if d.scaler_stats is not None
            else fit_scaler(train, d.scaler, names=frame.target_names)
        )
        mase = (
            d.mase_scale if d.mase_scale is not None else seasonal_naive_scale(train, frame.season).tolist()
        )
        values = np.concatenate([scale(frame.targets, stats), frame.covariates], axis=1).astype(np.float32)
        origins = {
            s: window_origins(bounds, s, lookback=d.lookback, horizon=d.horizon)
            if splits is None or s in splits or s == "train"
            else np.zeros(0, dtype=np.int64)
            for s in SPLITS
        }
        resolved = cfg.model_copy(
            update={
                "data": d.model_copy(
                    update={
                        "path": absolute_if_exists(d.path),
                        # As the file spells them: an inferred or case-matched column is written down.
                        "time_column": frame.time_column,
                        "targets": frame.target_names,
                        "covariates": frame.covariate_names[: len(d.covariates)],
                        "freq": frame.freq,
                        "season": frame.season,
                        "scaler_stats": stats,
                        "mase_scale": [float(v) for v in mase],
                        "start": iso_time(frame.time[0]),
                        "end": iso_time(frame.time[-1]),
                    }
                )
            }
        )
        data = SeriesData(frame, torch.from_numpy(values), bounds, origins, d.path)
        return validate(resolved.model_dump(mode="json")), data

    def state_files(self, data: SeriesData) -> dict[str, bytes]:
        return {}  # the scaler and MASE's scale live in the resolved config

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> None:
        return None

    # Model -----------------------------------------------------------------------------------------
    def train_module(self, cfg: RunConfig) -> Supervised:
        return Supervised(self, cfg)

    def build_model(self, cfg: RunConfig) -> Forecaster:
        d, t = parts(cfg)
        return create_forecast_model(
            cfg.model.name,
            lookback=d.lookback,
            horizon=d.horizon,
            num_targets=num_targets(d, "build_model"),
            num_covariates=num_covariates(d),
            num_quantiles=len(t.quantiles),
            season=d.season or 1,
            args=cfg.model.args,
        )

    def loader(self, cfg: RunConfig, data: SeriesData, split: str, *, train: bool) -> DataLoader:
        d, _ = parts(cfg)
        windows = Windows(
            data, split, lookback=d.lookback, horizon=d.horizon, targets=num_targets(d, "loader")
        )
        batch_size = cfg.train.batch_size if train else cfg.evaluate.batch_size
        sampler = EpochBatchSampler(
            len(windows),
            batch_size,
            shuffle=train,
            seed=cfg.seed,
            drop_last=train and len(windows) > batch_size,
        )
        return DataLoader(
            windows, batch_size=None, sampler=sampler, num_workers=0, generator=torch.Generator()
        )

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return PinballLoss(parts(cfg)[1].quantiles)

    def metrics(self, cfg: RunConfig) -> ForecastMetrics:
        return ForecastMetrics(cfg)

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        return [ParamGroup("model", [p for p in model.parameters() if p.requires_grad], 1.0)]

    # Prediction ------------------------------------------------------------------------------------
    def preprocess(self, cfg: RunConfig, inputs: Sequence[Any], state: Any = None) -> torch.Tensor:
        if not inputs:
            raise PredictError("No histories were given. Pass at least one history.")
        rows = []
        for i, h in enumerate(inputs):
            try:
                rows.append(self._window(cfg, h))
            except PredictError as exc:
                raise PredictError(f"inputs[{i}]: {exc}" if len(inputs) > 1 else str(exc)) from None
        return torch.stack(rows)

    def _window(self, cfg: RunConfig, h: Any) -> torch.Tensor:
        d, _ = parts(cfg)
        if not isinstance(h, History):
            raise PredictError(f"Got a {type(h).__name__}, not a History. Decode the request first.")
        targets, freq, stats = scaling(d, "preprocess")
        lb, hz = d.lookback, d.horizon
        if h.values.ndim != 2 or h.values.shape[1] != len(targets):
            got = h.values.shape[1] if h.values.ndim == 2 else "not a table of"
            raise PredictError(
                f"The history has {got} value(s) per step, but the model forecasts {len(targets)} "
                f"target(s) {targets}. Send one value per target at each step"
                + (" (a plain list of numbers for one target)." if len(targets) == 1 else ".")
            )
        if len(h.values) < lb:
            raise PredictError(
                f"The history has {len(h.values)} points, but the model needs at least lookback = {lb}. "
                f"Send the last {lb} (or more) values of the series."
            )
        past = scale(h.values[-lb:].astype(np.float64), stats)
        times = np.concatenate([h.time[-lb:], future_times(h.time[-1], freq, hz)])
        known = [calendar_features(times, d.calendar)]
        if d.covariates:
            cov = h.covariates
            if cov is None or len(cov) < hz + lb:
                raise PredictError(
                    f"The model needs the covariates {d.covariates} for the last {lb} history steps "
                    f"and the {hz} steps to forecast ({lb + hz} rows); got {0 if cov is None else len(cov)}."
                )
            known.insert(0, cov[-(lb + hz) :])
        cov_all = np.concatenate(known, axis=1)  # (L + H, K)
        targets = np.concatenate([past, np.zeros((hz, past.shape[1]))], axis=0)
        return torch.from_numpy(np.concatenate([targets, cov_all], axis=1).astype(np.float32))

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts))

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        d, t = parts(cfg)
        targets, freq, stats = scaling(d, "postprocess")
        out = unscale(outputs.detach().float().cpu().movedim(-1, 0), stats).movedim(0, -1)
        median = t.quantiles.index(0.5)
        answers = []
        for i, row in enumerate(out.numpy()):  # (H, C, Q)
            history = raw[i] if raw is not None and i < len(raw) else None
            times = (
                [iso_time(v) for v in future_times(history.time[-1], freq, d.horizon)]
                if isinstance(history, History)
                else None
            )
            answers.append(
                {
                    "timestamps": times,
                    "steps": list(range(1, d.horizon + 1)),
                    "forecast": {name: row[:, c, median].tolist() for c, name in enumerate(targets)},
                    "quantiles": {
                        str(q): {name: row[:, c, k].tolist() for c, name in enumerate(targets)}
                        for k, q in enumerate(t.quantiles)
                    },
                }
            )
        return answers

    @torch.no_grad()
    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        """Conformalize the quantile intervals on the val windows (see ``conformal.py`` beside this).

        Scores are measured in units of each window's own spread (what the network's outputs are before
        the window's scale is put back), so one offset serves a series whose level grows.
        """
        _, t = parts(cfg)
        if not t.conformal or loader is None or not interval_pairs(t.quantiles):
            return {}  # off, no val windows, or no interval (e.g. quantiles [0.5, 0.7, 0.9])
        # build_model made it, and create_forecast_model refuses builders that return no Forecaster.
        model = cast(Forecaster, model)
        model.interval_offset.zero_()
        model.eval()
        quantiles, targets = [], []
        for batch in loader:
            x, y = self.to_device(batch, device, channels_last=False)
            spread = model.window_spread(x)  # (B, 1, C)
            quantiles.append((model(x).float() / spread.unsqueeze(-1)).cpu().numpy())
            targets.append((y.float() / spread).cpu().numpy())
        offsets, report = conformal_offsets(np.concatenate(quantiles), np.concatenate(targets), t.quantiles)
        model.interval_offset.copy_(torch.from_numpy(offsets))
        return {"intervals": {"split": "val", **report.as_dict()}}

    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Any:
        """The network beside naive, seasonal naive, ETS and ARIMA on the same windows of ``split``."""
        from torchkiln.tasks.forecasting.evaluate import evaluate_forecast

        return evaluate_forecast(bundle, split=split, out_dir=out_dir, device=device)

    def example_config(self, root: Path) -> dict[str, Any]:
        from torchkiln.tasks.forecasting.example import example_config

        return example_config(root)

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        """``kiln predict BUNDLE --history series.csv [--horizon H]``: dated quantile forecasts."""
        from torchkiln.tasks.forecasting.cli import forecast_lines

        cfg = predictor.bundle.config
        if args.history is None:
            raise PredictError("A forecaster needs the series so far: pass --history series.csv.")
        if args.horizon is not None and args.horizon > cfg.data.horizon:
            raise PredictError(
                f"--horizon {args.horizon} is longer than the {cfg.data.horizon} steps this model "
                f"forecasts. Pass --horizon {cfg.data.horizon} or less, or retrain with data.horizon: "
                f"{args.horizon}."
            )
        [res] = predictor.predict([read_history(cfg, args.history)])
        n = args.horizon or cfg.data.horizon
        res = {
            "timestamps": res["timestamps"][:n],
            "steps": res["steps"][:n],
            "forecast": {k: v[:n] for k, v in res["forecast"].items()},
            "quantiles": {q: {k: v[:n] for k, v in by.items()} for q, by in res["quantiles"].items()},
        }
        return forecast_lines(res, f"forecast from {args.history.name}", as_json=as_json)

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        d, t = parts(cfg)
        return {
            "labels": None,
            "preprocessing": {
                "input": "(B, lookback + horizon, targets + covariates): scaled history, known covariates",
                "targets": d.targets,
                "covariates": [*d.covariates, *(f"calendar:{c}" for c in d.calendar)],
                "lookback": d.lookback,
                "horizon": d.horizon,
                "freq": d.freq,
                "season": d.season,
                "scaler": d.scaler_stats.model_dump() if d.scaler_stats else None,
                "quantiles": t.quantiles,
            },
        }

    # Serving ---------------------------------------------------------------------------------------
    request_schema = ForecastRequest
    response_schema = ForecastAnswer
    upload_media = None

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[History]:
        request = checked_request(request, ForecastRequest)
        values = np.asarray(request.history, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        if len(values) == 0:
            raise PredictError("history is empty. Send the last values of the series, oldest first.")
        if len(values) > MAX_HISTORY:
            raise PredictError(f"history has {len(values):,} points, over the limit of {MAX_HISTORY:,}.")
        if len(request.timestamps) != len(values):
            raise PredictError(
                f"history has {len(values)} values but timestamps has {len(request.timestamps)}. "
                f"Send one timestamp per value."
            )
        if not np.isfinite(values).all():
            raise PredictError(
                "history holds a NaN or infinite value. Send finite numbers (fill gaps first)."
            )
        try:
            time = np.array(request.timestamps, dtype="datetime64[ns]")
        except ValueError as exc:
            raise PredictError(
                f"timestamps are not ISO 8601 times ({exc}). Send e.g. '1960-12-01'."
            ) from None
        cov = None if request.covariates is None else np.asarray(request.covariates, dtype=np.float64)
        return [History(values, time, cov)]

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[History]:
        raise PredictError(
            'Forecasters take JSON: {"history": [...], "timestamps": [...]}. Uploads are for images.'
        )

    # Reference profile: a forecaster has no classes; its outputs are described by their level and spread.
    def reference_inputs(self, cfg: RunConfig, data: SeriesData, split: str) -> Sequence[Any]:
        """One :class:`History` per window of ``split``: the ``lookback`` values before its origin (in the
        data's units), their times, and the file covariates a request sends (history and horizon rows)."""
        d, _ = parts(cfg)
        f, lb, hz, k = data.frame, d.lookback, d.horizon, len(d.covariates)
        origins = data.splits[split]

        def fetch(i: int) -> History:
            o = int(origins[i])
            cov = f.covariates[o - lb : o + hz, :k] if k else None
            return History(f.targets[o - lb : o], f.time[o - lb : o], cov)

        return RawItems(len(origins), fetch)

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The input of the network's last Linear: the encoder state (lstm), each decoder step's state
        # flattened (seq2seq, (B, H * hidden)), or the last block's features (mlp).
        core = model.core if isinstance(model, Forecaster) else model
        return forward_with_features(model, x, last_linear(core, "the forecaster's network"))

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forecast_level``: the median forecast's mean over steps and targets; ``forecast_spread``: the
        mean width of the outermost quantile interval. Both in the model's scaled units (the train split's
        scaler), so series of any size compare, and a live forecast is measured the same way."""
        median = parts(cfg)[1].quantiles.index(0.5)
        out = outputs.detach().float()  # (B, H, C, Q), quantiles sorted
        return {
            "forecast_level": out[..., median].mean(dim=(1, 2)),
            "forecast_spread": (out[..., -1] - out[..., 0]).mean(dim=(1, 2)),
        }

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        d, _ = parts(cfg)
        out = []
        for h in raw:
            last = h.values[-d.lookback :]
            out.append(
                {
                    "points": len(h.values),
                    "last_time": iso_time(h.time[-1]),
                    "mean": float(last.mean()),
                    "std": float(last.std()),
                    "last": last[-1].tolist(),
                    "sha256": hashlib.sha256(np.ascontiguousarray(h.values).tobytes()).hexdigest(),
                }
            )
        return out

    def example_request(self) -> dict[str, Any]:
        # AirPassengers, 1949-1951 (36 months: enough for a lookback of up to 36).
        history = [112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118, 115, 126, 141, 135, 125, 149]
        history += [170, 170, 158, 133, 114, 140, 145, 150, 178, 163, 172, 178, 199, 199, 184, 162, 146, 166]
        times = [f"{1949 + i // 12}-{i % 12 + 1:02d}-01" for i in range(len(history))]
        return {"history": [float(v) for v in history], "timestamps": times}

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: SeriesData | None) -> DoctorData:
        """The data as kiln doctor's checks read it (``components.doctor_data.DoctorSource``)."""
        from torchkiln.tasks.forecasting.doctor import doctor_data

        return doctor_data(cfg, resolved, data)


TASK = ForecastingTask()  # the ``torchkiln.tasks`` entry point
