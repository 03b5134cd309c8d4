"""The forecaster wrapper: window normalization and the anchor the network corrects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkiln.components.models import MODELS, register_model
from torchkiln.core.errors import ConfigError
from torchkiln.tasks.forecasting.models import Forecaster, create_forecast_model


class Zero(nn.Module):
    """A core that predicts no correction: the forecast is the anchor itself."""

    outputs = (1, 3)

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        return past.new_zeros(past.shape[0], future.shape[1], 1, 3)


def wrapped(anchor: str, *, season: int = 4, lookback: int = 8, window_norm: bool = True) -> Forecaster:
    return Forecaster(
        Zero(),
        lookback=lookback,
        horizon=6,
        season=season,
        window_norm=window_norm,
        anchor=anchor,
    )


HISTORY = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0])  # lookback 8, season 4


@pytest.mark.parametrize("window_norm", [True, False])
def test_the_season_anchor_is_seasonal_naive(window_norm: bool) -> None:
    x = torch.cat([HISTORY, torch.zeros(6)]).reshape(1, 14, 1)
    out = wrapped("season", window_norm=window_norm)(x)  # (1, 6, 1, 3)
    expected = torch.tensor([10.0, 20.0, 30.0, 40.0, 10.0, 20.0])  # the last season, repeated
    for q in range(3):
        torch.testing.assert_close(out[0, :, 0, q], expected, atol=1e-4, rtol=1e-5)


def test_the_last_anchor_and_a_season_longer_than_the_window_repeat_the_last_value() -> None:
    x = torch.cat([HISTORY, torch.zeros(6)]).reshape(1, 14, 1)
    for model in (wrapped("last"), wrapped("season", season=12)):
        torch.testing.assert_close(model(x)[0, :, 0, 1], torch.full((6,), 40.0), atol=1e-4, rtol=1e-5)
    assert torch.allclose(wrapped("none")(x)[0, :, 0, 1], HISTORY.mean().expand(6), atol=1e-4)


def test_an_unknown_anchor_says_which_are_known() -> None:
    with pytest.raises(ConfigError, match=r"^anchor must be 'season', 'last' or 'none'; got 'trend'\."):
        wrapped("trend")


@pytest.mark.parametrize("window_norm", [True, False])
def test_the_interval_offset_moves_each_quantile_by_its_value_times_the_window_spread(
    window_norm: bool,
) -> None:
    x = torch.cat([HISTORY, torch.zeros(6)]).reshape(1, 14, 1)
    model = wrapped("last", window_norm=window_norm)
    before = model(x)
    model.interval_offset[:, 0] = torch.tensor([-1.0, 0.0, 2.0])
    spread = model.window_spread(x)  # (1, 1, 1)
    expected = HISTORY.std(unbiased=False) + 1e-3 if window_norm else torch.tensor(1.0)
    torch.testing.assert_close(spread[0, 0, 0], expected)
    moved = model(x) - before  # (1, 6, 1, 3)
    torch.testing.assert_close(moved[0, :, 0], (torch.tensor([-1.0, 0.0, 2.0]) * expected).expand(6, 3))
    assert "interval_offset" in model.state_dict()  # saved with the weights


class Crossing(nn.Module):
    """A core whose raw quantiles cross: the first output is the largest."""

    outputs = (1, 3)

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        raw = torch.tensor([2.0, 0.0, 1.0])
        return raw.expand(past.shape[0], future.shape[1], 1, 3).clone()


def test_the_offset_widens_sorted_quantiles_and_never_moves_the_median() -> None:
    model = Forecaster(
        Crossing(),
        lookback=8,
        horizon=6,
        season=4,
        window_norm=False,
        anchor="none",
    )
    x = torch.zeros(1, 14, 1)
    torch.testing.assert_close(model(x)[0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    model.interval_offset[:, 0] = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(model(x)[0, 0, 0], torch.tensor([-1.0, 1.0, 3.0]))


def test_a_registered_builder_that_returns_no_forecaster_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    models = MODELS.of("forecasting")
    monkeypatch.setattr(models, "_entries", dict(models._entries))  # the registration ends with the test

    @register_model("bare-linear", summary="returns a bare network", task="forecasting")
    def bare_linear(**sizes: int) -> nn.Module:
        return nn.Linear(4, 4)

    with pytest.raises(ConfigError) as exc:
        create_forecast_model(
            "bare-linear", lookback=8, horizon=4, num_targets=1, num_covariates=0, num_quantiles=3
        )
    assert str(exc.value) == (
        "The builder registered as forecasting model 'bare-linear' returned a Linear; expected a "
        "Forecaster, which splits the window, normalizes it and maps the quantiles back. Fix: have the "
        "builder wrap its network as Forecaster(core, ...), as the built-in forecasting models do, or set "
        "model.name to one of those ('kiln list models')."
    )
