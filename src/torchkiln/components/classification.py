"""What every classification task shares: the epoch metric, the top-k answer (at the operating point of a
two-class model, when it has one) and its response schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from rich.markup import escape

from torchkiln.components.classification_threshold import Decision
from torchkiln.components.metric import Metric


class MulticlassMetrics(Metric):
    """Accuracy over an epoch, accumulated on the device (no host sync per batch).

    The loss is the engine's to track; this set holds what only the task knows how to score. The
    counts are :class:`~torchkiln.components.metric.Metric` states: they go into mid-epoch checkpoints.
    With a ``decision`` (a two-class model's operating point) the answers are scored as they are served,
    at its threshold, not by argmax: the export gate of a bundle with ``task.threshold`` judges them so.
    """

    def __init__(self, decision: Decision | None = None) -> None:
        super().__init__()
        self.decision = decision
        self.add_state("correct", torch.zeros((), dtype=torch.long))
        self.add_state("count", torch.zeros((), dtype=torch.long))

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        outputs = outputs.detach()
        if self.decision is None:
            answered = outputs.argmax(1)
        else:
            answered = self.decision.predict(outputs.float().softmax(1))
        self.correct += (answered == targets).sum()
        self.count += targets.numel()

    def compute(self) -> dict[str, float]:
        return {"accuracy": self.correct.item() / max(int(self.count.item()), 1)}


class ClassScore(BaseModel):
    label: str
    score: float = Field(description="Softmax probability in [0, 1].")


class OperatingPointAnswer(BaseModel):
    positive: str = Field(description="The class whose probability the threshold applies to.")
    threshold: float = Field(description="label is the positive class when its probability >= this.")


class ClassPrediction(BaseModel):
    label: str = Field(
        description="The most likely class; a two-class model with an operating point answers the positive "
        "class when its probability reaches the threshold, even below 0.5."
    )
    score: float = Field(description="Its probability.")
    top_k: list[ClassScore] = Field(description="The k most likely classes, most likely first.")
    operating_point: OperatingPointAnswer | None = Field(
        None, description="Present when the model answers at a threshold (task.threshold), not argmax."
    )


def top_k_answers(
    classes: Sequence[str], outputs: torch.Tensor, top_k: int, decision: Decision | None = None
) -> list[dict[str, Any]]:
    """Logits ``(B, K)`` -> one :class:`ClassPrediction`-shaped dict per row.

    With a ``decision`` (a two-class model's operating point) the label is the decision's, its score the
    probability of that label, and the answer names the threshold; ``top_k`` still lists the
    probabilities, most likely first.
    """
    probs = outputs.float().softmax(dim=1)
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    # .tolist() once: per-element float()/int() on tensors costs microseconds each, per request.
    answers = [
        {
            "label": classes[i[0]],
            "score": p[0],
            "top_k": [{"label": classes[j], "score": q} for q, j in zip(p, i, strict=True)],
        }
        for p, i in zip(top_p.tolist(), top_i.tolist(), strict=True)
    ]
    if decision is None:
        return answers
    point = {"positive": classes[decision.positive], "threshold": decision.threshold}
    for answer, c, row in zip(answers, decision.predict(probs).tolist(), probs.tolist(), strict=True):
        answer |= {"label": classes[c], "score": row[c], "operating_point": point}
    return answers


def answer_lines(names: Sequence[str], answers: Sequence[dict[str, Any]], *, as_json: bool) -> list[str]:
    """What ``kiln predict`` prints for a classifier: one JSON line, or one rich-markup line, per input."""
    if as_json:
        return [json.dumps({"input": name, **res}) for name, res in zip(names, answers, strict=True)]
    lines = []
    for name, res in zip(names, answers, strict=True):
        alts = ", ".join(f"{t['label']} {t['score']:.3f}" for t in res["top_k"])
        point = res.get("operating_point")
        at = f"   at p({escape(point['positive'])}) >= {point['threshold']:.3f}" if point else ""
        lines.append(
            f"{escape(name)}: [bold]{escape(res['label'])}[/] ({res['score']:.3f})   "
            f"top-{len(res['top_k'])}: {escape(alts)}{at}"
        )
    return lines


def classification_loss(cfg: Any) -> torch.nn.Module:
    """Cross-entropy with the run's label smoothing and, when resolved, ``train.class_weights``."""
    weights = cfg.train.class_weights
    weight = torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None
    return torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)


def class_signals(outputs: torch.Tensor, decision: Decision | None = None) -> dict[str, torch.Tensor]:
    """Logits ``(B, K)`` -> ``predicted`` (the answered class, int64) and ``confidence`` (its softmax).

    What a classifier's reference profile and live traffic record of its outputs, for drift monitoring.
    The answered class is the argmax, or the ``decision``'s at a two-class model's operating point, so
    the reference counts the labels the server answers.
    """
    probs = outputs.detach().float().softmax(dim=1)
    if decision is None:
        confidence, predicted = probs.max(dim=1)
        return {"predicted": predicted.long(), "confidence": confidence}
    predicted = decision.predict(probs)
    return {"predicted": predicted, "confidence": probs.gather(1, predicted[:, None]).squeeze(1)}
