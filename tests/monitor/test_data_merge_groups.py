"""kiln retrain's merge of image data with patients (data.group_pattern, data.group_column): the original
images keep training's patient-level split, merged.csv carries each item's group, the new data is split by
patient, and the challenger's prepare reads the manifest with no patient in both the fresh test set and
train. (Beside test_data_merge.py, which holds the merge's other tests, to keep each file short.)"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from torchkiln.components.images import scan_folder
from torchkiln.components.splits import SPLITS, make_splits
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError
from torchkiln.monitor.data_merge import MergedData, feedback_items, merge, scan_source
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.logged import LoggedInput
from torchkiln.monitor.retrain import _challenger_config
from torchkiln.tasks.base import get_task, load_config
from torchkiln.tasks.image_classification.data import load_image_data
from torchkiln.tasks.image_classification.example import draw

from ..tasks.image_classification.chest_files import file_name

PATTERN = r"(person\d+|IM-\d+)"
CLASSES = ["NORMAL", "PNEUMONIA"]
ORIGINAL = {"NORMAL": range(100, 112), "PNEUMONIA": range(1, 13)}  # 12 patients per class


def png(cls: int, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(draw(cls, np.random.default_rng(seed), 16)).save(buf, format="PNG")
    return buf.getvalue()


def write_patients(
    root: Path, patients: dict[str, Iterable[int]], *, per_patient: int = 3, seed: int = 0
) -> Path:
    """``root/<class>/`` with ``per_patient`` PNGs of each patient, named as in Kaggle's chest_xray."""
    for cls, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for patient in patients.get(name, ()):
            for n in range(1, per_patient + 1):
                (root / name / file_name(cls, patient, n, ".png")).write_bytes(
                    png(cls, seed + 1000 * patient + n)
                )
    return root


def chest_cfg(data_path: Path, make_config: Any, runs: Path, **data: Any) -> RunConfig:
    cfg = make_config(data_path, runs)
    cfg["data"] |= {"group_pattern": PATTERN, "split": {"val": 0.2, "test": 0.2}} | data
    return load_config(cfg)


def manifest_rows(merged: MergedData) -> list[dict[str, str]]:
    with merged.manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def trained_split(cfg: RunConfig) -> dict[Path, str]:
    """file -> the split training gives it (load_image_data, as kiln train's prepare calls it)."""
    data = load_image_data(cfg.data, seed=cfg.seed)  # type: ignore[arg-type]
    return {p.resolve(): s for s in SPLITS for p in data.splits[s].paths or ()}


def patient(path: str | Path) -> str:
    return re.search(PATTERN, Path(path).name).group(1)  # type: ignore[union-attr]


def splits_of_groups(rows: Iterable[dict[str, str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rows:
        out.setdefault(r["group"], set()).add(r["split"])
    return out


def test_the_original_images_keep_the_patient_level_split_that_training_gave_them(
    tmp_path: Path, make_config: Any
) -> None:
    folder = write_patients(tmp_path / "orig", ORIGINAL)
    cfg = chest_cfg(folder, make_config, tmp_path / "runs")
    trained = trained_split(cfg)
    # Without the patients, make_splits gives another split: this test sees a merge that forgets them.
    files = scan_folder(folder)
    ungrouped = make_splits(cfg.data, np.array([CLASSES.index(c) for c in files.labels]), None, cfg.seed)  # type: ignore[arg-type]
    assert [trained[p.resolve()] for p in files.paths] != list(ungrouped)
    new = write_patients(tmp_path / "new", {"NORMAL": range(300, 306), "PNEUMONIA": range(50, 56)}, seed=1)

    merged = merge(cfg, {"new": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)

    rows = manifest_rows(merged)
    assert list(rows[0]) == ["path", "label", "split", "group"]
    original = [r for r in rows if Path(r["path"]) in trained]
    assert {Path(r["path"]): r["split"] for r in original} == {
        p: s for p, s in trained.items() if s != "test"
    }
    assert merged.counts["original"] == dict(Counter(trained.values()))
    assert all(r["group"] == patient(r["path"]) for r in rows)  # every name here has its patient
    assert all(len(s) == 1 for s in splits_of_groups(rows).values())


@pytest.mark.parametrize("pattern", [PATTERN, None])
def test_unreadable_original_files_leave_before_the_split_as_in_training(
    tmp_path: Path, make_config: Any, pattern: str | None
) -> None:
    folder = write_patients(tmp_path / "orig", ORIGINAL)
    (folder / "NORMAL" / "IM-0100-0009.png").write_bytes(b"not a PNG")  # data.on_error: skip drops it
    cfg = chest_cfg(folder, make_config, tmp_path / "runs", on_error="skip", group_pattern=pattern)
    trained = trained_split(cfg)
    assert len(trained) == 72
    new = write_patients(tmp_path / "new", {"NORMAL": [300, 301], "PNEUMONIA": [50, 51]}, seed=1)
    merged = merge(cfg, {"new": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)
    original = {
        Path(r["path"]): r["split"] for r in manifest_rows(merged) if Path(r["path"]).parent.parent == folder
    }
    assert original == {p: s for p, s in trained.items() if s != "test"}


def test_new_images_are_split_by_patient_and_the_challenger_reads_the_groups(
    tmp_path: Path, make_config: Any
) -> None:
    cfg = chest_cfg(write_patients(tmp_path / "orig", ORIGINAL), make_config, tmp_path / "runs")
    trained = trained_split(cfg)
    known = {patient(p): s for p, s in trained.items()}  # the original patients -> train, val or test
    new = write_patients(tmp_path / "new", {"NORMAL": range(300, 310), "PNEUMONIA": range(50, 60)}, seed=1)
    # A new image of each original patient, and one with no patient in its name.
    for g in known:
        cls, number = (0, int(g[3:])) if g.startswith("IM-") else (1, int(g[6:]))
        (new / CLASSES[cls] / file_name(cls, number, 7, ".png")).write_bytes(png(cls, number))
    (new / "NORMAL" / "scan.png").write_bytes(png(0, 9))

    merged = merge(cfg, {"new": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)

    assert merged.data_overrides == {
        "path": str(merged.manifest),
        "format": "csv",
        "path_column": "path",
        "label_column": "label",
        "split_column": "split",
        "group_column": "group",
        "group_pattern": None,
    }
    rows = manifest_rows(merged)
    fresh = [r for r in rows if Path(r["path"]).is_relative_to(new.resolve())]
    assert len(fresh) == 20 * 3 + 24 + 1 and sum(merged.counts["new"].values()) == len(fresh)
    assert all(len(s) == 1 for s in splits_of_groups(rows).values())  # no patient in two splits
    # A patient the champion trained (or chose its model) on stays in that split, never the fresh test set.
    joined = {r["group"]: r["split"] for r in fresh if known.get(r["group"]) in ("train", "val")}
    assert joined == {g: s for g, s in known.items() if s != "test"}
    scan = next(r for r in fresh if r["path"].endswith("scan.png"))
    assert scan["group"] == hashlib.sha256((new / "NORMAL" / "scan.png").read_bytes()).hexdigest()
    assert {lab for _, lab in merged.test_items} == set(CLASSES)
    assert merged.test_items == [(Path(r["path"]), r["label"]) for r in fresh if r["split"] == "test"]

    # The challenger's prepare takes the manifest's groups (no pattern) and keeps the fresh test set.
    ccfg = _challenger_config(cfg, tmp_path, merged, RetrainSettings(from_scratch=True), CLASSES)
    assert (ccfg.data.group_column, ccfg.data.group_pattern) == ("group", None)
    _, cdata = get_task("image-classification").prepare(ccfg)
    assert list(cdata.splits["test"].paths) == [p for p, _ in merged.test_items]
    group = {Path(r["path"]): r["group"] for r in rows}
    test_groups = {group[p] for p in cdata.splits["test"].paths}
    assert not test_groups & {group[p] for s in ("train", "val") for p in cdata.splits[s].paths}


def test_feedback_images_are_each_their_own_group_and_the_challenger_accepts_their_names(
    tmp_path: Path, make_config: Any
) -> None:
    cfg = chest_cfg(write_patients(tmp_path / "orig", ORIGINAL), make_config, tmp_path / "runs")
    logged = [LoggedInput(f"r{i}", 0, "1", png(i % 2, 500 + i), None, CLASSES[i % 2]) for i in range(12)]
    out = tmp_path / "out"

    merged = merge(
        cfg, {"feedback": feedback_items(logged, out / "feedback")}, out, RetrainSettings(), CLASSES
    )

    fed = [r for r in manifest_rows(merged) if Path(r["path"]).is_relative_to((out / "feedback").resolve())]
    assert len(fed) == 12 and not any(re.search(PATTERN, Path(r["path"]).name) for r in fed)
    assert [r["group"] for r in fed] == [hashlib.sha256(x.raw).hexdigest() for x in logged]
    assert sum(merged.counts["feedback"].values()) == 12 and merged.counts["feedback"]["test"] > 0
    ccfg = _challenger_config(cfg, tmp_path, merged, RetrainSettings(from_scratch=True), CLASSES)
    _, cdata = get_task("image-classification").prepare(ccfg)  # the pattern would refuse these names
    assert list(cdata.splits["test"].paths) == [p for p, _ in merged.test_items]


def write_manifest(path: Path, header: list[str], rows: Iterable[tuple[str, ...]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_a_manifests_patient_column_groups_the_original_and_the_new_manifests_that_have_it(
    tmp_path: Path, make_config: Any
) -> None:
    folder = write_patients(tmp_path / "orig", ORIGINAL)
    files = sorted(folder.rglob("*.png"))
    orig = write_manifest(
        tmp_path / "orig.csv",
        ["path", "label", "patient"],
        [(str(p), p.parent.name, patient(p)) for p in files],
    )
    cfg = chest_cfg(orig, make_config, tmp_path / "runs", group_pattern=None, group_column="patient")
    trained = trained_split(cfg)
    new = write_patients(tmp_path / "new", {"NORMAL": range(300, 308), "PNEUMONIA": range(50, 58)}, seed=1)
    named = [(str(p), p.parent.name, f"case-{patient(p)}") for p in sorted(new.rglob("*.png"))]
    unnamed = sorted(
        write_patients(
            tmp_path / "more", {"NORMAL": range(400, 404), "PNEUMONIA": range(70, 74)}, seed=2
        ).rglob("*.png")
    )
    # a.csv has each patient's first image; b.csv the others of every other patient, so its patients
    # are not a.csv's, and a split of its own would put some in another split than a.csv's.
    first = [r for r in named if r[0].endswith("1.png")]
    later = [r for r in named if r not in first and int(re.sub(r"\D", "", r[2])) % 2]
    sources = {
        "a": write_manifest(tmp_path / "a.csv", ["path", "label", "patient"], first),
        "b": write_manifest(tmp_path / "b.csv", ["path", "label", "patient"], later),
        "c": write_manifest(
            tmp_path / "c.csv", ["path", "label"], [(str(p), p.parent.name) for p in unnamed]
        ),
    }

    merged = merge(
        cfg, {k: scan_source(v) for k, v in sources.items()}, tmp_path / "out", RetrainSettings(), CLASSES
    )

    rows = manifest_rows(merged)
    original = [r for r in rows if Path(r["path"]) in trained]
    assert {Path(r["path"]): r["split"] for r in original} == {
        p: s for p, s in trained.items() if s != "test"
    }
    assert all(r["group"] == patient(r["path"]) for r in original)
    n_orig = len(original)
    ab, c = rows[n_orig : n_orig + len(first + later)], rows[n_orig + len(first + later) :]
    assert [r["group"] for r in ab] == [g for _, _, g in first + later] and len(later) == 16
    assert all(len(s) == 1 for s in splits_of_groups(ab).values())  # b.csv's images join a.csv's patient
    assert {r["split"] for r in ab} == {"train", "val", "test"}
    assert [r["group"] for r in c] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in unnamed]
    ccfg = _challenger_config(cfg, tmp_path, merged, RetrainSettings(from_scratch=True), CLASSES)
    _, cdata = get_task("image-classification").prepare(ccfg)
    assert len(cdata.splits["test"]) == len(merged.test_items) > 0


def test_an_original_file_name_without_a_patient_is_refused_with_the_fix(
    tmp_path: Path, make_config: Any
) -> None:
    folder = write_patients(tmp_path / "orig", ORIGINAL)
    (folder / "NORMAL" / "scan.png").write_bytes(png(0, 1))
    cfg = chest_cfg(folder, make_config, tmp_path / "runs")
    new = write_patients(tmp_path / "new", {"NORMAL": [300], "PNEUMONIA": [50]})
    with pytest.raises(DataError) as err:
        merge(cfg, {"new": scan_source(new)}, tmp_path / "out", RetrainSettings(), CLASSES)
    assert str(err.value) == (
        f"The original data '{folder}': data.group_pattern '{PATTERN}' finds no group in the file name "
        f"'scan.png' (1 of 73 names); expected its first group to capture the patient id in every file "
        f"name. Fix: widen the pattern (Kaggle's chest_xray: '(person\\d+|IM-\\d+)'), or give a CSV manifest "
        f"with a data.group_column."
    )
