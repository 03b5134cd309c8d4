"""Detection data: formats found, splits read, boxes that stay on their objects through tiles and flips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.components.augment import HorizontalFlip, VerticalFlip
from torchkiln.components.boxes import ImageBoxes
from torchkiln.core.errors import DataError
from torchkiln.tasks.object_detection.config import DetectionDataConfig, ScaleJitter
from torchkiln.tasks.object_detection.data import (
    DetectionData,
    TileSet,
    build_augment,
    load_detection_data,
    resolve_format,
)
from torchkiln.tasks.object_detection.example import write_voc


def squares_image(tmp_path: Path, boxes: list[list[int]], size: tuple[int, int] = (300, 200)) -> ImageBoxes:
    """A black ``size`` (w, h) PNG with a white square per box: pixels say where each box must be."""
    w, h = size
    a = np.zeros((h, w, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        a[y1:y2, x1:x2] = 255
    path = tmp_path / "squares.png"
    Image.fromarray(a).save(path)
    return ImageBoxes(path, w, h, torch.tensor(boxes, dtype=torch.float32), ("sq",) * len(boxes), path, "csv")


def assert_boxes_on_squares(image: torch.Tensor, boxes: torch.Tensor) -> None:
    for x1, y1, x2, y2 in boxes.round().int().tolist():
        inside = image[:, y1:y2, x1:x2]
        assert inside.numel() and (inside == 255).all(), f"box {(x1, y1, x2, y2)} is not on its square"


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [HorizontalFlip(name="horizontal_flip", p=1.0)],
        [VerticalFlip(name="vertical_flip", p=1.0)],
        [ScaleJitter(name="scale_jitter", scale=(1.5, 1.5))],
    ],
    ids=["tile", "hflip", "vflip", "zoom"],
)
def test_boxes_stay_on_their_objects_through_tiles_and_augmentation(tmp_path: Path, steps: list) -> None:
    record = squares_image(tmp_path, [[20, 30, 44, 54], [150, 100, 180, 130], [240, 150, 270, 180]])
    data = DetectionData(["sq"], {"train": [record]}, tmp_path)
    tiles = TileSet(data, [record], tile=128, augment=build_augment(steps), seed=0)
    assert len(tiles) == 6  # ceil(300 / 128) x ceil(200 / 128) tiles an epoch
    images, targets = tiles[(0, 0, torch.arange(6))]
    seen = 0
    for image, target in zip(images, targets, strict=True):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert (target["labels"] == 1).all()  # 0-based "sq" -> torchvision's 1 (0 is the background)
        if steps and steps[0].name == "scale_jitter":
            # Resampling blurs the edges: the box's centre pixel must be white.
            for x1, y1, x2, y2 in target["boxes"].tolist():
                assert image[0, int((y1 + y2) / 2), int((x1 + x2) / 2)] == 255
        else:
            assert_boxes_on_squares(image, target["boxes"])
        seen += len(target["boxes"])
    assert seen >= 3


def test_the_same_batch_key_gives_the_same_tiles(tmp_path: Path) -> None:
    record = squares_image(tmp_path, [[20, 30, 44, 54]])
    data = DetectionData(["sq"], {"train": [record]}, tmp_path)
    tiles = TileSet(
        data, [record], tile=128, augment=build_augment([HorizontalFlip(name="horizontal_flip")]), seed=3
    )
    a, b = tiles[(2, 1, torch.arange(4))], tiles[(2, 1, torch.arange(4))]
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a[0], tiles[(3, 1, torch.arange(4))][0], strict=True))


def test_a_voc_folder_brings_its_splits_and_classes(tmp_path: Path) -> None:
    folder = write_voc(tmp_path / "voc")
    d = DetectionDataConfig(path=str(folder))
    assert resolve_format(d) == ("voc", folder)
    data = load_detection_data(d, seed=0)
    assert data.classes == ["disc", "square"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 8, "val": 3, "test": 3}


def test_a_split_list_naming_a_missing_annotation_is_refused(tmp_path: Path) -> None:
    folder = write_voc(tmp_path / "voc")
    (folder / "ImageSets" / "Main" / "val.txt").write_text("val00\nnope\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_detection_data(DetectionDataConfig(path=str(folder)), seed=0)
    assert str(info.value) == (
        f"'{folder / 'ImageSets' / 'Main' / 'val.txt'}' lists 1 image(s) with no annotation in "
        f"'{folder / 'Annotations'}', e.g. 'nope'. Expected one name a line, each with an "
        f"Annotations/NAME.xml. Fix it."
    )


def test_a_path_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        resolve_format(DetectionDataConfig(path=str(tmp_path / "nothing")))
    assert str(info.value) == (
        f"data.path '{tmp_path / 'nothing'}' does not exist. Expected a Pascal VOC folder, a COCO .json, a "
        f".csv of boxes, a YOLO images folder, or a catalog name such as 'trees'. Check the path."
    )


def test_a_folder_of_unknown_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        resolve_format(DetectionDataConfig(path=str(tmp_path)))
    assert str(info.value) == (
        f"Cannot tell the annotation format of '{tmp_path}'. Expected a Pascal VOC folder "
        f"(Annotations/*.xml), a COCO .json, a .csv with path,xmin,ymin,xmax,ymax,label, or a YOLO folder of "
        f"images with .txt labels. Fix: set data.format to voc, coco, csv or yolo."
    )


def test_yolo_without_class_names_is_refused(tmp_path: Path) -> None:
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_detection_data(DetectionDataConfig(path=str(tmp_path)), seed=0)
    assert str(info.value) == (
        f"YOLO folder '{tmp_path}' has no classes.txt, and data.classes is not set; YOLO label files hold "
        f"class numbers only. Fix: set data.classes to the names in label order, or add classes.txt (one "
        f"name a line)."
    )


def test_an_image_whose_size_disagrees_with_its_annotation_is_refused(tmp_path: Path) -> None:
    record = squares_image(tmp_path, [[20, 30, 44, 54]])
    wrong = ImageBoxes(record.path, 600, 400, record.boxes, record.labels, tmp_path / "a.xml", "voc")
    with pytest.raises(DataError) as info:
        DetectionData(["sq"], {"train": [wrong]}, tmp_path).image(wrong)
    assert str(info.value) == (
        f"Image '{record.path}' is 300x200 pixels, but '{tmp_path / 'a.xml'}' says 600x400; the boxes would "
        f"be misplaced. Fix the annotation's size, or re-export the annotations for this image."
    )
