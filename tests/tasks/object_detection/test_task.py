"""The detection task's config resolution: what a bundle needs to rebuild the model it was trained as."""

from __future__ import annotations

from pathlib import Path

from torchkiln.artifacts.bundle import without_pretrained
from torchkiln.tasks.base import get_task, validate


def test_a_bundle_rebuilt_without_the_pretrained_weights_normalizes_as_training_did(tmp_path: Path) -> None:
    task = get_task("object-detection")
    raw = task.example_config(tmp_path)
    raw["model"] = {"name": "fasterrcnn_lite0_fpn", "pretrained": True}
    cfg, _ = task.prepare(validate(raw))
    assert (cfg.data.mean, cfg.data.std) == ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # the packaged weights'
    trained = task.build_model(cfg).net.transform
    rebuilt = task.build_model(without_pretrained(cfg)).net.transform  # how load_bundle rebuilds it
    assert (rebuilt.image_mean, rebuilt.image_std) == (trained.image_mean, trained.image_std)


def test_a_model_from_scratch_normalizes_with_imagenet_statistics(tmp_path: Path) -> None:
    task = get_task("object-detection")
    cfg, _ = task.prepare(validate(task.example_config(tmp_path)))
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.229, 0.224, 0.225]
