"""What every classification task shares: the epoch metric, the top-k answer and its response schema."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from torchmetrics import Metric


class MulticlassMetrics(Metric):
    """Accuracy over an epoch, accumulated on the device (no host sync per batch).

    The loss is the engine's to track; this set holds what only the task knows how to score. The
    counts are torchmetrics states: they sum across processes and go into mid-epoch checkpoints.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += (outputs.detach().argmax(1) == targets).sum()
        self.count += targets.numel()

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct.item() / max(int(self.count.item()), 1)}


class ClassScore(BaseModel):
    label: str
    score: float = Field(description="Softmax probability in [0, 1].")


class ClassPrediction(BaseModel):
    label: str = Field(description="The most likely class.")
    score: float = Field(description="Its probability.")
    top_k: list[ClassScore] = Field(description="The k most likely classes, most likely first.")


def top_k_answers(classes: Sequence[str], outputs: torch.Tensor, top_k: int) -> list[dict[str, Any]]:
    """Logits ``(B, K)`` -> one :class:`ClassPrediction`-shaped dict per row."""
    probs = outputs.float().softmax(dim=1)
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    # .tolist() once: per-element float()/int() on tensors costs microseconds each, per request.
    return [
        {
            "label": classes[i[0]],
            "score": p[0],
            "top_k": [{"label": classes[j], "score": q} for q, j in zip(p, i, strict=True)],
        }
        for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
    ]
