"""Label noise: a 2-fold fit of the task's own model flags planted wrong labels (and only few right ones);
clean labels give no warning; a task that cannot refit on part of train says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from torchkiln.doctor import DoctorOptions

from .planted import clean_splits, examine, image_config, of, write_npz

FLIPPED = np.arange(0, 120, 10)  # 12 of the 120 training labels (10%), 4 of each class


def config(tmp_path: Path, *, flip: bool) -> dict:
    splits = clean_splits()
    x, y = splits["train"]
    if flip:
        y = y.copy()
        y[FLIPPED] = (y[FLIPPED] + 1) % 3
    splits["train"] = (x, y)
    raw = image_config(write_npz(tmp_path / "shapes.npz", splits), tmp_path, seed=0)
    raw["train"]["epochs"] = 10
    return raw


@pytest.mark.parametrize("flip", [True, False])
def test_planted_wrong_labels_are_flagged_and_clean_ones_are_not(tmp_path: Path, flip: bool) -> None:
    options = DoctorOptions(noise_epochs=10)
    report = examine(config(tmp_path, flip=flip), cheap_only=True, opt_in=("label-noise",), options=options)
    (found,) = of(report, "label-noise")
    if not flip:
        assert found.severity == "info"
        assert found.message.startswith(
            "No training label is confidently contradicted (2 folds of 10 epoch(s), "
        )
        return
    flagged = {int(item.split(":")[0].removeprefix("#")) for item in found.items}
    assert found.severity == "warning"
    assert flagged <= set(FLIPPED.tolist()) and len(flagged) >= 10, sorted(flagged)
    assert found.message.startswith(f"{len(flagged)} of 120 (")


def test_label_noise_runs_only_when_asked_for(tmp_path: Path) -> None:
    assert of(examine(config(tmp_path, flip=True)), "label-noise") == []
