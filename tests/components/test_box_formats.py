"""The readers of COCO JSON, Pascal VOC XML, YOLO txt and CSV boxes, on small files written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from torchkiln.components.box_formats import read_box_csv, read_coco, read_voc, read_yolo
from torchkiln.components.boxes import check_records, xyxy_to_coco, xyxy_to_voc, xyxy_to_yolo
from torchkiln.core.errors import DataError

XYXY = torch.tensor([[10.0, 20.0, 50.0, 60.0], [100.0, 5.0, 190.0, 95.0]])  # in a 200x100 image
LABELS = ("tree", "bush")


def png(path: Path, w: int = 200, h: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h)).save(path)
    return path


def test_coco(tmp_path: Path) -> None:
    coco = xyxy_to_coco(XYXY).tolist()
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 8, "file_name": "b.png", "width": 200, "height": 100},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": coco[0]},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": coco[1]},
            {"id": 3, "image_id": 8, "category_id": 3, "bbox": coco[0], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "tree"}, {"id": 4, "name": "bush"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    a, b = check_records(read_coco(tmp_path / "ann.json", image_root=tmp_path / "img"), classes=LABELS)
    assert a.path == tmp_path / "img" / "a.png" and (a.width, a.height) == (200, 100)
    torch.testing.assert_close(a.boxes, XYXY)
    assert a.labels == LABELS and a.format == "coco"
    assert b.boxes.shape == (0, 4)  # the crowd box is skipped, the image kept


def test_coco_unknown_category(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
        "categories": [{"id": 1, "name": "tree"}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 2, 2]}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as exc:
        read_coco(tmp_path / "ann.json")
    assert str(exc.value) == (
        f"Annotation 0 (id 5) in COCO file '{tmp_path / 'ann.json'}' names category_id 2; expected one of "
        f"[1] from 'categories'. Fix the category_id, or add the category."
    )


def voc_xml(filename: str, boxes: torch.Tensor, labels, size: tuple[int, int] | None = (200, 100)) -> str:
    objects = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin><ymin>{b[1]:g}</ymin>"
        f"<xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
        for b, n in zip(xyxy_to_voc(boxes).tolist(), labels, strict=True)
    )
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    )
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects}</annotation>"


def test_voc_layout(tmp_path: Path) -> None:
    ann = tmp_path / "VOC" / "Annotations"
    ann.mkdir(parents=True)
    png(tmp_path / "VOC" / "JPEGImages" / "b.png", 200, 100)
    (ann / "a.xml").write_text(voc_xml("a.png", XYXY, LABELS))
    (ann / "b.xml").write_text(voc_xml("b.png", XYXY[:1], LABELS[:1], size=None))  # size from the header
    a, b = check_records(read_voc(ann), classes=LABELS)
    assert a.path == tmp_path / "VOC" / "JPEGImages" / "a.png" and a.source == ann / "a.xml"
    torch.testing.assert_close(a.boxes, XYXY)
    assert a.labels == LABELS and (b.width, b.height) == (200, 100) and b.labels == ("tree",)


@pytest.mark.parametrize(
    "header",
    [
        '<!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE annotation [<!ENTITY a "aaaa">]>',
    ],
    ids=["external", "internal"],
)
def test_voc_refuses_doctype_and_entities(tmp_path: Path, header: str) -> None:
    path = tmp_path / "a.xml"
    path.write_text(f"<?xml version='1.0'?>{header}<annotation><filename>&x;</filename></annotation>")
    with pytest.raises(DataError, match=r"declares a DOCTYPE or an entity.* Remove the <!DOCTYPE"):
        read_voc(path)


def test_voc_malformed(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_text("<annotation><filename>a.png</filename>")
    with pytest.raises(DataError, match=r"a.xml' is not well-formed XML"):
        read_voc(tmp_path / "a.xml")


@pytest.mark.parametrize("layout", ["beside", "ultralytics"])
def test_yolo(tmp_path: Path, layout: str) -> None:
    images = tmp_path / "images" / "train"
    png(images / "a.png", 200, 100)
    png(images / "empty.png", 40, 30)
    label = images / "a.txt" if layout == "beside" else tmp_path / "labels" / "train" / "a.txt"
    label.parent.mkdir(parents=True, exist_ok=True)
    rows = xyxy_to_yolo(XYXY, width=200, height=100).tolist()
    label.write_text("".join(f"{c} {' '.join(map(str, r))}\n" for c, r in zip([1, 0], rows, strict=True)))
    (tmp_path / "classes.txt").write_text("bush\ntree\n")
    a, empty = check_records(read_yolo(images, classes=tmp_path / "classes.txt"), classes=["bush", "tree"])
    torch.testing.assert_close(a.boxes, XYXY)
    assert a.labels == LABELS and a.source == label
    assert (empty.width, empty.height, len(empty.boxes)) == (40, 30, 0)


def test_yolo_trap_pixels_in_a_normalized_format(tmp_path: Path) -> None:
    png(tmp_path / "a.png", 200, 100)
    (tmp_path / "a.txt").write_text("0 30 40 40 40\n")
    with pytest.raises(DataError) as exc:
        read_yolo(tmp_path, classes=["tree"])
    assert str(exc.value) == (
        f"YOLO file '{tmp_path / 'a.txt'}', line 1 has box ['30', '40', '40', '40'] with values up to 40; "
        f"YOLO boxes are cx cy w h normalized to [0, 1]. These look like pixels: divide cx and w by the "
        f"image width (200) and cy and h by its height (100), or give the boxes as CSV (pixels)."
    )


def test_yolo_unknown_class_index(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"line 1 has the unknown class 2; expected an index 0 to 1 into"):
        read_yolo(tmp_path, classes=["tree", "bush"])


def test_csv(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    png(tmp_path / "b.png", 50, 40)
    lines = [f"a.png,{','.join(f'{v:g}' for v in b)},{n}" for b, n in zip(XYXY.tolist(), LABELS, strict=True)]
    (tmp_path / "boxes.csv").write_text(
        "\n".join(["path,xmin,ymin,xmax,ymax,label", *lines, "b.png,,,,,"]) + "\n"
    )
    a, b = check_records(read_box_csv(tmp_path / "boxes.csv"), classes=LABELS)
    torch.testing.assert_close(a.boxes, XYXY)
    assert a.labels == LABELS and (b.width, b.height, len(b.boxes)) == (50, 40, 0)


def test_csv_missing_column(tmp_path: Path) -> None:
    (tmp_path / "boxes.csv").write_text("path,x1,y1,x2,y2,label\n")
    with pytest.raises(DataError) as exc:
        read_box_csv(tmp_path / "boxes.csv")
    assert str(exc.value) == (
        f"CSV file '{tmp_path / 'boxes.csv'}' has the columns ['path', 'x1', 'y1', 'x2', 'y2', 'label']; "
        f"expected path,xmin,ymin,xmax,ymax,label (missing ['xmin', 'ymin', 'xmax', 'ymax']). "
        f"Fix the header row."
    )


def test_csv_trap_y_x_order_end_to_end(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    true = [*XYXY.tolist(), [120, 10, 180, 90]]  # written y1,x1,y2,x2 below: two land beyond the height
    rows = [f"a.png,{b[1]:g},{b[0]:g},{b[3]:g},{b[2]:g},tree" for b in true]
    (tmp_path / "boxes.csv").write_text("\n".join(["path,xmin,ymin,xmax,ymax,label", *rows]) + "\n")
    with pytest.raises(DataError, match=r"^The boxes look like y,x order \(y1,x1,y2,x2\): 2 of 3") as exc:
        check_records(read_box_csv(tmp_path / "boxes.csv"))
    assert "boxes.csv" in str(exc.value)
