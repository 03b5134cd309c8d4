"""A two-class classifier's operating point: the threshold chosen for a target, its config, its answers."""

from __future__ import annotations

import pytest
import torch

from torchkiln.components.classification import MulticlassMetrics, class_signals, top_k_answers
from torchkiln.components.classification_threshold import (
    Decision,
    ThresholdConfig,
    choose_threshold,
    decision_of,
    scoring_decision,
)
from torchkiln.core.config_io import RUN_CONFIG_FIX
from torchkiln.core.errors import ConfigError, DataError
from torchkiln.tasks.base import load_config

# Ten val items, five positive. Highest score first: the counts at each threshold are easy to read off.
SCORES = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.4, 0.3, 0.2, 0.1])
POSITIVE = torch.tensor([1, 1, 0, 1, 1, 0, 1, 0, 0, 0]).bool()


def choose(**target: float) -> tuple[float, bool, float, float, float]:
    c = choose_threshold(SCORES, POSITIVE, ThresholdConfig(**target))
    return c.chosen, c.met, c.recall, c.specificity, c.precision


def test_a_recall_target_gets_the_largest_threshold_that_meets_it() -> None:
    # Recall 0.8 needs 4 of the 5 positives: first reached at 0.6 (0.95, 0.9, 0.7, 0.6), with one negative.
    # Up to 0.6 and down to the next score, 0.55, val is answered alike: the threshold lies halfway.
    assert choose(recall=0.8) == pytest.approx((0.575, True, 0.8, 0.8, 0.8))
    assert choose(recall=1.0) == pytest.approx((0.35, True, 1.0, 0.6, 5 / 7))  # all five, two negatives
    assert choose(recall=0.05) == pytest.approx((0.925, True, 0.2, 1.0, 1.0))


def test_specificity_and_precision_targets_get_the_smallest_threshold_that_meets_them() -> None:
    assert choose(specificity=0.8) == pytest.approx((0.575, True, 0.8, 0.8, 0.8))  # one false positive
    assert choose(specificity=1.0) == pytest.approx((0.85, True, 0.4, 1.0, 1.0))  # none: above 0.8
    # Precision at 0.7 is 3/4 and at 0.6 is 4/5: 0.6 is the lowest val score that keeps 0.8.
    assert choose(precision=0.8) == pytest.approx((0.575, True, 0.8, 0.8, 0.8))
    assert choose(precision=1.0) == pytest.approx((0.85, True, 0.4, 1.0, 1.0))
    lowest = choose_threshold(
        torch.tensor([0.9, 0.4]), torch.tensor([True, True]), ThresholdConfig(recall=1.0)
    )
    assert lowest.chosen == pytest.approx(0.2)  # below the lowest score: halfway to 0


def test_a_fixed_value_is_measured_and_tied_scores_move_together() -> None:
    assert choose(value=0.5) == pytest.approx((0.5, True, 0.8, 0.6, 4 / 6))
    tied = choose_threshold(
        torch.tensor([0.7, 0.7, 0.7, 0.2]), torch.tensor([1, 0, 1, 0]).bool(), ThresholdConfig(recall=0.5)
    )
    assert (tied.chosen, tied.recall, tied.specificity) == pytest.approx((0.45, 1.0, 0.5))


def test_a_target_out_of_reach_takes_the_closest_threshold_and_says_so() -> None:
    # The top score is a negative's: precision is 0, 1/2, 1/3 from the top; 0.9 is out of reach.
    c = choose_threshold(
        torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0, 1, 0]).bool(), ThresholdConfig(precision=0.9)
    )
    assert (c.chosen, c.met, c.precision) == pytest.approx((0.55, False, 0.5))
    assert c.as_dict()["met"] is False


def test_a_val_split_without_the_class_the_target_needs_is_refused() -> None:
    negatives = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(DataError) as err:
        choose_threshold(torch.tensor([0.9, 0.5, 0.3, 0.1]), negatives, ThresholdConfig(recall=0.95))
    assert str(err.value) == (
        "task.threshold asks for recall >= 0.95 on the val split, but the val split has no positive items "
        "(4 in all), so recall is undefined there. Expected at least one (a few dozen for a steady "
        "threshold). Fix: raise data.split.val, give the data more items of that class, or give a fixed "
        "threshold (task.threshold: {value: 0.5})."
    )
    with pytest.raises(DataError, match="the val split has no negative items"):
        choose_threshold(torch.tensor([0.9]), torch.tensor([True]), ThresholdConfig(specificity=0.9))
    # A fixed threshold needs no val items of either class.
    assert choose_threshold(torch.tensor([0.9]), torch.tensor([True]), ThresholdConfig(value=0.3)).met


def raw_config(task: dict, classes: list[str]) -> dict:
    return {"task": {"kind": "image-classification", **task}, "data": {"path": "xrays", "classes": classes}}


def invalid(line: str) -> str:
    return f"The run config is invalid (1 problem(s)):\n  - {line}\n{RUN_CONFIG_FIX}"


@pytest.mark.parametrize("kind", ["image-classification", "text-classification"])
def test_bad_threshold_settings_are_config_errors(kind: str) -> None:
    def error(task: dict, classes: list[str]) -> str:
        raw = raw_config(task, classes)
        raw["task"]["kind"] = kind
        with pytest.raises(ConfigError) as err:
            load_config(raw)
        return str(err.value)

    assert error({"threshold": {"recall": 0.95}}, ["a", "b", "c"]) == invalid(
        "'(top level)': task.threshold is for two-class tasks, but there are 3 classes (a, b, c). Remove "
        "task.threshold: a task of more classes answers its most likely class."
    )
    assert error({"positive_class": "a"}, ["a", "b", "c"]) == invalid(
        "'(top level)': task.positive_class is for two-class tasks, but there are 3 classes (a, b, c). "
        "Remove task.positive_class: a task of more classes answers its most likely class."
    )
    assert error({"positive_class": "pneumonia", "threshold": 0.3}, ["NORMAL", "PNEUMONIA"]) == invalid(
        "'(top level)': task.positive_class 'pneumonia' is not one of the classes (NORMAL, PNEUMONIA). Did "
        "you mean 'PNEUMONIA'? Set it to one of them."
    )
    assert error({"threshold": {"recall": 1.5}}, ["a", "b"]) == invalid(
        "'task.threshold.recall': Input should be less than or equal to 1. Got 1.5."
    )
    assert error({"threshold": {"recall": 0}}, ["a", "b"]) == invalid(
        "'task.threshold.recall': Input should be greater than 0. Got 0."
    )
    assert error({"threshold": {"recall": 0.9, "value": 0.3}}, ["a", "b"]) == invalid(
        "'task.threshold': task.threshold needs exactly one of recall, precision, specificity or value; got "
        "recall and value. Write e.g. {recall: 0.95} or {value: 0.3}."
    )


def test_a_good_config_loads_and_a_bare_number_is_a_fixed_threshold() -> None:
    cfg = load_config(raw_config({"positive_class": "NORMAL", "threshold": 0.3}, ["NORMAL", "PNEUMONIA"]))
    assert cfg.task.threshold.value == 0.3 and cfg.task.threshold.describe() == "fixed"
    assert decision_of(cfg.task, cfg.data.classes) == Decision(positive=0, threshold=0.3)
    assert decision_of(load_config(raw_config({}, ["a", "b"])).task, ["a", "b"]) is None  # argmax


def test_a_target_that_was_never_chosen_cannot_answer() -> None:
    cfg = load_config(raw_config({"threshold": {"recall": 0.95}}, ["NORMAL", "PNEUMONIA"]))
    with pytest.raises(ConfigError) as err:
        decision_of(cfg.task, cfg.data.classes)
    assert str(err.value) == (
        "task.threshold asks for recall >= 0.95 on val, but no threshold has been chosen: "
        "task.threshold.chosen is unset. Expected the config of a trained bundle, where kiln train chooses "
        "it on the val split. Fix: use the bundle's config, or give a fixed threshold (task.threshold: "
        "{value: 0.5})."
    )
    chosen = cfg.task.threshold.model_copy(update={"chosen": 0.2})
    assert decision_of(cfg.task.model_copy(update={"threshold": chosen}), cfg.data.classes) == Decision(
        1, 0.2
    )


def logits_for(p_positive: list[float]) -> torch.Tensor:
    """Two-class logits whose softmax gives these p(class 1)."""
    p = torch.tensor(p_positive, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def test_answers_take_the_label_at_the_threshold_and_keep_the_scores() -> None:
    outputs = logits_for([0.31, 0.29, 0.9])
    scores = outputs.softmax(dim=1)[:, 1].tolist()
    answers = top_k_answers(["NORMAL", "PNEUMONIA"], outputs, 2, Decision(positive=1, threshold=0.3))
    assert [a["label"] for a in answers] == ["PNEUMONIA", "NORMAL", "PNEUMONIA"]
    assert answers[0]["score"] == pytest.approx(scores[0]) and answers[1]["score"] == pytest.approx(
        1 - scores[1]
    )
    assert answers[0]["top_k"][0] == {
        "label": "NORMAL",
        "score": pytest.approx(1 - scores[0]),
    }  # probabilities
    assert all(a["operating_point"] == {"positive": "PNEUMONIA", "threshold": 0.3} for a in answers)
    plain = top_k_answers(["NORMAL", "PNEUMONIA"], outputs, 2)  # argmax, as before
    assert [a["label"] for a in plain] == [
        "NORMAL",
        "NORMAL",
        "PNEUMONIA",
    ] and "operating_point" not in plain[0]
    # The drift signals count the labels the server answers.
    signals = class_signals(outputs, Decision(positive=1, threshold=0.3))
    assert signals["predicted"].tolist() == [1, 0, 1]
    assert signals["confidence"].tolist() == pytest.approx([scores[0], 1 - scores[1], scores[2]])


def test_a_score_exactly_at_the_threshold_is_positive() -> None:
    probs = torch.tensor([[0.6, 0.4], [0.5999, 0.4001], [0.6001, 0.3999]])
    threshold = float(probs[0, 1])  # a chosen threshold is a val item's own float32 score
    assert Decision(1, threshold).predict(probs).tolist() == [1, 1, 0]
    assert Decision(0, 0.6).predict(probs).tolist() == [0, 1, 0]  # p(class 0) >= 0.6


def test_accuracy_is_scored_at_the_operating_point_once_it_is_chosen() -> None:
    # The export gate and the engine score through the task's metrics: a trained bundle with a threshold
    # is judged on the labels it answers, not on argmax. While training, the threshold is still to be
    # chosen (on val, at the end), so the epochs are scored by argmax.
    outputs, targets = logits_for([0.31, 0.29, 0.9, 0.2]), torch.tensor([1, 0, 1, 1])
    cfg = load_config(raw_config({"threshold": {"recall": 0.95}}, ["NORMAL", "PNEUMONIA"]))
    assert scoring_decision(cfg.task, cfg.data.classes) is None
    chosen = cfg.task.model_copy(update={"threshold": cfg.task.threshold.model_copy(update={"chosen": 0.3})})
    decision = scoring_decision(chosen, cfg.data.classes)
    assert decision == Decision(positive=1, threshold=0.3)
    for metric, expected in ((MulticlassMetrics(), 0.5), (MulticlassMetrics(decision), 0.75)):
        metric.update(outputs, targets)  # argmax: 0, 0, 1, 0; at 0.3: 1, 0, 1, 0
        assert metric.compute() == {"accuracy": expected}
