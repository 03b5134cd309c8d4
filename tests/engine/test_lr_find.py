"""The learning-rate range test: the rate it drives, the suggestions, early stopping, and the run it must
leave exactly as it found it."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import torchkiln
from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError
from torchkiln.engine.checkpoint import rng_state, set_rng_state
from torchkiln.engine.lr_find import check_range, lr_find, suggest
from torchkiln.engine.optim import ParamGroup, optim_spec
from torchkiln.engine.step import OptimSpec, StepContext
from torchkiln.engine.supervised import Supervised
from torchkiln.engine.trainer import Loaders, Loop, setup

from .toy import rows_loader


# --- toy data and parts -------------------------------------------------------------------------------
def loaders(n: int = 24, batch_size: int = 4) -> Loaders:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return Loaders(rows_loader(x, y, batch_size, shuffle=True), None)


class Count(Metric):
    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", torch.zeros((), dtype=torch.long))

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.count += targets.numel()

    def compute(self) -> dict[str, float]:
        return {"count": float(self.count)}


class Net:
    """Supervised's parts: dropout draws from the global RNG, batch norm has buffers, and the first
    layer trains at a tenth of the rate (a backbone multiplier)."""

    image_input = False

    def build_model(self, cfg: RunConfig) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Dropout(0.2), nn.Linear(8, 1))

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        return batch[0].to(device), batch[1].to(device)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return nn.MSELoss()

    def metrics(self, cfg: RunConfig) -> Metric:
        return Count()

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        return [
            ParamGroup("first", list(model[0].parameters()), 0.1),
            ParamGroup("rest", list(model[1:].parameters())),
        ]


class Recording(Supervised):
    """Records every param group's rate at each step, as the optimizer sees it."""

    def __init__(self, parts: Any, cfg: RunConfig) -> None:
        super().__init__(parts, cfg)
        self.seen: list[list[float]] = []

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        self.seen.append([g["lr"] for o in ctx.optimizers.values() for g in o.optimizer.param_groups])
        return super().training_step(ctx, modules, batch)


class TwoOptimizers(Recording):
    """Two models, an optimizer each; the second trains at half the rate (a GAN's d_lr_mult)."""

    serves = "a"

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        torch.manual_seed(0)
        return nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})

    def configure_optimizers(
        self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int
    ) -> list[OptimSpec]:
        return [
            optim_spec(
                n, [ParamGroup(n, list(modules[n].parameters()), m)], cfg, steps_per_epoch=steps_per_epoch
            )
            for n, m in (("a", 1.0), ("b", 0.5))
        ]

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        self.seen.append([g["lr"] for o in ctx.optimizers.values() for g in o.optimizer.param_groups])
        x, y = batch
        losses = {}
        for name in ("a", "b"):
            losses[name] = nn.functional.mse_loss(modules[name](x), y)
            ctx.backward(losses[name], optimizer=name)
            ctx.step(name)
        return {"loss": (losses["a"] + losses["b"]).detach()}


def run_config(base: dict[str, Any], **train: Any) -> RunConfig:
    settings = {
        "epochs": 2,
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
        "scheduler": {"name": "onecycle"},  # 12 steps in all: stepping it 30 times would raise
        "monitor": "train/loss",
        "monitor_mode": "min",
        "precision": "fp32",
    }
    return torchkiln.load_config(base | {"train": settings | train})


def train_steps(loop: Loop, n: int) -> None:
    """``n`` optimizer steps as the engine takes them (the schedule steps too)."""
    loop.modules.train()
    loop.ctx.metrics = loop.train.metrics(loop.cfg)
    sampler = loop.loaders.train.sampler
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for i, batch in enumerate(loop.loaders.train):
            if epoch * len(sampler) + i == n:
                return
            loop.ctx.begin_batch(group_size=1, last_in_group=True)
            loop.train.training_step(loop.ctx, loop.forward, batch)
            loop.ctx.end_batch()


def state_of(loop: Loop) -> dict[str, Any]:
    """A copy: state dicts hold the very tensors that training updates in place."""
    return copy.deepcopy(
        {
            "modules": loop.modules.state_dict(),
            "optimizers": [o.optimizer.state_dict() for o in loop.optimizers],
            "schedulers": [o.scheduler.state_dict() for o in loop.optimizers],
            "scaler": loop.ctx.scaler.state_dict(),
            "rng": rng_state(),
            "training": [m.training for m in loop.modules.modules()],
        }
    )


def flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --- the rate ----------------------------------------------------------------------------------------------
def test_the_rate_grows_exponentially_between_the_bounds_in_every_group_keeping_its_multiplier(
    tiny_config: dict[str, Any],
) -> None:
    cfg = run_config(tiny_config)
    train = Recording(Net(), cfg)
    result = lr_find(setup(cfg, train, loaders()), steps=30, start_lr=1e-5, end_lr=1e-1, diverge=1e9)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) == 30 and not result.stopped
    assert result.lrs[0] == pytest.approx(1e-5) and result.lrs[-1] == pytest.approx(1e-1)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([10 ** (4 / 29)] * 29)
    # The optimizer trained at those rates (the schedule did not move them), with the first group's 0.1x
    # on both of its torch groups (decay and no decay).
    assert flat(train.seen) == pytest.approx(flat([[lr * 0.1, lr * 0.1, lr, lr] for lr in result.lrs]))


def test_several_optimizers_are_scaled_together_keeping_their_ratio(tiny_config: dict[str, Any]) -> None:
    cfg = run_config(tiny_config)
    train = TwoOptimizers(Net(), cfg)
    result = lr_find(setup(cfg, train, loaders()), steps=12, start_lr=1e-4, end_lr=1e-2, diverge=1e9)
    assert flat(train.seen) == pytest.approx(flat([[lr, lr, lr / 2, lr / 2] for lr in result.lrs]))


def test_the_loss_is_smoothed_with_a_bias_corrected_moving_average(tiny_config: dict[str, Any]) -> None:
    cfg = run_config(tiny_config)
    result = lr_find(setup(cfg, Supervised(Net(), cfg), loaders()), steps=10, start_lr=1e-5, end_lr=1e-3)
    avg, expected = 0.0, []
    for i, loss in enumerate(result.losses):
        avg = 0.98 * avg + 0.02 * loss
        expected.append(avg / (1 - 0.98 ** (i + 1)))
    assert result.smoothed == pytest.approx(expected) and result.smoothed[0] == pytest.approx(
        result.losses[0]
    )


# --- restoring ---------------------------------------------------------------------------------------------
def test_the_run_is_restored_exactly_and_trains_bitwise_as_without_the_test(
    tiny_config: dict[str, Any],
) -> None:
    cfg = run_config(tiny_config)
    tested, untouched = (
        setup(cfg, Supervised(Net(), cfg), loaders()),
        setup(cfg, Supervised(Net(), cfg), loaders()),
    )
    for loop in (tested, untouched):  # optimizer state, a schedule part-way and a used RNG to restore
        torch.manual_seed(3)
        train_steps(loop, 2)
    torch.manual_seed(7)
    tested.modules.eval()  # as after a validation pass: the test trains, then puts eval mode back
    before = state_of(tested)
    assert before["optimizers"][0]["state"]
    lr_find(tested, steps=30, start_lr=1e-4, end_lr=10.0)
    after = state_of(tested)
    assert_same(after, before)
    assert all(p.grad is None for p in tested.modules.parameters())
    train_steps(tested, 8)  # from the restored RNG state ...
    set_rng_state(before["rng"])  # ... and from the same state, without the test
    train_steps(untouched, 8)
    assert_same(tested.modules.state_dict(), untouched.modules.state_dict())


# --- stopping and suggestions -------------------------------------------------------------------------------
def test_a_diverging_loss_stops_the_test_early(tiny_config: dict[str, Any]) -> None:
    cfg = run_config(tiny_config, optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9})
    result = lr_find(setup(cfg, Supervised(Net(), cfg), loaders()), steps=100, start_lr=1e-4, end_lr=1e3)
    assert len(result.lrs) < 100 and "passed 4x its best" in result.stopped
    assert result.smoothed[-1] > 4 * min(result.smoothed[:-1])
    assert all(math.isfinite(v) for v in result.losses)


def test_a_non_finite_loss_stops_the_test_and_is_not_recorded(tiny_config: dict[str, Any]) -> None:
    cfg = run_config(tiny_config)

    class NanAtFive(Supervised):
        calls = 0

        def training_step(
            self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
        ) -> dict[str, torch.Tensor]:
            NanAtFive.calls += 1
            out = super().training_step(ctx, modules, batch)
            return {"loss": out["loss"] * (math.nan if NanAtFive.calls == 5 else 1)}

    result = lr_find(setup(cfg, NanAtFive(Net(), cfg), loaders()), steps=20, start_lr=1e-5, end_lr=1e-2)
    assert len(result.losses) == 4 and result.stopped.startswith("the loss was nan at step 5")


def test_the_suggestions_on_a_known_curve() -> None:
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    # Falls fastest between points 60 and 61, lowest at point 80, then blows up.
    smoothed = [-math.tanh((i - 60.5) / 8) + (max(i - 80, 0) / 5) ** 2 for i in range(100)]
    steep, min_tenth = suggest(lrs, smoothed, planned=100)
    assert steep == lrs[60] and min_tenth == pytest.approx(lrs[80] / 10)
    # The first tenth and the last five points are not looked at: a drop there is not the answer.
    cliff = [v - (5.0 if i in (3, 97) else 0.0) for i, v in enumerate(smoothed)]
    assert suggest(lrs, cliff, planned=100)[0] == lrs[60]
    assert suggest(lrs[:1], smoothed[:1], planned=100) == (None, None)


def test_bad_settings_are_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError) as info:
        check_range(steps=1, start_lr=1.0, end_lr=0.1, diverge=1.0)
    message = str(info.value)
    assert "steps must be at least 2" in message and "Got 1 instead" in message
    assert "0 < start_lr < end_lr. Got start_lr=1, end_lr=0.1 instead" in message
    assert "diverge must be > 1" in message
