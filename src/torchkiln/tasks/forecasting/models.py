"""Forecasting models: a window of history (and known covariates) -> quantiles of the next steps.

Every forecaster takes one tensor and returns one, so training, export and serving treat them like
any other model:

- input ``x``: ``(B, lookback + horizon, C + K)``. Rows ``0 .. lookback-1`` hold the scaled history of
  the ``C`` targets and the ``K`` covariates; rows ``lookback ..`` hold the covariates of the steps to
  forecast (known in advance: calendar fields, holidays) and zeros in the target columns.
- output: ``(B, horizon, C, Q)``, the ``Q`` quantiles of each target at each step, in the same scaled
  units as the input.

With ``window_norm`` (the default, as RevIN, Kim et al. 2022) each window's targets are standardized by
the mean and spread of its own history before the network sees them, and the forecast is mapped back.
A series whose level moves out of the training range (AirPassengers doubles from train to test) then
looks like the windows the network was trained on.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from torchkiln.components.models import check_model, register_model
from torchkiln.core.errors import ConfigError

TASK = "forecasting"


class Forecaster(nn.Module):
    """Splits the input, normalizes each window, runs ``core``, adds the anchor, maps the quantiles back.

    ``core(past, future)`` gets ``past`` ``(B, L, C + K)`` and ``future`` ``(B, H, K)`` and returns
    ``(B, H, C, Q)``; its ``outputs`` attribute is ``(C, Q)``. With ``anchor="season"`` the core learns a
    correction to seasonal naive (the last season of the window repeated); with ``"last"`` to the last
    value; with ``"none"`` the forecast itself. On short series an anchored network starts from a
    forecast that is already sound. The outputs are sorted along the quantile axis, so quantiles never
    cross.
    """

    def __init__(
        self,
        core: nn.Module,
        *,
        lookback: int,
        horizon: int,
        season: int,
        window_norm: bool,
        anchor: Literal["season", "last", "none"],
    ) -> None:
        super().__init__()
        if anchor not in ("season", "last", "none"):
            raise ConfigError(
                f"anchor must be 'season', 'last' or 'none'; got {anchor!r}. Set model.args.anchor."
            )
        self.core = core
        num_targets, num_quantiles = core.outputs
        self.lookback, self.horizon, self.num_targets = lookback, horizon, num_targets
        self.window_norm, self.anchor = window_norm, anchor
        # A season longer than the window cannot be repeated from it: the last value is the anchor then.
        s = season if anchor == "season" and season <= lookback else 1
        self.register_buffer("anchor_rows", lookback - s + torch.arange(horizon) % s, persistent=False)
        # Added to each quantile before the window's scale is put back: zero until the task calibrates the
        # intervals after training (conformalized quantile regression on the val split). Saved with the
        # weights, so the bundle, its ONNX export and the server all give the calibrated intervals.
        self.register_buffer("interval_offset", torch.zeros(horizon, num_targets, num_quantiles))

    def window_spread(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, C)``: what one unit of ``interval_offset`` is worth in each window's scaled units."""
        return self._norm(x[:, : self.lookback, : self.num_targets])[1]

    def _norm(self, hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.window_norm:
            return torch.zeros_like(hist[:, :1]), torch.ones_like(hist[:, :1])
        center = hist.mean(dim=1, keepdim=True)  # (B, 1, C)
        return center, hist.std(dim=1, keepdim=True, unbiased=False) + 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, lb = self.num_targets, self.lookback
        past, future = x[:, :lb], x[:, lb:, c:]
        hist = past[..., :c]
        if self.window_norm:
            center, spread = self._norm(hist)
            hist = (hist - center) / spread
            past = torch.cat([hist, past[..., c:]], dim=-1)
        out = self.core(past, future)  # (B, H, C, Q)
        if self.anchor != "none":
            out = out + hist[:, self.anchor_rows].unsqueeze(-1)
        # Sorted before the offset: the median is the middle of what the network predicted, and the
        # offsets (lower <= 0 <= upper, outer pairs at least as wide as inner ones) keep the order.
        out = out.sort(dim=-1).values + self.interval_offset
        if self.window_norm:
            out = out * spread.unsqueeze(-1) + center.unsqueeze(-1)
        return out


class RNNDirect(nn.Module):
    """An LSTM/GRU encoder over the history, then one MLP that emits every step at once (direct)."""

    def __init__(
        self,
        *,
        cell: type[nn.LSTM | nn.GRU],
        in_features: int,
        future_features: int,
        horizon: int,
        outputs: tuple[int, int],
        hidden_size: int,
        num_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.rnn = cell(
            in_features,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.horizon, self.outputs = horizon, outputs
        self.head = nn.Sequential(
            nn.Linear(hidden_size + horizon * future_features, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, horizon * outputs[0] * outputs[1]),
        )

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(past)
        features = torch.cat([states[:, -1], future.flatten(1)], dim=-1)
        return self.head(features).unflatten(1, (self.horizon, *self.outputs))


class Seq2Seq(nn.Module):
    """An LSTM encoder; an LSTM decoder started from its state steps through the horizon.

    The decoder reads each future step's covariates and a learned embedding of the step, never its
    own previous forecast, so training and forecasting see the same inputs (no exposure bias).
    """

    def __init__(
        self,
        *,
        in_features: int,
        future_features: int,
        horizon: int,
        outputs: tuple[int, int],
        hidden_size: int,
        num_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        drop = dropout if num_layers > 1 else 0.0
        self.encoder = nn.LSTM(in_features, hidden_size, num_layers, batch_first=True, dropout=drop)
        self.step = nn.Parameter(torch.randn(horizon, hidden_size) * 0.02)  # (H, hidden)
        self.inp = nn.Linear(hidden_size + future_features, hidden_size)
        self.decoder = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True, dropout=drop)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_size, outputs[0] * outputs[1]))
        self.outputs = outputs

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        _, state = self.encoder(past)
        steps = self.step.unsqueeze(0).expand(past.shape[0], -1, -1)  # (B, H, hidden)
        decoded, _ = self.decoder(torch.relu(self.inp(torch.cat([steps, future], dim=-1))), state)
        return self.out(decoded).unflatten(-1, self.outputs)  # (B, H, C, Q)


class NBeatsBlock(nn.Module):
    def __init__(self, in_size: int, extra: int, width: int, backcast: int, forecast: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_size + extra, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        # The last block's backcast would be thrown away (and never trained): it has none.
        self.backcast = nn.Linear(width, backcast) if backcast else None
        self.forecast = nn.Linear(width, forecast)

    def forward(self, residual: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([residual, extra], dim=-1))
        back = self.backcast(h) if self.backcast is not None else torch.zeros_like(residual)
        return back, self.forecast(h)


class NBeats(nn.Module):
    """Generic N-BEATS (Oreshkin et al. 2020): MLP blocks on the flattened history; each block removes
    what it explains from the history (backcast) and adds its part of the forecast. Covariates (past
    and future) go to every block."""

    def __init__(
        self,
        *,
        lookback: int,
        horizon: int,
        num_targets: int,
        num_covariates: int,
        outputs: tuple[int, int],
        width: int,
        blocks: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.c, self.horizon, self.outputs = num_targets, horizon, outputs
        size, extra = lookback * num_targets, (lookback + horizon) * num_covariates
        self.blocks = nn.ModuleList(
            NBeatsBlock(
                size, extra, width, size if i < blocks - 1 else 0, horizon * outputs[0] * outputs[1], dropout
            )
            for i in range(blocks)
        )

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        residual = past[..., : self.c].flatten(1)
        extra = torch.cat([past[..., self.c :].flatten(1), future.flatten(1)], dim=-1)
        total = residual.new_zeros(residual.shape[0], self.horizon * self.outputs[0] * self.outputs[1])
        for block in self.blocks:
            back, fore = block(residual, extra)
            residual, total = residual - back, total + fore
        return total.unflatten(1, (self.horizon, *self.outputs))


def _check(name: str, **sizes: float) -> None:
    for key, value in sizes.items():
        low_ok = value >= 0 if key == "dropout" else value >= 1
        if not low_ok or (key == "dropout" and value >= 1):
            want = "in [0, 1)" if key == "dropout" else ">= 1"
            raise ConfigError(f"Model '{name}': {key} must be {want}; got {value}. Set model.args.{key}.")


@register_model("lstm-forecaster", summary="LSTM/GRU encoder with a direct multi-step head", task=TASK)
def lstm_forecaster(
    *,
    lookback: int,
    horizon: int,
    num_targets: int,
    num_covariates: int,
    num_quantiles: int,
    season: int = 1,
    cell: Literal["lstm", "gru"] = "lstm",
    hidden_size: int = 64,
    num_layers: int = 1,
    dropout: float = 0.1,
    window_norm: bool = True,
    anchor: Literal["season", "last", "none"] = "last",
) -> Forecaster:
    """The default forecaster: an RNN reads the history; an MLP emits all ``horizon`` steps.

    Args:
        cell: ``lstm`` or ``gru``.
        hidden_size: RNN width.
        num_layers: stacked RNN layers.
        dropout: between RNN layers and in the head.
        window_norm: standardize each window by its own history (see the module docstring).
        anchor: what the network corrects: ``last`` (the last value, the default), ``season``
            (seasonal naive) or ``none`` (it forecasts the values themselves); see :class:`Forecaster`.
    """
    _check("lstm-forecaster", hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
    if cell not in ("lstm", "gru"):
        raise ConfigError(f"Model 'lstm-forecaster': cell must be 'lstm' or 'gru'; got {cell!r}.")
    core = RNNDirect(
        cell=nn.LSTM if cell == "lstm" else nn.GRU,
        in_features=num_targets + num_covariates,
        future_features=num_covariates,
        horizon=horizon,
        outputs=(num_targets, num_quantiles),
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=dropout,
    )
    return Forecaster(
        core,
        lookback=lookback,
        horizon=horizon,
        season=season,
        window_norm=window_norm,
        anchor=anchor,
    )


@register_model("seq2seq-forecaster", summary="LSTM encoder-decoder over the horizon", task=TASK)
def seq2seq_forecaster(
    *,
    lookback: int,
    horizon: int,
    num_targets: int,
    num_covariates: int,
    num_quantiles: int,
    season: int = 1,
    hidden_size: int = 64,
    num_layers: int = 1,
    dropout: float = 0.1,
    window_norm: bool = True,
    anchor: Literal["season", "last", "none"] = "last",
) -> Forecaster:
    """An LSTM sequence-to-sequence forecaster; the decoder reads the future covariates step by step."""
    _check("seq2seq-forecaster", hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
    core = Seq2Seq(
        in_features=num_targets + num_covariates,
        future_features=num_covariates,
        horizon=horizon,
        outputs=(num_targets, num_quantiles),
        hidden_size=hidden_size,
        num_layers=num_layers,
        dropout=dropout,
    )
    return Forecaster(
        core,
        lookback=lookback,
        horizon=horizon,
        season=season,
        window_norm=window_norm,
        anchor=anchor,
    )


@register_model("mlp-forecaster", summary="N-BEATS-style MLP blocks on the flattened history", task=TASK)
def mlp_forecaster(
    *,
    lookback: int,
    horizon: int,
    num_targets: int,
    num_covariates: int,
    num_quantiles: int,
    season: int = 1,
    width: int = 128,
    blocks: int = 3,
    dropout: float = 0.1,
    window_norm: bool = True,
    anchor: Literal["season", "last", "none"] = "last",
) -> Forecaster:
    """A simple MLP forecaster made of N-BEATS generic blocks (backcast and forecast per block)."""
    _check("mlp-forecaster", width=width, blocks=blocks, dropout=dropout)
    core = NBeats(
        lookback=lookback,
        horizon=horizon,
        num_targets=num_targets,
        num_covariates=num_covariates,
        outputs=(num_targets, num_quantiles),
        width=width,
        blocks=blocks,
        dropout=dropout,
    )
    return Forecaster(
        core,
        lookback=lookback,
        horizon=horizon,
        season=season,
        window_norm=window_norm,
        anchor=anchor,
    )


def create_forecast_model(
    name: str,
    *,
    lookback: int,
    horizon: int,
    num_targets: int,
    num_covariates: int,
    num_quantiles: int,
    season: int = 1,
    args: dict[str, Any] | None = None,
) -> Forecaster:
    """Build a registered forecaster.

    Raises:
        RegistryError: unknown model name or argument, or a model of another task.
        ConfigError: the registered builder returned something other than a :class:`Forecaster`.

    Example:
        >>> model = create_forecast_model("lstm-forecaster", lookback=24, horizon=12, num_targets=1,
        ...                               num_covariates=0, num_quantiles=3)
        >>> model(torch.zeros(8, 36, 1)).shape
        torch.Size([8, 12, 1, 3])
    """
    spec = check_model(name, args=args or {}, pretrained=False, task=TASK)
    model = spec.builder(
        lookback=lookback,
        horizon=horizon,
        num_targets=num_targets,
        num_covariates=num_covariates,
        num_quantiles=num_quantiles,
        season=season,
        **(args or {}),
    )
    if not isinstance(model, Forecaster):
        raise ConfigError(
            f"The builder registered as forecasting model '{name}' returned a {type(model).__name__}; "
            f"expected a Forecaster, which splits the window, normalizes it and maps the quantiles back. "
            f"Fix: have the builder wrap its network as Forecaster(core, ...), as the built-in forecasting "
            f"models do, or set model.name to one of those ('kiln list models')."
        )
    return model
