"""The GAN's step through the engine: both networks learn from their own loss only, and TensorBoard gets
the fixed-noise grid at every epoch's end."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torchkiln.tasks.base import validate
from torchkiln.tasks.image_generation.example import example_config
from torchkiln.tasks.image_generation.task import TASK
from torchkiln.tasks.training import train_task


def test_each_epoch_logs_the_same_noise_as_an_image_grid(tmp_path: Path) -> None:
    raw = example_config(tmp_path)
    raw["tracking"]["tensorboard"] = True
    raw["task"] |= {"conditional": True, "features": "none"}
    raw["train"]["epochs"] = 2
    cfg, data = TASK.prepare(validate(raw))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = train_task(cfg, TASK, data, run_dir)
    assert [h["epoch"] for h in result.state.history] == [0, 1]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    grids = events.Images("samples/fixed_noise")
    assert len(grids) == 2 and grids[0].encoded_image_string != grids[1].encoded_image_string
    assert grids[0].width == 8 * 28 + 9 * 2  # task.grid: 8 images in a row, 2 px apart
    train = TASK.train_module(cfg)
    fixed = train.fixed_input(8)
    assert torch.equal(fixed, train.fixed_input(8))  # seeded by the run: the same every epoch
    assert torch.equal(fixed[:, -3:].argmax(1), torch.arange(8) % 3)  # the classes in turn


def test_a_step_moves_each_network_by_its_own_loss_only(tmp_path: Path) -> None:
    raw = example_config(tmp_path)
    raw["task"]["features"] = "none"
    cfg, data = TASK.prepare(validate(raw))
    train = TASK.train_module(cfg)
    from torchkiln.engine.precision import resolve_precision
    from torchkiln.engine.step import StepContext

    modules = train.build_modules(cfg)
    specs = train.configure_optimizers(cfg, modules, steps_per_epoch=1)
    ctx = StepContext(
        precision=resolve_precision(cfg.train, image_input=False), optimizers=specs, modules=modules
    )
    ctx.metrics = train.metrics(cfg)
    batch = next(iter(TASK.loader(cfg, data, "train", train=True)))
    grads: dict[str, list[str]] = {}

    def record(spec) -> None:  # when each optimizer steps: which networks hold a gradient
        held = {n.split(".")[0] for n, p in modules.named_parameters() if p.grad is not None}
        grads[spec.name] = sorted(held)

    ctx.before_step = record
    ctx.begin_batch(group_size=1, last_in_group=True)
    losses = train.training_step(ctx, modules, batch)
    assert grads == {"discriminator": ["discriminator"], "generator": ["generator"]}
    assert set(losses) == {"g_loss", "d_loss", "d_real", "d_fake"}
    assert 0 < float(losses["d_real"]) < 1 and 0 < float(losses["d_fake"]) < 1
