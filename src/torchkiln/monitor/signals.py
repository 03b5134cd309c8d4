"""The per-item signals a drift check compares: of the reference profile, or of a window of traffic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from torchkiln.core.errors import DataError


@dataclass(frozen=True)
class Signals:
    """The per-item signals of a reference sample or of a window; every array has one entry per item.

    Attributes:
        inputs: numeric input statistics, name -> (N,) floats (e.g. ``{"mean": ..., "std": ...}``).
        outputs: continuous output signals other than a classifier's confidence, name -> (N,) floats
            (a forecaster's ``{"forecast_level": ..., "forecast_spread": ...}``).
        classes: (N,) predicted class indices, or None.
        num_classes: the model's number of classes; required with ``classes``.
        confidence: (N,) probability of the predicted class, or None.
        embeddings: (N, d) penultimate-layer embeddings (PCA-reduced), or None.
    """

    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    classes: np.ndarray | None = None
    num_classes: int | None = None
    confidence: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        lengths = {f"inputs[{k!r}]": len(v) for k, v in self.inputs.items()}
        lengths |= {f"outputs[{k!r}]": len(v) for k, v in self.outputs.items()}
        for name in ("classes", "confidence", "embeddings"):
            if getattr(self, name) is not None:
                lengths[name] = len(getattr(self, name))
        if not lengths:
            raise DataError(
                "Signals got no signal at all; expected inputs, outputs, classes, confidence or embeddings. "
                "Fix: pass at least one of them."
            )
        if len(set(lengths.values())) > 1:
            raise DataError(
                f"Signals got arrays of different lengths {lengths}; expected one entry per item in each. "
                f"Fix: build every signal from the same items."
            )
        if self.classes is not None and self.num_classes is None:
            raise DataError(
                "Signals got classes without num_classes; expected both. Fix: pass num_classes=<the "
                "model's number of classes>, so that a class that never occurs still counts."
            )

    def __len__(self) -> int:
        named = (next(iter(m.values()), None) for m in (self.inputs, self.outputs))
        for a in (*named, self.classes, self.confidence, self.embeddings):
            if a is not None:
                return len(a)
        raise AssertionError("unreachable: __post_init__ requires a signal")

    def take(self, index: np.ndarray) -> Signals:
        """The same signals for the items at ``index`` only."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[index]

        return Signals(
            inputs={k: np.asarray(v)[index] for k, v in self.inputs.items()},
            outputs={k: np.asarray(v)[index] for k, v in self.outputs.items()},
            classes=pick(self.classes),
            num_classes=self.num_classes,
            confidence=pick(self.confidence),
            embeddings=pick(self.embeddings),
        )
