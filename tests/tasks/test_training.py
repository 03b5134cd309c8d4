"""What the end of a run says about the epochs after its best one (tasks/training.py)."""

from __future__ import annotations

from torchkiln.tasks.training import late_epochs_note


def test_late_epochs_are_counted_with_their_time_and_the_fix() -> None:
    trained = {"epochs": 10, "best_epoch": 3, "seconds": 126.7, "stopped": ""}
    assert late_epochs_note(trained, "val/accuracy", None) == (
        "the best epoch was 4 of 10: the 6 after it (about 60% of the training, about 76 s) did not improve "
        "val/accuracy. The bundle keeps the best epoch; set train.early_stopping.patience (e.g. 2) to stop "
        "once val/accuracy stops improving."
    )


def test_no_note_when_early_stopping_is_on_or_the_best_epoch_is_late() -> None:
    trained = {"epochs": 10, "best_epoch": 3, "seconds": 100.0, "stopped": ""}
    assert late_epochs_note(trained, "val/loss", 2) is None  # patience on
    stopped = trained | {"stopped": "no val/loss improvement in 2 epochs"}
    assert late_epochs_note(stopped, "val/loss", None) is None
    assert late_epochs_note(trained | {"best_epoch": 8}, "val/loss", None) is None  # 1 after the best
    # 4 after the best, under a quarter of 20 epochs:
    assert late_epochs_note(trained | {"epochs": 20, "best_epoch": 15}, "val/loss", None) is None
    assert late_epochs_note({"epochs": 3, "best_epoch": 0, "seconds": 9.0}, "val/loss", None) is not None
