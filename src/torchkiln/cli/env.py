"""`kiln env`: what this machine gives torchkiln, for bug reports and for "why is it slow here".

It names torchkiln's and Python's versions, torch and its CUDA, each GPU, the CPU and whether its bf16 is
fast (what ``train.precision: auto`` decides on), and each optional extra with the installed version of
every package it needs (or ``missing``).
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata

from torchkiln.core._version import __version__

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def extras() -> dict[str, list[tuple[str, str]]]:
    """Each optional extra of torchkiln -> (package, installed version or ``missing``), as declared."""
    try:
        requires = metadata.requires("torchkiln") or []
    except metadata.PackageNotFoundError:
        return {}
    out: dict[str, list[tuple[str, str]]] = {}
    for req in requires:
        extra, name = _EXTRA.search(req), _NAME.match(req)
        if extra is None or name is None or name.group() == "torchkiln":  # [all] names the other extras
            continue
        try:
            version = metadata.version(name.group())
        except metadata.PackageNotFoundError:
            version = "missing"
        out.setdefault(extra.group(1), []).append((name.group(), version))
    return out


def report() -> list[tuple[str, str]]:
    """(key, value) lines: versions, devices, CPU features and extras."""
    import torch

    from torchkiln.engine.precision import cpu_has_fast_bf16, cpu_name

    rows = [
        ("torchkiln", __version__),
        ("python", f"{platform.python_version()} ({platform.platform()})"),
        ("torch", torch.__version__),
        ("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} device(s))" if torch.cuda.is_available()
         else f"not available (torch built with CUDA {torch.version.cuda})" if torch.version.cuda
         else "not available (a CPU-only torch)"),
    ]  # fmt: skip
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gib = props.total_memory / 2**30
        rows.append(
            (f"cuda:{i}", f"{props.name}, {gib:.0f} GiB, compute capability {props.major}.{props.minor}")
        )
    fast = cpu_has_fast_bf16()
    rows += [
        ("cpu", f"{cpu_name()}, {os.cpu_count()} logical cores; torch uses {torch.get_num_threads()}"),
        ("bf16 on the cpu", "fast (AMX or AVX512-BF16): auto precision trains in bf16" if fast
         else "emulated (no AMX or AVX512-BF16): auto precision trains in fp32"),
    ]  # fmt: skip
    for extra, packages in sorted(extras().items()):
        rows.append((f"[{extra}]", ", ".join(f"{name} {version}" for name, version in packages)))
    return rows


def env_command() -> None:
    """What this machine gives torchkiln: versions, GPUs, CPU features (fast bf16?) and the extras."""
    rows = report()
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
