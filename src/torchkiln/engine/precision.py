"""Device, mixed precision and memory format, chosen once per run from the hardware."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from torchkiln.core.config import DEVICE_CHOICES, DEVICE_NAME, TrainConfig, device_name
from torchkiln.core.errors import ConfigError
from torchkiln.engine.distributed import local_device


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name, for reports (``kiln env``, export reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16; elsewhere bf16 matmuls are emulated and ~70x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class Precision:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return f"{self.device} {amp}{' channels_last' if self.channels_last else ''}"


def resolve_device(name: str, *, setting: str = "train.device") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` (or just ``N``) or ``mps``
    as a device.

    ``setting`` names where ``name`` came from (``train.device``, ``--device``) in the error messages.

    Raises:
        ConfigError: a name of another form, or a CUDA device this machine does not have.

    Example:
        >>> resolve_device("auto", setting="--device")
        device(type='cpu')
    """
    name = device_name(name)
    if not DEVICE_NAME.fullmatch(name):
        raise ConfigError(
            f"{setting} is '{name}'; expected {DEVICE_CHOICES}. Use auto to take a GPU when there is one."
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{setting} is '{name}' but CUDA is not available on this machine. Use auto (or cpu)."
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{setting} is '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}. Pick one of them, or use auto."
            )
    return torch.device(name)


def resolve_precision(cfg: TrainConfig, *, image_input: bool) -> Precision:
    """Pick AMP and memory format. ``auto``: bf16 (fp16 + GradScaler on older GPUs) on CUDA,
    bf16 on CPUs with fast bf16, fp32 otherwise; channels_last for image models (oneDNN convolutions
    on CPU run 2-3x faster in NHWC than in NCHW here; cuDNN tensor cores want NHWC too)."""
    device = local_device(resolve_device(cfg.device))  # in a process group: this rank's own GPU
    dtype: torch.dtype | None
    if cfg.precision == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if device.type == "cpu" and cpu_has_fast_bf16() else None
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError(
            f"train.precision fp16 needs a CUDA device; this run is on {device}. Use bf16 or fp32 (or auto)."
        )
    channels_last = cfg.channels_last if isinstance(cfg.channels_last, bool) else image_input
    return Precision(device, dtype, channels_last)
