"""Atomic, weights-only checkpoints holding everything needed to resume bit for bit."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkiln.core.errors import CheckpointError
from torchkiln.core.io import atomic_write


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (temporary file, fsync, rename): readers never see half a checkpoint."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, never arbitrary objects."""
    if not path.is_file():
        raise CheckpointError(
            f"No checkpoint at '{path}'. Expected RUN_DIR/checkpoints/last.pt written by 'kiln train'. "
            f"Pass the run directory that 'kiln train' printed."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"It may be truncated; the previous checkpoint is gone, so start a new run."
        ) from None
