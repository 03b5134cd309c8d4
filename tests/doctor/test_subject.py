"""What the checks examine: image files read on demand (all of them in kiln doctor, a bounded number in the
quick pass, which says what it left unread), and the loader's warnings kept as findings, not printed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchkiln.components.doctor_data import FileImages
from torchkiln.doctor import run_checks
from torchkiln.doctor import subject as subject_module
from torchkiln.doctor.subject import DoctorOptions, examine
from torchkiln.tasks.base import get_task, load_config

from ..conftest import write_image_folder
from .planted import examine as report_on
from .planted import of


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and test/ folders of PNGs, read lazily (data.cache: none), one train file copied into test."""
    root = tmp_path / "images"
    write_image_folder(root / "train", per_class=20, seed=0)
    write_image_folder(root / "test", per_class=4, seed=1)
    shutil.copy(root / "train" / "dot" / "03.png", root / "test" / "dot" / "copy.png")
    return root


def config(folder: Path) -> dict:
    return {
        "task": "image-classification",
        "data": {"path": str(folder), "cache": "none", "num_workers": 0, "split": {"val": 0.2}},
        "model": {"name": "cnn", "args": {"channels": [8, 16], "hidden": 0}},
        "train": {"device": "cpu"},
        "seed": 0,
    }


def test_image_files_are_read_on_demand_and_named_by_path(folder: Path) -> None:
    subject = examine(load_config(config(folder)), DoctorOptions())
    test = subject.items("test")
    assert test is not None and isinstance(test.images, FileImages)
    (found,) = of(report_on(config(folder)), "duplicates")
    assert found.count == 1
    assert found.items == (
        f"test '{folder / 'test' / 'dot' / 'copy.png'}' ~ train '{folder / 'train' / 'dot' / '03.png'}'",
    )


def test_the_quick_pass_reads_a_bounded_number_of_files_and_says_which_splits_it_left(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subject_module, "QUICK_FILES", 20)  # train has 48 files, test 13
    report = report_on(config(folder), cheap_only=True)
    (unread,) = [f for f in report.findings if "not read in the quick pass" in f.message]
    assert unread.severity == "info" and unread.count == 48
    assert of(report, "duplicates") == [unread]  # test was read, but train, its reference, was not


def test_the_loaders_warnings_become_findings(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=1)  # a class of 1 training image each
    raw = config(root) | {"data": {"path": str(root), "num_workers": 0}}
    found = of(report_on(raw, cheap_only=True), "data-loads")
    assert found and {f.severity for f in found} == {"warning"}
    assert all(f.message.startswith(f"Data '{root}': ") for f in found)


def test_data_already_loaded_is_not_loaded_again(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(config(folder))
    task = get_task(cfg.task.kind)
    prepared = task.prepare(cfg)
    before = [(f.check, f.message) for f in run_checks(cfg).findings]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("prepare ran again")

    monkeypatch.setattr(type(task), "prepare", refuse)
    assert [(f.check, f.message) for f in run_checks(cfg, prepared=prepared).findings] == before
