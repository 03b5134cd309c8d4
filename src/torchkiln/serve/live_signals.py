"""Live drift signals for the prediction log: per input, what the bundle's reference profile records.

A bundle with a reference profile (``Bundle.reference()``) stores, per held-out item, the output signals
and the PCA-projected penultimate features. The server logs the same signals for every served input, in
the ``signals`` column of the ``predictions`` table, so ``kiln monitor report`` compares a window of
traffic with the reference without running the model again. One entry per input, in order::

    {"embedding": [k floats], "predicted": 3, "confidence": 0.91234}         a classifier
    {"embedding": [k floats], "forecast_level": 0.4, "forecast_spread": 1.2}  a forecaster

- ``embedding``: the input of the model's last ``nn.Linear``, projected with the reference's stored PCA
  (``(f - pca_mean) @ pca_components.T``), the same ``k`` dimensions as the reference's ``embedding``
  rows. Only for torch bundles: an exported (ONNX Runtime) graph gives outputs only, so its entries have
  no ``embedding`` key.
- the output signals: the keys of the reference section's ``signals`` (``task.output_signals``);
  ``predicted`` is an int (the class index in the bundle's labels), the others floats.
- floats are rounded to :data:`DIGITS` significant digits (a float32 has about 7; drift statistics need
  far fewer, and the row stays small: 16 dims are ~150 bytes).

The column is null for a bundle without a reference, and for a batch whose signals failed (logged as an
error; the answer is never lost to it).

Computing them costs no second model call: :class:`Signaller` runs the batch through
``Predictor.forward_embed`` (one forward pass with a pre-hook on the last linear layer) instead of
``Predictor.forward``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from torchkiln.artifacts.predictor import Predictor
from torchkiln.core.errors import BundleError

log = logging.getLogger("torchkiln.serve")

DIGITS = 5  # significant digits of each logged float
Mode = Literal["embedding", "outputs"]


def rounded(value: float) -> float | None:
    """``value`` to :data:`DIGITS` significant digits; NaN and infinities become None (JSON null)."""
    return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else None


def signal_mode(predictor: Predictor) -> Mode | None:
    """What the server can log for ``predictor``: ``embedding`` (torch with a reference: embeddings and
    output signals), ``outputs`` (an exported bundle with a reference: output signals only), or None (no
    reference: nothing)."""
    try:
        predictor.reference  # noqa: B018 (read once and cached: this checks the file and its SHA-256)
    except BundleError as exc:
        if predictor.bundle.profile.get("reference"):  # there is one, but it is broken: say so
            log.error("'%s': no live drift signals will be logged: %s", predictor.bundle.path, exc)
        return None
    return "embedding" if predictor.bundle.meta.get("runtime", "torch") == "torch" else "outputs"


@dataclass
class Signaller:
    """One loaded version's signal path: the forward call, and the per-input entries of its outputs.

    Example:
        >>> s = Signaller(predictor, signal_mode(predictor))
        >>> outputs, emb = s.forward(batch)
        >>> s.entries(outputs, emb)[0]
        {'embedding': [0.12345, -1.2], 'predicted': 2, 'confidence': 0.98}
    """

    predictor: Predictor
    mode: Mode | None

    def forward(self, batch: torch.Tensor, *, wanted: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(outputs, embeddings (B, k) or None)`` from one model call.

        Embeddings only when ``wanted`` and the mode has them. If the embedding path fails, the error is
        logged and the batch is answered by the plain forward pass (a second call, only then).
        """
        if not wanted or self.mode != "embedding":
            return self.predictor.forward(batch), None
        try:
            return self.predictor.forward_embed(batch)
        except Exception:
            log.exception("'%s': computing embeddings failed; answering without them", self.predictor.version)
            return self.predictor.forward(batch), None

    def entries(self, outputs: torch.Tensor, embeddings: torch.Tensor | None) -> list[dict[str, Any]] | None:
        """One JSON-ready entry per row of ``outputs``, or None (no reference, or they failed: logged)."""
        if self.mode is None or (self.mode == "embedding" and embeddings is None):
            return None  # no reference; or the embeddings failed (logged): no partial entries
        try:
            signals = self.predictor.output_signals(outputs)
            columns: dict[str, list[Any]] = {
                name: v.tolist()
                if v.dtype in (torch.int64, torch.int32)
                else [rounded(x) for x in v.tolist()]
                for name, v in signals.items()
            }
            if embeddings is not None:
                columns = {"embedding": [[rounded(x) for x in row] for row in embeddings.tolist()], **columns}
            return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        except Exception:
            log.exception("'%s': computing live drift signals failed; logged without", self.predictor.version)
            return None
