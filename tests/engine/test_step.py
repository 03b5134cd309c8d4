"""The engine/task boundary: StepContext (accumulation, clipping, the fp16 scaler, several optimizers),
the train-figure tally across a resume, and a two-model, two-optimizer task trained and resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torchkiln
from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.engine.optim import ParamGroup, build_optimizer
from torchkiln.engine.precision import Precision
from torchkiln.engine.step import OptimSpec, StepContext, TrainModule
from torchkiln.engine.supervised import Supervised
from torchkiln.engine.trainer import Loaders, fit

from .toy import rows_loader


# --- toy data and parts -------------------------------------------------------------------------------
class MeanAbsError(Metric):
    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64))
        self.add_state("count", torch.zeros((), dtype=torch.long))

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.total += (outputs.detach() - targets).abs().sum().double()
        self.count += targets.numel()

    def compute(self) -> dict[str, float]:
        return {"mae": float(self.total) / max(int(self.count), 1)}


class Regression:
    """The parts Supervised needs, for a linear model on float rows."""

    image_input = False

    def build_model(self, cfg: RunConfig) -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(3, 1)

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        x, y = batch
        return x.to(device), y.to(device)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return nn.MSELoss()

    def metrics(self, cfg: RunConfig) -> Metric:
        return MeanAbsError()

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        return [ParamGroup("model", list(model.parameters()))]


def run_config(base: dict[str, Any], **train: Any) -> RunConfig:
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0}
    settings = {
        "epochs": 1,
        "optimizer": sgd,
        "scheduler": {"name": "none"},
        "monitor": "train/loss",
        "monitor_mode": "min",
        "checkpoint_every": 0,
        "log_every": 1,
        "precision": "fp32",  # exact comparisons; bf16 autocast is on where the CPU has it
    }
    return torchkiln.load_config(base | {"train": settings | train})


def data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)


# --- accumulation and clipping --------------------------------------------------------------------------
def test_accumulating_k_batches_equals_one_k_times_larger_batch_with_a_short_last_group(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    x, y = data(12)  # batches of 4 in groups of 2: [0, 1] then [2] alone, a short last group
    cfg = run_config(tiny_config, batch_size=4, accumulate=2)
    accumulated = fit(cfg, Supervised(Regression(), cfg), Loaders(rows_loader(x, y, 4), None), tmp_path / "a")
    big = run_config(tiny_config, batch_size=8)  # the same two steps: 8 rows, then the last 4
    reference = fit(big, Supervised(Regression(), big), Loaders(rows_loader(x, y, 8), None), tmp_path / "b")
    assert accumulated.state.step == reference.state.step == 2
    for name, p in reference.modules.state_dict().items():
        torch.testing.assert_close(accumulated.modules.state_dict()[name], p, rtol=1e-6, atol=1e-7)


def context(model: nn.Module, *, clip: float | None = None, fp16: bool = False) -> StepContext:
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    precision = Precision(torch.device("cpu"), torch.float16 if fp16 else None, channels_last=False)
    return StepContext(
        precision=precision, optimizers=[OptimSpec("model", opt)], modules=nn.ModuleDict(), grad_clip=clip
    )


def test_clipping_bounds_the_update_to_the_clip_norm() -> None:
    model = nn.Linear(3, 1)
    ctx = context(model, clip=0.5)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    x, y = data(8)
    ctx.begin_batch(group_size=1, last_in_group=True)
    ctx.backward(nn.functional.mse_loss(model(x), y * 100))  # a gradient far longer than 0.5
    assert ctx.step()
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(before - after).item() == pytest.approx(0.5, rel=1e-5)  # lr 1


def test_inside_a_group_step_waits_and_the_loss_is_divided_by_the_group_size() -> None:
    model = nn.Linear(3, 1)
    ctx = context(model)
    x, y = data(4)
    ctx.begin_batch(group_size=3, last_in_group=False)
    loss = nn.functional.mse_loss(model(x), y)
    (expected,) = torch.autograd.grad(loss, model.weight, retain_graph=True)
    ctx.backward(loss)
    assert not ctx.step() and not ctx.end_batch()
    torch.testing.assert_close(model.weight.grad, expected / 3)


def test_fp16_scaler_unscales_before_the_histograms_and_skips_a_step_on_overflow() -> None:
    model = nn.Linear(3, 1)
    x, y = data(8)
    (true_grad,) = torch.autograd.grad(nn.functional.mse_loss(model(x), y), model.weight)
    ctx = context(model, fp16=True)
    assert ctx.scaler.is_enabled() and ctx.scaler.get_scale() == 2.0**16
    seen: list[torch.Tensor] = []
    ctx.before_step = lambda spec: seen.append(model.weight.grad.clone())
    ctx.begin_batch(group_size=1, last_in_group=True)
    ctx.backward(nn.functional.mse_loss(model(x), y))
    ctx.step()
    ctx.end_batch()
    torch.testing.assert_close(seen[0], true_grad)  # what TensorBoard gets is the true gradient

    weight = model.weight.detach().clone()
    ctx.before_step = None
    ctx.begin_batch(group_size=1, last_in_group=True)
    ctx.backward(model(x).sum() * float("inf"))
    ctx.step()
    ctx.end_batch()
    assert torch.equal(model.weight, weight)  # the overflowing step was skipped ...
    assert ctx.scaler.get_scale() == 2.0**15  # ... and the scale halved


def test_a_backward_fills_only_the_named_optimizers_parameters() -> None:
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    specs = [
        OptimSpec("g", torch.optim.SGD(g.parameters(), lr=0.1)),
        OptimSpec("d", torch.optim.SGD(d.parameters(), lr=0.1)),
    ]
    ctx = StepContext(
        precision=Precision(torch.device("cpu"), None, False), optimizers=specs, modules=nn.ModuleDict()
    )
    ctx.begin_batch(group_size=1, last_in_group=True)
    ctx.backward(d(g(torch.randn(4, 2))).mean(), optimizer="g")
    assert g.weight.grad is not None and d.weight.grad is None
    with pytest.raises(ValueError) as info:
        ctx.backward(d(g(torch.randn(4, 2))).mean())
    assert str(info.value) == (
        "ctx.backward() needs optimizer=: this run has 2 optimizers (g, d). Name the one, "
        "e.g. ctx.backward(..., optimizer='g')."
    )
    with pytest.raises(ValueError) as info:
        ctx.step("gen")
    assert "ctx.step(optimizer='gen'): no optimizer has that name." in str(info.value)
    assert "Expected one of g, d, the names configure_optimizers gave." in str(info.value)


bce = nn.functional.binary_cross_entropy_with_logits


# --- two models, two optimizers: a toy GAN ---------------------------------------------------------------
class ToyGAN:
    """A generator of 2-D points against a discriminator: the protocol carries two of everything."""

    serves = "generator"
    losses = ("loss", "d_loss", "g_loss")
    image_input = False

    def __init__(self, fail_at_step: int | None = None) -> None:
        self.fail_at_step, self.steps = fail_at_step, 0

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        torch.manual_seed(0)
        return nn.ModuleDict({"generator": nn.Linear(2, 2), "discriminator": nn.Linear(2, 1)})

    def configure_optimizers(
        self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int
    ) -> list[OptimSpec]:
        def adam(name: str) -> torch.optim.Optimizer:
            return build_optimizer([ParamGroup(name, list(modules[name].parameters()))], cfg.train.optimizer)

        return [OptimSpec("discriminator", adam("discriminator")), OptimSpec("generator", adam("generator"))]

    def metrics(self, cfg: RunConfig) -> Metric:
        return MeanAbsError()

    def _d_loss(self, modules: nn.ModuleDict, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fake = modules["generator"](torch.randn(len(real), 2))  # the global RNG: checkpointed
        d_real, d_fake = modules["discriminator"](real), modules["discriminator"](fake.detach())
        return bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake)), fake

    def _g_loss(self, modules: nn.ModuleDict, fake: torch.Tensor) -> torch.Tensor:
        score = modules["discriminator"](fake)  # after the discriminator's step, as in DCGAN
        return bce(score, torch.ones_like(score))

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise KeyboardInterrupt  # as if the process were stopped here
        d_loss, fake = self._d_loss(modules, batch[0])
        ctx.backward(d_loss, optimizer="discriminator")
        ctx.step("discriminator")
        g_loss = self._g_loss(modules, fake)
        ctx.backward(g_loss, optimizer="generator")
        ctx.step("generator")
        ctx.metrics.update(fake.mean(0), batch[0].mean(0))
        return {"loss": (d_loss + g_loss).detach(), "d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def validation_step(
        self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
    ) -> dict[str, torch.Tensor]:
        d_loss, fake = self._d_loss(modules, batch[0])
        g_loss = self._g_loss(modules, fake)
        ctx.metrics.update(fake.mean(0), batch[0].mean(0))
        return {"loss": d_loss + g_loss, "d_loss": d_loss, "g_loss": g_loss}

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def example_input(self, batch: Any) -> torch.Tensor | None:
        return None


def points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) * 0.5 + torch.tensor([2.0, -1.0])
    return x, torch.zeros(n)


def gan_run(cfg: RunConfig, run_dir: Path, module: TrainModule, *, resume: bool = False) -> Any:
    loaders = Loaders(rows_loader(*points(40, 1), 4, shuffle=True), rows_loader(*points(12, 2), 4))
    return fit(cfg, module, loaders, run_dir, resume=resume)


def test_two_models_and_two_optimizers_train_and_resume_exactly(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = run_config(
        tiny_config,
        epochs=2,
        batch_size=4,
        checkpoint_every=1,
        log_every=3,
        optimizer={"name": "adam", "lr": 0.01},
        monitor="val/g_loss",
    )
    full = gan_run(cfg, tmp_path / "full", ToyGAN())
    assert full.state.step == 20 and set(full.modules) == {"generator", "discriminator"}
    history = json.loads((tmp_path / "full" / "history.json").read_text())
    assert {"train/loss", "train/d_loss", "train/g_loss", "train/mae", "val/g_loss", "val/mae"} <= set(
        history[0]
    )

    with pytest.raises(KeyboardInterrupt):  # stopped in the second epoch, after a mid-epoch checkpoint
        gan_run(cfg, tmp_path / "cut", ToyGAN(fail_at_step=15))
    resumed = gan_run(cfg, tmp_path / "cut", ToyGAN(), resume=True)
    for name, p in full.modules.state_dict().items():
        assert torch.equal(resumed.modules.state_dict()[name], p), name
    # The resumed epoch's train figures cover the whole epoch, not only the batches after the resume.
    assert json.loads((tmp_path / "cut" / "history.json").read_text()) == history


def test_a_resumed_epoch_reports_the_whole_epochs_train_figures(
    tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cfg = run_config(tiny_config, epochs=1, batch_size=2, checkpoint_every=1, log_every=2)
    x, y = data(12)

    class Stopping(Supervised):
        calls = 0

        def training_step(
            self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
        ) -> dict[str, torch.Tensor]:
            Stopping.calls += 1
            if Stopping.calls == 4:
                raise KeyboardInterrupt
            return super().training_step(ctx, modules, batch)

    full = fit(
        cfg, Supervised(Regression(), cfg), Loaders(rows_loader(x, y, 2, shuffle=True), None), tmp_path / "a"
    )
    with pytest.raises(KeyboardInterrupt):
        train = Loaders(rows_loader(x, y, 2, shuffle=True), None)
        fit(cfg, Stopping(Regression(), cfg), train, tmp_path / "b")
    resumed = fit(
        cfg,
        Supervised(Regression(), cfg),
        Loaders(rows_loader(x, y, 2, shuffle=True), None),
        tmp_path / "b",
        resume=True,
    )
    assert resumed.state.history == full.state.history
    assert resumed.state.history[0]["train/mae"] > 0
