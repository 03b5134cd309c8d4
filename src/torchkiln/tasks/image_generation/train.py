"""The GAN's training step: the discriminator, then the generator, each with its own optimizer.

The book's recipe, as the engine runs it: the discriminator learns ``real_loss + fake_loss`` (real images
towards 1, generated ones towards 0), then the generator learns to make the discriminator say 1 for its
images (the non-saturating loss of Goodfellow et al.). ``ctx.backward(loss, optimizer=...)`` fills only
the named optimizer's gradients, so neither loss leaks into the other network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.engine.optim import ParamGroup, optim_spec
from torchkiln.engine.step import OptimSpec, StepContext
from torchkiln.tasks.image_generation.config import GenerationRunConfig

LOSSES = ("g_loss", "d_loss", "d_real", "d_fake")


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[-1, 1]``, the generator's tanh range."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generated ``[-1, 1]`` -> uint8 ``[0, 255]`` (what a PNG, and the feature classifier, take)."""
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def generator_input(z: torch.Tensor, labels: torch.Tensor | None, num_classes: int) -> torch.Tensor:
    """``(B, Z)`` noise, with the one-hot class appended when conditional: ``(B, Z + K)``."""
    if not num_classes:
        return z
    return torch.cat([z, F.one_hot(cast(torch.Tensor, labels), num_classes).to(z.dtype)], dim=1)


class NoQuality(Metric):
    """``task.features: none``: no classifier to measure with, so validation reports only the losses."""

    def update(self, *args: Any) -> None:
        pass

    def compute(self) -> dict[str, float]:
        return {}

    def empty(self) -> bool:
        return True


class GANTraining:
    """Two modules (``generator``, ``discriminator``), an optimizer each; serves the generator."""

    serves = "generator"
    losses = LOSSES
    # Not NHWC (channels_last: auto leaves it off): a DCGAN step took 440 ms in channels_last against 213 ms
    # in the default layout here (bf16, batch 128, width 64; the transposed convolutions are the cost).
    image_input = False

    def __init__(
        self,
        cfg: RunConfig,
        build: Callable[[RunConfig], nn.ModuleDict],
        metrics: Callable[[RunConfig], Metric],
    ) -> None:
        self.cfg = cast(GenerationRunConfig, cfg)
        self._build, self._metrics = build, metrics
        self.num_classes = self.cfg.label_classes
        self.real_target = 1.0 - self.cfg.train.label_smoothing  # one-sided label smoothing (Salimans 2016)

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        return self._build(cfg)

    def configure_optimizers(
        self, cfg: RunConfig, modules: nn.ModuleDict, *, steps_per_epoch: int
    ) -> list[OptimSpec]:
        cfg = cast(GenerationRunConfig, cfg)
        specs = []
        for name, mult in (("discriminator", cfg.task.d_lr_mult), ("generator", 1.0)):
            params = [p for p in modules[name].parameters() if p.requires_grad]
            specs.append(
                optim_spec(name, [ParamGroup(name, params, mult)], cfg, steps_per_epoch=steps_per_epoch)
            )
        return specs

    def metrics(self, cfg: RunConfig) -> Metric:
        return self._metrics(cfg)

    def _inputs(self, ctx: StepContext, batch: Any) -> tuple[torch.Tensor, ...]:
        real, labels, z, fake_labels = (t.to(ctx.device, non_blocking=True) for t in batch)
        real = to_unit(real)
        if ctx.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        return real, labels, z, fake_labels  # z: (B, Z [+ K]), the generator's input

    def _d(self, d: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return d(x, labels).float() if self.num_classes else d(x).float()

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        g, d = modules["generator"], modules["discriminator"]
        real, labels, z, fake_labels = self._inputs(ctx, batch)
        ones = torch.full((len(real),), self.real_target, device=ctx.device)
        zeros = torch.zeros(len(real), device=ctx.device)
        with ctx.autocast():
            fake = g(z)
            d_real = self._d(d, real, labels)
            d_fake = self._d(d, fake.detach(), fake_labels)
            d_loss = F.binary_cross_entropy_with_logits(d_real, ones) + F.binary_cross_entropy_with_logits(
                d_fake, zeros
            )
        ctx.backward(d_loss, optimizer="discriminator")
        ctx.step("discriminator")
        with ctx.autocast():  # the discriminator as it is after its step
            g_loss = F.binary_cross_entropy_with_logits(self._d(d, fake, fake_labels), torch.ones_like(zeros))
        ctx.backward(g_loss, optimizer="generator")
        ctx.step("generator")
        return {
            "g_loss": g_loss.detach(),
            "d_loss": d_loss.detach(),
            "d_real": torch.sigmoid(d_real.detach()).mean(),  # D's mean belief that real images are real
            "d_fake": torch.sigmoid(d_fake.detach()).mean(),  # ... and that generated ones are
        }

    def validation_step(
        self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
    ) -> dict[str, torch.Tensor]:
        """Held-out real images against as many generated from the batch's fixed noise: the metric's pairs."""
        g, d = modules["generator"], modules["discriminator"]
        real, labels, z, fake_labels = self._inputs(ctx, batch)
        with ctx.autocast():
            fake = g(z)
            d_real, d_fake = self._d(d, real, labels), self._d(d, fake, fake_labels)
        ctx.metrics.update(fake, batch[0])  # (outputs, targets): the generated images, the real ones
        return {"d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean()}

    def fixed_input(self, n: int) -> torch.Tensor:
        """The same ``n`` generator inputs every epoch (seeded by the run); classes in turn if conditional."""
        z = torch.randn(n, self.cfg.task.latent_dim, generator=torch.Generator().manual_seed(self.cfg.seed))
        labels = torch.arange(n) % self.num_classes if self.num_classes else None
        return generator_input(z, labels, self.num_classes)

    def epoch_images(self, modules: nn.ModuleDict, device: torch.device) -> dict[str, torch.Tensor]:
        """TensorBoard's ``samples/fixed_noise`` grid: how the same noise's images change over training."""
        x = self.fixed_input(self.cfg.task.grid).to(device)
        return {"samples/fixed_noise": to_uint8(modules["generator"](x))}

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def example_input(self, batch: Any) -> torch.Tensor | None:
        return None  # the first batch's grid is real images; the fixed-noise grid is logged per epoch
