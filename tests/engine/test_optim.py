"""Optimizers, parameter groups, schedulers and precision selection."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.optim import lr_scheduler

from torchkiln.core.config import OptimizerConfig, SchedulerConfig, TrainConfig
from torchkiln.core.errors import ConfigError
from torchkiln.engine import precision as prec
from torchkiln.engine.optim import ParamGroup, build_optimizer, build_scheduler


def groups() -> tuple[nn.Module, list[ParamGroup]]:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    backbone = list(model[0].parameters()) + list(model[1].parameters())
    head = list(model[3].parameters())
    return model, [ParamGroup("backbone", backbone, 0.1), ParamGroup("head", head, 1.0)]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_weight_decay_skips_biases_and_norms_and_lr_mults_apply(name: str) -> None:
    model, g = groups()
    opt = build_optimizer(g, OptimizerConfig(name=name, lr=0.1, weight_decay=0.01))
    for group in opt.param_groups:
        ndims = {p.ndim for p in group["params"]}
        assert group["weight_decay"] == (0.01 if ndims == {4} or ndims == {2} else 0.0)
    lrs = sorted({round(group["lr"], 6) for group in opt.param_groups})
    assert lrs == [0.01, 0.1]
    n_params = sum(len(group["params"]) for group in opt.param_groups)
    assert n_params == len(list(model.parameters()))


def test_sgd_nesterov_is_passed_through() -> None:
    _, g = groups()
    opt = build_optimizer(g, OptimizerConfig(name="sgd", nesterov=True, momentum=0.9))
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def lrs_over(cfg: SchedulerConfig, steps: int = 20, spe: int = 2) -> list[float]:
    _, g = groups()
    opt = build_optimizer(g, OptimizerConfig(name="sgd", lr=1.0, weight_decay=0))
    sched = build_scheduler(opt, cfg, epochs=steps // spe, steps_per_epoch=spe)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[-1]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def torch_lrs(make: Callable[[torch.optim.Optimizer], Any], steps: int = 20) -> list[float]:
    """The same 20 steps under PyTorch's own scheduler classes (lr 1.0)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, out = make(opt), []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def warmup_then_cosine(o: torch.optim.Optimizer) -> Any:
    warm = lr_scheduler.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=3)
    return lr_scheduler.SequentialLR(o, [warm, lr_scheduler.CosineAnnealingLR(o, T_max=16)], milestones=[4])


# 20 steps, 2 per epoch: epochs count in steps of 2 (step_size 3 -> 6 steps; milestones 2, 5 -> 4, 10).
SCHEDULES = {
    "none": (SchedulerConfig(name="none"), lambda o: lr_scheduler.ConstantLR(o, factor=1.0, total_iters=0)),
    "step": (SchedulerConfig(name="step", step_size=3, gamma=0.5), lambda o: lr_scheduler.StepLR(o, 6, 0.5)),
    "multistep": (
        SchedulerConfig(name="multistep", milestones=[2, 5], gamma=0.1),
        lambda o: lr_scheduler.MultiStepLR(o, [4, 10], 0.1),
    ),
    "onecycle": (
        SchedulerConfig(name="onecycle", pct_start=0.25),
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=20, pct_start=0.25),
    ),
    "cosine": (
        SchedulerConfig(name="cosine", min_lr=0.01),
        lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=20, eta_min=0.01),
    ),
    "cosine+warmup": (SchedulerConfig(name="cosine", warmup_epochs=2), warmup_then_cosine),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_matches_pytorchs_own(name: str) -> None:
    cfg, make = SCHEDULES[name]
    assert lrs_over(cfg) == pytest.approx(torch_lrs(make), rel=1e-6, abs=1e-9)


def test_warmup_with_a_schedule_that_ignores_it_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        SchedulerConfig(name="onecycle", warmup_epochs=1)
    assert (
        "warmup_epochs is used only by the cosine schedule; this one is 'onecycle', which would ignore it. "
        "Set name: cosine, or remove warmup_epochs (onecycle warms up by itself: set pct_start)."
    ) in str(info.value)


def test_cosine_with_warmup_rises_then_decays_to_min() -> None:
    lrs = lrs_over(SchedulerConfig(name="cosine", warmup_epochs=2, min_lr=0.0))
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] > lrs[10] > lrs[-1] >= 0.0


def test_step_and_multistep_count_in_epochs() -> None:
    assert lrs_over(SchedulerConfig(name="step", step_size=3, gamma=0.5))[5:7] == pytest.approx([1.0, 0.5])
    multi = lrs_over(SchedulerConfig(name="multistep", milestones=[2, 5], gamma=0.1))
    assert multi[3] == pytest.approx(1.0)
    assert multi[4] == pytest.approx(0.1)
    assert multi[10] == pytest.approx(0.01)


def test_onecycle_peaks_at_the_configured_lr() -> None:
    lrs = lrs_over(SchedulerConfig(name="onecycle", pct_start=0.25))
    assert max(lrs) == pytest.approx(1.0, rel=1e-3)
    assert lrs[0] < 0.1 and lrs[-1] < 0.01


def test_precision_auto_is_fp32_on_cpu_without_fast_bf16(monkeypatch) -> None:
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: False)
    p = prec.resolve_precision(TrainConfig(device="cpu"), image_input=True)
    assert p.amp_dtype is None and p.channels_last
    monkeypatch.setattr(prec, "cpu_has_fast_bf16", lambda: True)
    assert prec.resolve_precision(TrainConfig(device="cpu"), image_input=True).amp_dtype is torch.bfloat16


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train\.precision fp16 needs a CUDA device"):
        prec.resolve_precision(TrainConfig(device="cpu", precision="fp16"), image_input=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_device_without_cuda_is_refused() -> None:
    with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
        prec.resolve_device("cuda")
    with pytest.raises(ConfigError) as exc:
        prec.resolve_device("cuda:1", setting="--device")
    assert (
        str(exc.value) == "--device is 'cuda:1' but CUDA is not available on this machine. Use auto (or cpu)."
    )


def test_a_device_name_of_another_form_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        prec.resolve_device("gpu", setting="--device")
    assert str(exc.value) == (
        "--device is 'gpu'; expected auto, cpu, cuda, cuda:N (e.g. cuda:1), N for cuda:N, or mps. Use auto "
        "to take a GPU when there is one."
    )
    assert prec.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["0", "cuda:0"])
def test_a_gpu_number_means_that_cuda_device(name: str) -> None:
    """``0`` is ``cuda:0``, as in Ultralytics: both are refused the same way on a CPU-only machine."""
    with pytest.raises(ConfigError) as exc:
        prec.resolve_device(name, setting="--device")
    expected = "--device is 'cuda:0' but CUDA is not available on this machine. Use auto (or cpu)."
    assert str(exc.value) == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_precision_on_cuda_uses_amp_and_trains() -> None:
    p = prec.resolve_precision(TrainConfig(), image_input=True)
    assert p.device.type == "cuda" and p.amp_dtype in (torch.bfloat16, torch.float16)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2)).cuda()
    x = torch.randn(4, 3, 8, 8, device="cuda")
    with p.autocast():
        out = model(x)
    assert out.dtype == p.amp_dtype


def test_cosine_floor_is_min_lr_for_every_group() -> None:
    _, g = groups()  # backbone lr = 0.1 x head lr
    opt = build_optimizer(g, OptimizerConfig(name="sgd", lr=1.0, weight_decay=0))
    sched = build_scheduler(opt, SchedulerConfig(name="cosine", min_lr=0.01), epochs=5, steps_per_epoch=2)
    for _ in range(10):
        opt.step()
        sched.step()
    assert {round(group["lr"], 6) for group in opt.param_groups} == {0.01}


def test_all_frozen_is_a_config_error() -> None:
    groups()
    with pytest.raises(ConfigError, match="The model has no trainable parameters"):
        build_optimizer([ParamGroup("head", [], 1.0)], OptimizerConfig())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 8])
def test_onecycle_runs_on_a_handful_of_steps(steps: int) -> None:
    """A tiny data set (4 optimizer steps in all) must not make OneCycleLR divide by zero."""
    _, g = groups()
    opt = build_optimizer(g, OptimizerConfig(name="sgd", lr=1.0, weight_decay=0))
    sched = build_scheduler(opt, SchedulerConfig(name="onecycle"), epochs=1, steps_per_epoch=steps)
    for _ in range(steps):
        opt.step()
        if sched is not None:
            sched.step()
    assert (sched is None) == (steps < 3)
    assert all(math.isfinite(group["lr"]) for group in opt.param_groups)
