"""What every classification task shares: the epoch metric, the top-k answer and its response schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from rich.markup import escape

from torchkiln.components.metric import Metric


class MulticlassMetrics(Metric):
    """Accuracy over an epoch, accumulated on the device (no host sync per batch).

    The loss is the engine's to track; this set holds what only the task knows how to score. The
    counts are :class:`~torchkiln.components.metric.Metric` states: they go into mid-epoch checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.long))
        self.add_state("count", torch.zeros((), dtype=torch.long))

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


def answer_lines(names: Sequence[str], answers: Sequence[dict[str, Any]], *, as_json: bool) -> list[str]:
    """What ``kiln predict`` prints for a classifier: one JSON line, or one rich-markup line, per input."""
    if as_json:
        return [json.dumps({"input": name, **res}) for name, res in zip(names, answers, strict=True)]
    lines = []
    for name, res in zip(names, answers, strict=True):
        alts = ", ".join(f"{t['label']} {t['score']:.3f}" for t in res["top_k"])
        lines.append(
            f"{escape(name)}: [bold]{escape(res['label'])}[/] ({res['score']:.3f})   "
            f"top-{len(res['top_k'])}: {escape(alts)}"
        )
    return lines


def classification_loss(cfg: Any) -> torch.nn.Module:
    """Cross-entropy with the run's label smoothing and, when resolved, ``train.class_weights``."""
    weights = cfg.train.class_weights
    weight = torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)


def class_signals(outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits ``(B, K)`` -> ``predicted`` (the argmax class, int64) and ``confidence`` (its softmax, float32).

    What a classifier's reference profile and live traffic record of its outputs, for drift monitoring.
    """
    confidence, predicted = outputs.detach().float().softmax(dim=1).max(dim=1)
    return {"predicted": predicted.long(), "confidence": confidence}
