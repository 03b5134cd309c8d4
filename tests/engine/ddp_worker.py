"""A run of the engine in one process or, under torchrun, in several: what test_distributed.py compares.

``python ddp_worker.py OUT`` (one process) or ``torchrun --nproc-per-node 2 ddp_worker.py OUT``. It trains a
small BatchNorm-free classifier on 45 training and 23 validation vectors (odd lengths, batches of 9 that
two ranks split 5 + 4), twice: straight through, and crashed mid-epoch then resumed. Rank 0 writes
``OUT/<world>.pt``: the history, the items seen and the weights of both runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchkiln.components.classification import MulticlassMetrics
from torchkiln.core.config import DataConfig, RunConfig, TaskConfig
from torchkiln.engine import distributed
from torchkiln.engine.optim import ParamGroup, optim_spec
from torchkiln.engine.supervised import Supervised
from torchkiln.engine.trainer import Loaders, fit

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: toy.py is beside it
from toy import rows_loader

CRASH_AT = 7  # the optimizer step the crashed run dies before (epoch 1, batch 2)


class Parts:
    image_input = False

    def build_model(self, cfg: RunConfig) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        return batch[0].to(device), batch[1].to(device)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return nn.CrossEntropyLoss()

    def metrics(self, cfg: RunConfig) -> MulticlassMetrics:
        return MulticlassMetrics()

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        return [ParamGroup("all", list(model.parameters()))]


class Crashing(Supervised):
    """Dies before optimizer step ``CRASH_AT``, as a killed process would (after checkpoint_every=1)."""

    steps = 0

    def training_step(self, ctx: Any, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        Crashing.steps += 1
        if Crashing.steps == CRASH_AT:
            raise KeyboardInterrupt("killed")
        return super().training_step(ctx, modules, batch)


class TwoOptimizers(Supervised):
    """The classifier as two modules with an optimizer each, each stepped on its own loss (a GAN's shape):
    the engine averages their gradients itself, without DDP."""

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        net = self.parts.build_model(cfg)
        return nn.ModuleDict({"model": net[:2], "head": net[2:]})

    def configure_optimizers(self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int) -> list:
        return [
            optim_spec(
                k, [ParamGroup(k, list(modules[k].parameters()))], cfg, steps_per_epoch=steps_per_epoch
            )
            for k in ("model", "head")
        ]

    def training_step(self, ctx: Any, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        x, y = self.parts.to_device(batch, ctx.device, channels_last=False)
        for name in ("head", "model"):
            out = modules["head"](modules["model"](x))
            loss = self.loss_fn(out, y)
            ctx.backward(loss, optimizer=name)
            ctx.step(name)
        ctx.metrics.update(out.detach(), y)
        return {"loss": loss.detach()}

    def validation_step(self, ctx: Any, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        x, y = self.parts.to_device(batch, ctx.device, channels_last=False)
        out = modules["head"](modules["model"](x))
        ctx.metrics.update(out, y)
        return {"loss": self.loss_fn(out, y)}


def loaders() -> Loaders:
    def loader(n: int, seed: int, train: bool) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.randn(n, 8, generator=g) + torch.nn.functional.one_hot(y, 8).float() * 2
        return rows_loader(x, y, 9, shuffle=train, drop_last=train)

    return Loaders(loader(45, 1, True), loader(23, 2, False))


def config(runs: Path) -> RunConfig:
    return RunConfig(
        task=TaskConfig(kind="vectors"),
        data=DataConfig(path="-"),
        train={"epochs": 3, "batch_size": 9, "device": "cpu", "precision": "fp32", "checkpoint_every": 1,
               "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9}, "scheduler": {"name": "cosine"}},
        tracking={"tensorboard": False, "mlflow": False},
        runs_dir=str(runs),
    )  # fmt: skip


def main(out: Path) -> None:
    distributed.init_from_env()
    world = distributed.world_size()
    cfg = config(out / f"runs-{world}")
    straight = fit(cfg, Supervised(Parts(), cfg), loaders(), out / f"straight-{world}")
    crashed = out / f"crashed-{world}"
    try:
        fit(cfg, Crashing(Parts(), cfg), loaders(), crashed)
        raise AssertionError("the crashing run did not crash")
    except KeyboardInterrupt:
        pass
    mid = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["state"]
    resumed = fit(cfg, Supervised(Parts(), cfg), loaders(), crashed, resume=True)
    two = fit(cfg, TwoOptimizers(Parts(), cfg), loaders(), out / f"two-optimizers-{world}")
    if distributed.is_main():
        torch.save(
            {
                "history": straight.state.history,
                "samples": straight.state.samples,
                "weights": straight.modules.state_dict(),
                "crashed_at": (mid["epoch"], mid["batch"]),
                "resumed_history": resumed.state.history,
                "resumed_weights": resumed.modules.state_dict(),
                "two_optimizers_history": two.state.history,
                "two_optimizers_weights": two.modules.state_dict(),
            },
            out / f"{world}.pt",
        )
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
