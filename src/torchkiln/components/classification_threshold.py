"""The operating point of a two-class classifier: which probability makes an answer positive.

A binary medical classifier is not run at argmax: it is run at a threshold on p(positive) chosen for a
target, say a recall of 0.95 (few missed cases), on the val split. ``task.threshold`` says how:

    task:
      positive_class: PNEUMONIA     # default: the second of data.classes
      threshold: {recall: 0.95}     # or {precision: x}, {specificity: x}, or a fixed {value: 0.3}

After training, the task's ``calibrate`` picks the threshold on val (:func:`choose_threshold`) and the
bundle's config keeps it as ``task.threshold.chosen``, so the bundle, its ONNX variants, ``kiln predict``,
the server and ``kiln evaluate`` all answer at the same operating point (:func:`decision_of`). An item is
positive when ``p(positive) >= threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator

from torchkiln.core.config import Strict
from torchkiln.core.errors import ConfigError, DataError, did_you_mean

TARGETS = ("recall", "precision", "specificity")  # what a threshold can be chosen for on val
POSITIVE_CLASS_HELP = (
    "Two-class tasks: the class that task.threshold and the binary metrics treat as positive; default: the "
    "second of data.classes."
)
THRESHOLD_HELP = (
    "Two-class tasks: answer the positive class when its probability >= a threshold chosen on val for a "
    "target ({recall: 0.95}, {precision: x}, {specificity: x}) or fixed ({value: 0.3}). Default: argmax."
)
Unit = Annotated[float, Field(gt=0, le=1)]


class ThresholdConfig(Strict):
    """``task.threshold``: one target met on the val split, or a fixed ``value``."""

    recall: Unit | None = Field(None, description="Choose the largest threshold whose val recall >= this.")
    precision: Unit | None = Field(
        None, description="Choose the smallest threshold whose val precision >= this."
    )
    specificity: Unit | None = Field(
        None, description="Choose the smallest threshold whose val specificity >= this."
    )
    value: Annotated[float, Field(gt=0, lt=1)] | None = Field(None, description="A fixed threshold.")
    chosen: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="Filled in after training: the threshold the target gave on the val split."
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        # `threshold: 0.3` is shorthand for `threshold: {value: 0.3}`.
        return {"value": raw} if isinstance(raw, int | float) and not isinstance(raw, bool) else raw

    @model_validator(mode="after")
    def _one_target(self) -> ThresholdConfig:
        given = [name for name in (*TARGETS, "value") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"task.threshold needs exactly one of recall, precision, specificity or value; got "
                f"{' and '.join(given) if given else 'none'}. Write e.g. {{recall: 0.95}} or {{value: 0.3}}"
            )
        return self

    @property
    def target(self) -> tuple[str, float]:
        """``("recall", 0.95)``, or ``("value", 0.3)`` for a fixed threshold."""
        name = next(n for n in (*TARGETS, "value") if getattr(self, n) is not None)
        return name, float(getattr(self, name))

    def describe(self) -> str:
        """``recall >= 0.95 on val`` or ``fixed``: where the threshold comes from."""
        name, goal = self.target
        return "fixed" if name == "value" else f"{name} >= {goal:g} on val"


def check_binary_settings(positive_class: str | None, threshold: Any, classes: Sequence[str] | None) -> None:
    """Refuse ``task.positive_class`` / ``task.threshold`` that the class list cannot take.

    Called by the run configs' validators, so the check runs at load when ``data.classes`` is given and
    again when ``prepare`` fills it in from the data: before any compute either way.

    Raises:
        ValueError: more than two classes, or a positive class that is not one of them (pydantic turns
            it into the config error).
    """
    if classes is None or (positive_class is None and threshold is None):
        return
    if len(classes) != 2:
        setting = "task.threshold" if threshold is not None else "task.positive_class"
        raise ValueError(
            f"{setting} is for two-class tasks, but there are {len(classes)} classes "
            f"({', '.join(classes)}). Remove {setting}: a task of more classes answers its most likely class"
        )
    if positive_class is not None and positive_class not in classes:
        same = [c for c in classes if c.casefold() == positive_class.casefold()]
        hint = f" Did you mean '{same[0]}'?" if same else did_you_mean(positive_class, classes)
        raise ValueError(
            f"task.positive_class '{positive_class}' is not one of the classes ({', '.join(classes)}).{hint} "
            f"Set it to one of them"
        )


def positive_index(classes: Sequence[str], positive_class: str | None) -> int:
    """The index of the positive class: ``positive_class``, else the second one (``[NORMAL, PNEUMONIA]``)."""
    return list(classes).index(positive_class) if positive_class is not None else 1


@dataclass(frozen=True)
class Decision:
    """How a two-class model answers: ``positive`` when ``p(positive) >= threshold``, else the other class."""

    positive: int
    threshold: float

    def predict(self, probs: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` probabilities -> ``(N,)`` int64 class indices at this operating point."""
        hit = probs[:, self.positive].double() >= self.threshold  # in float64, as the val scores were
        return torch.where(hit, self.positive, 1 - self.positive).long()


def decision_of(task: Any, classes: Sequence[str] | None) -> Decision | None:
    """The operating point a config's ``task`` section sets; ``None`` for argmax answers.

    Args:
        task: a classification ``task`` section (``threshold``, ``positive_class``).
        classes: ``data.classes`` of the resolved config.

    Raises:
        ConfigError: a target threshold that was never chosen (a config that has not been trained).

    Example:
        >>> decision_of(bundle.config.task, bundle.config.data.classes)
        Decision(positive=1, threshold=0.372)
    """
    t: ThresholdConfig | None = getattr(task, "threshold", None)
    if t is None:
        return None
    positive = positive_index(classes or [], getattr(task, "positive_class", None))
    if t.value is not None:
        return Decision(positive, t.value)
    if t.chosen is None:
        raise ConfigError(
            f"task.threshold asks for {t.describe()}, but no threshold has been chosen: "
            f"task.threshold.chosen is unset. Expected the config of a trained bundle, where kiln train "
            f"chooses it on the val split. Fix: use the bundle's config, or give a fixed threshold "
            f"(task.threshold: {{value: 0.5}})."
        )
    return Decision(positive, t.chosen)


def scoring_decision(task: Any, classes: Sequence[str] | None) -> Decision | None:
    """The operating point to score answers at: :func:`decision_of`'s, or ``None`` (argmax) while a target
    threshold is still to be chosen, as during training, whose val split chooses it at the end.

    Example:
        >>> scoring_decision(bundle.config.task, bundle.config.data.classes)  # a trained bundle's
        Decision(positive=1, threshold=0.372)
    """
    t: ThresholdConfig | None = getattr(task, "threshold", None)
    if t is None or (t.value is None and t.chosen is None):
        return None
    return decision_of(task, classes)


@dataclass(frozen=True)
class ThresholdChoice:
    """What :func:`choose_threshold` found on the val split (``bundle.json``'s ``calibration.threshold``)."""

    chosen: float
    target: str  # recall, precision, specificity or value
    goal: float
    met: bool  # False: the target is out of reach on val; ``chosen`` comes closest
    positives: int
    negatives: int
    recall: float  # on val, at ``chosen``; nan where undefined
    specificity: float
    precision: float

    def as_dict(self) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


def choose_threshold(
    scores: torch.Tensor, positive: torch.Tensor, threshold: ThresholdConfig
) -> ThresholdChoice:
    """Choose the threshold on ``p(positive)`` that meets ``threshold``'s target on these (val) items.

    recall: the largest threshold whose recall >= the target (the fewest false positives that keep it);
    it is always met. precision, specificity: the smallest threshold that meets the target (the most
    recall). Out of reach (precision, or specificity when the top score is a negative's): the threshold
    with the highest value of it, ``met=False``. A fixed ``value`` is measured, not chosen.

    "Largest" and "smallest" are up to the gap between two val scores: every threshold between a val score
    and the next lower one answers val alike, and the chosen one lies halfway (above 0 for the lowest).

    Args:
        scores: ``(N,)`` p(positive) of the val items.
        positive: ``(N,)`` bool, True where the item is of the positive class.
        threshold: the target.

    Raises:
        DataError: no items; a recall or precision target without a positive item; a specificity target
            without a negative one.

    Example:
        >>> choose_threshold(torch.tensor([0.9, 0.6, 0.4, 0.2]), torch.tensor([1, 1, 0, 0]).bool(),
        ...                  ThresholdConfig(recall=1.0)).chosen  # between 0.6 (the boundary) and 0.4
        0.5
    """
    scores, positive = scores.detach().double().cpu(), positive.detach().bool().cpu()
    name, goal = threshold.target
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    _check_split(name, goal, n_pos, n_neg)
    if name == "value":
        return _measured(goal, name, goal, True, scores, positive)
    cand = torch.unique(scores).flip(0)  # (M,) candidate thresholds, highest first
    order = scores.argsort(descending=True)
    # Items with a score >= cand[j]: the cumulative counts at the last item of each distinct score.
    last = torch.searchsorted(-scores[order], -cand, right=True) - 1  # (M,)
    tp = positive[order].long().cumsum(0)[last].double()
    fp = (~positive[order]).long().cumsum(0)[last].double()
    value = {
        "recall": tp / max(n_pos, 1),
        "specificity": 1 - fp / max(n_neg, 1),
        "precision": tp / (tp + fp),
    }[name]
    ok = (value >= goal - 1e-12).nonzero().squeeze(1)
    met = len(ok) > 0
    if met:  # recall rises as the threshold falls: its first; the others: the lowest that meets
        j = int(ok[0] if name == "recall" else ok[-1])
    else:
        j = int((value == value.max()).nonzero().squeeze(1)[-1])
    # Any threshold in (the next lower score, cand[j]] gives the same val answers. Halfway, so that the
    # boundary item does not flip when its score is recomputed a few bits off (another batch size, memory
    # layout or ONNX Runtime).
    lower = float(cand[j + 1]) if j + 1 < len(cand) else 0.0
    return _measured((float(cand[j]) + lower) / 2, name, goal, met, scores, positive)


def _check_split(name: str, goal: float, n_pos: int, n_neg: int) -> None:
    if n_pos + n_neg == 0:
        raise DataError(
            "The val split is empty, so no threshold can be chosen for task.threshold. Expected val items: "
            "raise data.split.val, or give a fixed threshold (task.threshold: {value: 0.5})."
        )
    lacking = "positive" if name in ("recall", "precision") and n_pos == 0 else None
    lacking = "negative" if name == "specificity" and n_neg == 0 else lacking
    if lacking:
        raise DataError(
            f"task.threshold asks for {name} >= {goal:g} on the val split, but the val split has no "
            f"{lacking} items ({n_pos + n_neg} in all), so {name} is undefined there. Expected at least "
            f"one (a few dozen for a steady threshold). Fix: raise data.split.val, give the data more "
            f"items of that class, or give a fixed threshold (task.threshold: {{value: 0.5}})."
        )


def _measured(
    t: float, name: str, goal: float, met: bool, scores: torch.Tensor, positive: torch.Tensor
) -> ThresholdChoice:
    hit = scores >= t
    tp, fp = int((hit & positive).sum()), int((hit & ~positive).sum())
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return ThresholdChoice(
        chosen=t,
        target=name,
        goal=goal,
        met=met,
        positives=n_pos,
        negatives=n_neg,
        recall=tp / n_pos if n_pos else math.nan,
        specificity=1 - fp / n_neg if n_neg else math.nan,
        precision=tp / (tp + fp) if tp + fp else math.nan,
    )


def check_threshold_split(task: Any, classes: Sequence[str], val_labels: torch.Tensor) -> None:
    """Before training: refuse a ``task.threshold`` target that the val split cannot measure.

    The threshold is chosen on val after training; a val split without the class the target needs would
    fail only then, so ``prepare`` calls this first.

    Raises:
        DataError: see :func:`choose_threshold`.
    """
    t: ThresholdConfig | None = getattr(task, "threshold", None)
    if t is None or t.value is not None:
        return
    pos = positive_index(classes, getattr(task, "positive_class", None))
    n_pos = int((val_labels == pos).sum())
    _check_split(*t.target, n_pos, len(val_labels) - n_pos)
