"""From data.path to split, decoded image data: resolution of classes, size, channels and statistics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.components.contrast import clahe
from torchkiln.components.images import to_model_input
from torchkiln.core.errors import DataError
from torchkiln.tasks.image_classification.config import ImageDataConfig
from torchkiln.tasks.image_classification.data import ImageData, load_image_data

from .chest_files import write_chest_xray, write_pneumoniamnist

CLASSES = ["dot", "hbar", "vbar"]


def load(path: Path, **settings: Any) -> ImageData:
    return load_image_data(ImageDataConfig(path=str(path), **settings), seed=0)


def split_sizes(data: ImageData) -> dict[str, int]:
    return {name: len(split) for name, split in data.splits.items()}


def train_stats(train_images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and sample std of ``(N, C, S, S)`` uint8 images scaled to [0, 1], by hand."""
    x = train_images.numpy().astype(np.float64) / 255
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3), ddof=1)


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"\x89PNG but then garbage, not an image")
    return path


def write_truncated(path: Path) -> Path:
    """A PNG whose header reads fine but whose pixel data stops half way."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- resolution ---------------------------------------------------------------------------------
def test_resolves_classes_size_and_channels(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder)
    assert data.classes == CLASSES
    assert (data.size, data.channels) == (16, 3)
    assert split_sizes(data) == {"train": 30, "val": 3, "test": 3}
    assert data.problems == []
    train = data.splits["train"]
    assert train.images is not None and train.images.dtype == torch.uint8
    assert train.images.shape == (30, 3, 16, 16)
    assert sorted(train.labels.bincount().tolist()) == [10, 10, 10]


def test_grayscale_pngs_give_one_channel(tmp_path: Path, make_image_folder) -> None:
    data = load(make_image_folder(tmp_path / "gray", mode="L", per_class=4))
    assert data.channels == 1
    assert data.splits["train"].images.shape[1:] == (1, 16, 16)
    assert len(data.mean) == len(data.std) == 1


def test_mixed_grayscale_and_rgb_give_three_channels(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / "mixed", mode="L", per_class=4)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(root / "dot" / "rgb.png")
    assert load(root).channels == 3


def test_config_size_and_channels_win(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder, image_size=8, channels=1)
    assert (data.size, data.channels) == (8, 1)
    assert data.splits["test"].images.shape[1:] == (1, 8, 8)


def test_mixed_sizes_use_the_model_default(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / "sizes", per_class=4)
    Image.new("RGB", (40, 20)).save(root / "dot" / "wide.png")
    data = load_image_data(ImageDataConfig(path=str(root)), seed=0, default_size=24)
    assert data.size == 24


def test_images_match_the_shared_preprocessing(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / "one", per_class=1, size=20)
    data = load(root, image_size=12, split={"val": 0.0, "test": 0.0})
    files = sorted(root.glob("*/*.png"))
    expected = torch.stack([to_model_input(f, size=12, channels=3) for f in files])
    assert torch.equal(data.splits["train"].images, expected)


# --- statistics: from train only ----------------------------------------------------------------
def test_stats_come_from_train_only(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", per_class=6)
    for split in ("val", "test"):
        for cls in CLASSES:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16), (255, 255, 255)).save(tmp_path / split / cls / "white.png")
    data = load(tmp_path)
    assert split_sizes(data) == {"train": 18, "val": 3, "test": 3}
    mean, std = train_stats(data.splits["train"].images)
    np.testing.assert_allclose(data.mean, mean, atol=1e-4)
    np.testing.assert_allclose(data.std, std, atol=1e-4)
    # The white val/test images would raise the mean a lot if they had been counted.
    everything = torch.cat([s.images for s in data.splits.values()])
    assert (train_stats(everything)[0] - mean > 0.05).all()


def test_stats_follow_a_generated_split(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder)
    mean, std = train_stats(data.splits["train"].images)
    np.testing.assert_allclose(data.mean, mean, atol=1e-4)
    np.testing.assert_allclose(data.std, std, atol=1e-4)


def test_config_stats_are_used_as_given(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    assert (data.mean, data.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


# --- bad data -----------------------------------------------------------------------------------
def test_corrupt_image_fails_with_the_file_and_the_fix(tiny_image_folder: Path) -> None:
    bad = write_corrupt(tiny_image_folder / "hbar" / "broken.png")
    with pytest.raises(DataError) as info:
        load(tiny_image_folder)
    msg = str(info.value)
    assert f"Image '{bad}' is corrupt or not an image" in msg
    assert "data.on_error: skip" in msg
    assert msg.endswith("(1 bad image(s) in all.)")


def test_truncated_image_fails_too(tiny_image_folder: Path) -> None:
    # The header reads fine, so this one fails in the full decode, still before any training.
    write_truncated(tiny_image_folder / "vbar" / "cut.png")
    with pytest.raises(DataError) as info:
        load(tiny_image_folder)
    msg = str(info.value)
    assert "is corrupt or not an image (OSError: image file is truncated" in msg
    assert "data.on_error: skip" in msg


def test_truncated_image_message_names_the_whole_path(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / ("long-folder-name-" * 5), per_class=3)
    bad = write_truncated(root / "vbar" / "cut.png")
    assert len(str(bad)) > 80
    with pytest.raises(DataError) as info:
        load(root)
    assert f"Image '{bad}' is corrupt" in str(info.value)


def test_skip_leaves_bad_images_out_and_lists_them(tiny_image_folder: Path) -> None:
    corrupt = write_corrupt(tiny_image_folder / "hbar" / "broken.png")
    truncated = write_truncated(tiny_image_folder / "vbar" / "cut.png")
    data = load(tiny_image_folder, on_error="skip")
    assert sorted(item for item, _ in data.problems) == sorted([str(corrupt), str(truncated)])
    assert all("is corrupt or not an image" in reason for _, reason in data.problems)
    assert sum(split_sizes(data).values()) == 36
    for split in data.splits.values():
        assert len(split.images) == len(split.labels)


def test_skip_keeps_labels_aligned_with_images(tmp_path: Path) -> None:
    # One flat colour per class, so every decoded image tells which label it must carry.
    colours = {"black": 0, "grey": 128, "white": 255}
    for name, value in colours.items():
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("L", (8, 8), value).save(tmp_path / name / f"{i}.png")
    write_truncated(tmp_path / "black" / "2.png")  # decodes badly: dropped after the header scan
    data = load(tmp_path, on_error="skip", split={"val": 0.0, "test": 0.0})
    train = data.splits["train"]
    assert len(train) == 14
    values = [colours[data.classes[int(y)]] for y in train.labels]
    assert train.images[:, 0, 0, 0].tolist() == values


def test_val_class_never_seen_in_train(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", per_class=2, classes=["dot", "hbar"])
    make_image_folder(tmp_path / "val", per_class=2, classes=["dot", "hbar", "vbar"])
    with pytest.raises(DataError) as info:
        load(tmp_path)
    assert str(info.value) == (
        f"Data '{tmp_path}': the val split has class 'vbar', which never appears in train. "
        "A model cannot learn a class it never sees. Add training images of 'vbar', or remove it from val."
    )


def test_label_not_in_configured_classes(tiny_image_folder: Path) -> None:
    with pytest.raises(DataError) as info:
        load(tiny_image_folder, classes=["dot", "hbar"])
    assert str(info.value) == (
        f"Data '{tiny_image_folder}' has label 'vbar' (1 unknown label(s) in all), which is not in "
        "data.classes ['dot', 'hbar']. Did you mean 'hbar'? Add it to data.classes or fix the label."
    )


def test_unknown_path_suggests_a_catalog_name(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load(Path("digitz"))
    msg = str(info.value)
    assert msg.startswith("data.path 'digitz' is neither an existing file or folder nor a catalog dataset.")
    assert "Did you mean 'digits'?" in msg


def test_a_mistyped_folder_suggests_the_folder_beside_it_not_the_catalog_name(tmp_path: Path) -> None:
    (tmp_path / "data" / "digits").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        load(tmp_path / "data" / "digit")
    assert f"Did you mean '{tmp_path / 'data' / 'digits'}'?" in str(info.value)


# --- other settings and formats -----------------------------------------------------------------
def test_configured_class_order_is_kept(tiny_image_folder: Path) -> None:
    order = ["vbar", "dot", "hbar"]
    data = load(tiny_image_folder, classes=order, cache="none")
    assert data.classes == order
    train = data.splits["train"]
    assert all(order[int(y)] == p.parent.name for p, y in zip(train.paths, train.labels, strict=True))


def test_limit_per_class(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder, limit_per_class=4)
    assert data.splits["train"].labels.bincount().tolist() == [4, 4, 4]
    assert split_sizes(data)["val"] == 3 and split_sizes(data)["test"] == 3


def test_train_and_test_folders_get_a_carved_val(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", per_class=10)
    make_image_folder(tmp_path / "test", per_class=2)
    data = load(tmp_path, split={"val": 0.2, "test": 0.1})
    assert split_sizes(data) == {"train": 24, "val": 6, "test": 6}


def test_csv_manifest(tiny_image_folder: Path) -> None:
    files = sorted(tiny_image_folder.glob("*/*.png"))
    rows = [
        f"{f.relative_to(tiny_image_folder)},{f.parent.name},{'test' if f.stem == '00' else 'train'}"
        for f in files
    ]
    csv = tiny_image_folder / "manifest.csv"
    csv.write_text("path,label,split\n" + "\n".join(rows) + "\n")
    data = load(csv, split={"val": 0.0, "test": 0.1})
    assert data.classes == CLASSES
    assert split_sizes(data) == {"train": 33, "val": 0, "test": 3}


def test_lazy_cache_keeps_paths(tiny_image_folder: Path) -> None:
    data = load(tiny_image_folder, cache="none")
    train = data.splits["train"]
    assert train.images is None and train.paths is not None
    assert len(train.paths) == len(train.labels) == 30
    assert all(data.classes[int(y)] == p.parent.name for p, y in zip(train.paths, train.labels, strict=True))


# --- chest X-rays: Kaggle's folders, DICOM, MedMNIST, CLAHE, patients ----------------------------
def resplit_warning(root: Path, n_given: int, n_new: int) -> str:
    return (
        f"Data '{root}': the given val split has {n_given} items, fewer than data.split.min_val (50): too "
        f"few to choose a model or a decision threshold on. It is merged into train and a stratified val of "
        f"{n_new} items (data.split.val 0.1 of train) is carved from it instead. Set data.split.min_val: 0 "
        f"to keep the given val split."
    )


def patients_by_split(data: ImageData) -> dict[str, set[str]]:
    return {name: {group_of(p) for p in split.paths} for name, split in data.splits.items()}


def group_of(path: Path) -> str:
    return re.search(KAGGLE_PATTERN, path.name).group(1)


KAGGLE_PATTERN = r"(person\d+|IM-\d+)"


def test_kaggle_layout_keeps_test_and_carves_a_new_val_from_a_tiny_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_chest_xray(tmp_path / "chest_xray")  # train 60, val 4, test 12 JPEGs
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        data = load(root)
    assert data.classes == ["NORMAL", "PNEUMONIA"] and data.channels == 1
    assert split_sizes(data) == {"train": 58, "val": 6, "test": 12}
    assert caplog.messages == [resplit_warning(root, 4, 6)]
    assert all(p.parent.parent.name == "test" for p in data.splits["test"].paths)
    assert data.splits["val"].labels.bincount().tolist() == [3, 3]  # stratified


def test_min_val_zero_keeps_kaggles_val(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_chest_xray(tmp_path / "chest_xray")
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        data = load(root, split={"min_val": 0})
    assert split_sizes(data) == {"train": 60, "val": 4, "test": 12} and caplog.messages == []
    assert all(p.parent.parent.name == "val" for p in data.splits["val"].paths)


def test_group_pattern_carves_val_by_patient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_chest_xray(tmp_path / "chest_xray", per_patient=3)  # train 90, val 6, test 18
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        data = load(root, group_pattern=KAGGLE_PATTERN)
    by_split = patients_by_split(data)
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert split_sizes(data) == {"train": 84, "val": 12, "test": 18}  # whole patients of 3 images
    assert caplog.messages == [resplit_warning(root, 6, 12)]
    assert load(root, group_pattern=KAGGLE_PATTERN).splits["val"].paths == data.splits["val"].paths


def test_a_patient_in_train_and_test_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_chest_xray(tmp_path / "chest_xray", patients={"train": (6, 6), "test": (2, 2)})
    leaked = root / "test" / "PNEUMONIA" / "person1_bacteria_9.jpeg"  # person1 is a training patient
    leaked.write_bytes((root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg").read_bytes())
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        load(root, group_pattern=KAGGLE_PATTERN)
    assert (
        f"Data '{root}': 1 group(s) (patients) have items in more than one of the data's own splits, e.g. "
        f"'person1' in train and test; a model scored on patients it trained on looks better than it is on "
        f"new ones." in caplog.messages[0]
    )


def test_group_pattern_splits_a_folder_without_splits_by_patient(tmp_path: Path) -> None:
    root = write_chest_xray(tmp_path / "flat", patients={"train": (20, 20)}, per_patient=3) / "train"
    data = load(root, group_pattern=KAGGLE_PATTERN, split={"val": 0.2, "test": 0.2})
    by_split = patients_by_split(data)
    assert sum(len(v) for v in by_split.values()) == 40  # every patient in exactly one split
    assert split_sizes(data) == {"train": 72, "val": 24, "test": 24}


def test_group_column_of_a_manifest(tmp_path: Path) -> None:
    root = write_chest_xray(tmp_path / "x", patients={"train": (10, 10)}, per_patient=3) / "train"
    files = sorted(root.glob("*/*.jpeg"))
    rows = [f"{f.relative_to(root)},{f.parent.name},{group_of(f)}" for f in files]
    (root / "m.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    data = load(root / "m.csv", group_column="patient_id", split={"val": 0.2, "test": 0.2})
    by_split = patients_by_split(data)
    assert sum(len(v) for v in by_split.values()) == 20
    (root / "m.csv").write_text("path,label,patient_id\n" + rows[0].rsplit(",", 1)[0] + ",\n")
    with pytest.raises(DataError) as info:
        load(root / "m.csv", group_column="patient_id")
    assert str(info.value) == (
        f"Manifest '{root / 'm.csv'}', line 2: the group (column 'patient_id', data.group_column) is empty. "
        f"Give every row its group, such as the patient id, or set data.on_error: skip."
    )


def test_group_settings_need_files(tmp_path: Path) -> None:
    folder = write_chest_xray(tmp_path / "x", patients={"train": (2, 2)})
    with pytest.raises(DataError) as info:
        load(folder, group_column="patient_id")
    assert str(info.value) == (
        f"data.group_column 'patient_id' names a CSV manifest's column, but data.path '{folder}' is an "
        f"image folder, which has none. Fix: use data.group_pattern, a regex whose first group finds the "
        f"patient in each file name, or give a manifest."
    )
    npz = write_pneumoniamnist(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(DataError) as info:
        load(npz, group_pattern=KAGGLE_PATTERN)
    assert str(info.value) == (
        f"data.group_pattern names the groups (patients) of image files, but data.path '{npz}' is a npz "
        f"data set of arrays, which has no file names or columns; expected an image folder or a CSV "
        f"manifest. Fix: remove data.group_pattern, or give the images as files with a manifest that has a "
        f"patient column."
    )


def test_dicom_folder_decodes_as_predict_does_and_skips_a_corrupt_file(tmp_path: Path) -> None:
    root = write_chest_xray(tmp_path / "dcm", dicom=True, patients={"train": (4, 4), "test": (1, 1)})
    bad = root / "train" / "NORMAL" / "IM-9999-0001.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"not a data set")
    with pytest.raises(DataError) as info:
        load(root)
    assert str(info.value).startswith(f"DICOM file '{bad}' holds no image:")
    data = load(root, on_error="skip")
    assert [item for item, _ in data.problems] == [str(bad)]
    assert (data.size, data.channels) == (16, 1)  # 16-bit DICOM headers read as grayscale ("I;16")
    train = data.splits["train"]
    expected = torch.stack([to_model_input(p, size=16, channels=1) for p in train.paths])
    assert torch.equal(train.images, expected)
    assert data.profile["modes"] == {"I;16": len(train)}


def test_clahe_is_applied_alike_in_memory_on_demand_and_to_arrays(tmp_path: Path) -> None:
    root = write_chest_xray(tmp_path / "c", patients={"train": (4, 4), "test": (1, 1)})
    data = load(root, contrast="clahe", clahe_clip_limit=0.02)
    train = data.splits["train"]
    expected = torch.stack(
        [clahe(to_model_input(p, size=16, channels=1), clip_limit=0.02) for p in train.paths]
    )
    assert torch.equal(train.images, expected)
    mean, _ = train_stats(train.images)
    np.testing.assert_allclose(data.mean, mean, atol=1e-4)  # statistics of what the model sees
    lazy = load(root, contrast="clahe", clahe_clip_limit=0.02, cache="none").splits["train"]
    assert lazy.images is None and lazy.clahe == 0.02
    npz = write_pneumoniamnist(tmp_path / "pneumoniamnist.npz", sizes={"train": 6, "test": 3})
    arrays = load(npz, contrast="clahe").splits["train"].images
    assert torch.equal(arrays, clahe(load(npz).splits["train"].images, clip_limit=0.01))


def test_pneumoniamnist_keeps_its_splits_and_names_its_classes(tmp_path: Path) -> None:
    npz = write_pneumoniamnist(tmp_path / "pneumoniamnist.npz")
    data = load(npz)
    assert data.classes == ["normal", "pneumonia"] and (data.size, data.channels) == (28, 1)
    assert split_sizes(data) == {"train": 60, "val": 12, "test": 12}
    assert load(npz, classes=["NORMAL", "PNEUMONIA"]).classes == ["NORMAL", "PNEUMONIA"]  # renamed by index
    assert load(npz, classes=["pneumonia", "normal"]).classes == ["pneumonia", "normal"]  # reordered
    with pytest.raises(DataError) as info:
        load(npz, classes=["healthy"])
    assert str(info.value) == (
        f"Dataset '{npz}' has labels 0..1 but data.classes names 1 (healthy); expected one name per label, "
        f"label i named by data.classes[i]. Fix: add the missing names to data.classes."
    )
