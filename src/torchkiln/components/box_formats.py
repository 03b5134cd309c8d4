"""Readers of box annotations: COCO JSON, Pascal VOC XML, YOLO txt and CSV, each to :class:`ImageBoxes`.

Every reader returns one record per image, boxes in the internal absolute ``xyxy`` format
(:mod:`torchkiln.components.boxes` has the conversions), and raises :class:`DataError` naming the file for
anything it cannot read. They check the syntax only; :func:`~torchkiln.components.boxes.check_records`
checks the boxes. Image sizes missing from the annotation come from the image header (no pixel decoding).
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat

import torch

from torchkiln.components.boxes import ImageBoxes, coco_to_xyxy, voc_to_xyxy, yolo_to_xyxy
from torchkiln.components.images import IMAGE_EXTENSIONS, image_header
from torchkiln.core.errors import DataError

CSV_COLUMNS = ("path", "xmin", "ymin", "xmax", "ymax", "label")


def _boxes(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)  # (N, 4), also for N = 0


def _number(value: Any, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{value}' is not a number. Fix the value.") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: '{value}' is not a finite number. Fix the value.")
    return number


# --- COCO -----------------------------------------------------------------------------------------
def _coco_list(data: Any, key: str, path: Path) -> list[dict[str, Any]]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DataError(
            f"COCO file '{path}' has no '{key}' list of objects; expected a JSON object with 'images', "
            f"'annotations' and 'categories' lists. Export the annotations as COCO detection JSON."
        )
    return items


def _get(item: dict[str, Any], key: str, where: str) -> Any:
    if key not in item:
        raise DataError(f"{where} has no '{key}' (it has {sorted(item)}). Add it.")
    return item[key]


def _add_coco_annotation(
    n: int, ann: dict[str, Any], path: Path, names: dict[Any, str], found: dict[Any, tuple[list, list]]
) -> None:
    where = f"Annotation {n} (id {ann.get('id')}) in COCO file '{path}'"
    image_id, category = _get(ann, "image_id", where), _get(ann, "category_id", where)
    if image_id not in found:
        raise DataError(f"{where} names image_id {image_id}, which is not in 'images'. Fix the image_id.")
    if category not in names:
        raise DataError(
            f"{where} names category_id {category}; expected one of {sorted(names)} from 'categories'. "
            f"Fix the category_id, or add the category."
        )
    bbox = _get(ann, "bbox", where)
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]. Fix the bbox.")
    if not ann.get("iscrowd", 0):
        found[image_id][0].append([_number(v, f"{where}, bbox") for v in bbox])
        found[image_id][1].append(names[category])


def read_coco(path: Path, *, image_root: Path | None = None) -> list[ImageBoxes]:
    """Read a COCO detection JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]``, ``categories``).

    Crowd annotations (``iscrowd: 1``) are skipped, as torchvision's references do; an image without
    annotations is kept with no boxes.

    Args:
        path: the JSON file.
        image_root: the folder ``file_name`` is relative to; by default the JSON file's folder.

    Returns:
        One record per image, in the order of ``images``.

    Raises:
        DataError: the file is not COCO JSON, or an annotation names an unknown image or category.

    Example:
        >>> records = read_coco(Path("annotations/instances_train.json"), image_root=Path("train2017"))
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"COCO file '{path}' cannot be read as JSON ({exc}). Fix or re-export it.") from None
    root = image_root if image_root is not None else path.parent
    categories = _coco_list(data, "categories", path)
    names = {_get(c, "id", f"A category in '{path}'"): str(c.get("name")) for c in categories}
    images = {_get(im, "id", f"An image in '{path}'"): im for im in _coco_list(data, "images", path)}
    found: dict[Any, tuple[list[list[float]], list[str]]] = {key: ([], []) for key in images}
    for n, ann in enumerate(_coco_list(data, "annotations", path)):
        _add_coco_annotation(n, ann, path, names, found)
    records = []
    for key, image in images.items():
        where = f"Image id {key} in COCO file '{path}'"
        boxes, labels = found[key]
        records.append(
            ImageBoxes(
                path=root / str(_get(image, "file_name", where)),
                width=int(_number(_get(image, "width", where), where)),
                height=int(_number(_get(image, "height", where), where)),
                boxes=coco_to_xyxy(_boxes(boxes)),
                labels=tuple(labels),
                source=path,
                format="coco",
            )
        )
    return records


# --- Pascal VOC -----------------------------------------------------------------------------------
def parse_xml_safely(path: Path) -> ET.Element:
    """Parse an XML file a user handed us, refusing any DOCTYPE or entity declaration.

    Without a DOCTYPE there are no entities beyond XML's five predefined ones, so nothing can expand
    (billion laughs) or reach outside the file (external entities). A first pass with expat refuses them;
    only then does ElementTree build the tree.

    Raises:
        DataError: the file cannot be read, is not well-formed, or declares a DOCTYPE or an entity.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"XML file '{path}' cannot be read ({exc.strerror}). Check the path.") from None

    def refuse(*_: Any) -> None:
        raise DataError(
            f"XML file '{path}' declares a DOCTYPE or an entity, which annotation files never need and "
            f"torchkiln does not read (they can expand without bound or read other files). Remove the "
            f"<!DOCTYPE ...> and <!ENTITY ...> declarations."
        )

    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = refuse
    scanner.EntityDeclHandler = refuse
    scanner.ExternalEntityRefHandler = refuse
    try:
        scanner.Parse(data, True)
    except expat.ExpatError as exc:
        raise DataError(f"XML file '{path}' is not well-formed XML ({exc}). Fix or re-export it.") from None
    return ET.fromstring(data)


def _text(element: ET.Element, tag: str, where: str) -> str:
    found = element.findtext(tag)
    if found is None or not found.strip():
        raise DataError(f"{where} has no <{tag}>. Add it (Pascal VOC layout).")
    return found.strip()


def _read_voc_file(path: Path, images_dir: Path) -> ImageBoxes:
    root = parse_xml_safely(path)
    where = f"VOC file '{path}'"
    image = images_dir / _text(root, "filename", where)
    width = int(_number(root.findtext("size/width") or 0, f"{where}, <size><width>"))
    height = int(_number(root.findtext("size/height") or 0, f"{where}, <size><height>"))
    if width <= 0 or height <= 0:  # some tools write 0 or leave <size> out
        width, height, _ = image_header(image)
    rows, labels = [], []
    for n, obj in enumerate(root.iter("object")):
        obj_where = f"Object {n} in {where}"
        labels.append(_text(obj, "name", obj_where))
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{obj_where} has no <bndbox>. Add <bndbox> with xmin, ymin, xmax, ymax.")
        rows.append([_number(_text(bndbox, k, obj_where), f"{obj_where}, <{k}>") for k in CSV_COLUMNS[1:5]])
    return ImageBoxes(image, width, height, voc_to_xyxy(_boxes(rows)), tuple(labels), path, "voc")


def read_voc(annotations: Path, *, images_dir: Path | None = None) -> list[ImageBoxes]:
    """Read Pascal VOC XML: one file per image (``filename``, ``size``, ``object/name``, ``object/bndbox``).

    Args:
        annotations: one XML file, or a folder whose ``*.xml`` files are read in name order.
        images_dir: the folder ``filename`` is in; by default ``JPEGImages`` beside the annotation folder
            when it exists (the VOC layout), else the annotation folder itself.

    Returns:
        One record per XML file; coordinates converted from VOC's 1-based pixels (see :mod:`boxes`).

    Raises:
        DataError: a file is not well-formed, declares a DOCTYPE, or misses a field.

    Example:
        >>> records = read_voc(Path("VOC2012/Annotations"))
    """
    files = sorted(annotations.glob("*.xml")) if annotations.is_dir() else [annotations]
    if not files:
        raise DataError(f"Folder '{annotations}' has no .xml file. Point it at the VOC Annotations folder.")
    folder = files[0].parent
    if images_dir is None:
        images_dir = folder.parent / "JPEGImages" if (folder.parent / "JPEGImages").is_dir() else folder
    return [_read_voc_file(f, images_dir) for f in files]


# --- YOLO -----------------------------------------------------------------------------------------
def read_classes(classes: Sequence[str] | Path) -> list[str]:
    """The class names: a list as given, or a text file with one name a line (YOLO's ``classes.txt``)."""
    if not isinstance(classes, Path):
        return list(classes)
    try:
        names = [line.strip() for line in classes.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Classes file '{classes}' cannot be read ({exc}). Check the path.") from None
    if not names:
        raise DataError(f"Classes file '{classes}' is empty; expected one class name a line. Add the names.")
    return names


def yolo_label_file(image: Path, images_dir: Path) -> Path | None:
    """The txt of ``image``: beside it, else under ``labels`` where the path says ``images`` (Ultralytics),
    else in a ``labels`` folder beside ``images_dir``; None when there is none (an image with no object)."""
    parts = image.parts
    candidates = [image.with_suffix(".txt")]
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        candidates.append(Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt"))
    candidates.append((images_dir.parent / "labels" / image.relative_to(images_dir)).with_suffix(".txt"))
    return next((c for c in candidates if c.is_file()), None)


def _read_yolo_lines(path: Path, classes: list[str], width: int, height: int) -> tuple[list, list[str]]:
    rows, labels = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"YOLO file '{path}', line {n}"
        values = line.split()
        if len(values) != 5:
            raise DataError(
                f"{where} has {len(values)} values; expected 5: class cx cy w h. Polygons (segmentation "
                f"labels) are not boxes: convert them to boxes first."
            )
        index = _number(values[0], f"{where}, class")
        if index != int(index) or not 0 <= index < len(classes):
            raise DataError(
                f"{where} has the unknown class {values[0]}; expected an index 0 to {len(classes) - 1} into "
                f"the classes {classes}. Fix the index, or add the class to the classes list."
            )
        box = [_number(v, where) for v in values[1:]]
        if max(box) > 1.01:  # normalized values stay in [0, 1]; rounding can push them just over
            raise DataError(
                f"{where} has box {values[1:]} with values up to {max(box):g}; YOLO boxes are cx cy w h "
                f"normalized to [0, 1]. These look like pixels: divide cx and w by the image width "
                f"({width}) and cy and h by its height ({height}), or give the boxes as CSV (pixels)."
            )
        rows.append(box)
        labels.append(classes[int(index)])
    return rows, labels


def read_yolo(images_dir: Path, *, classes: Sequence[str] | Path) -> list[ImageBoxes]:
    """Read YOLO txt labels (``class cx cy w h`` a line, normalized) for the images under ``images_dir``.

    The txt of an image is found by :func:`yolo_label_file`; an image without one has no object. The image
    size comes from the image header, without decoding the pixels.

    Args:
        images_dir: the folder of images (searched recursively).
        classes: the class names in index order, or the path of a ``classes.txt``.

    Returns:
        One record per image, in path order; ``source`` is the txt (or the image when it has no txt).

    Raises:
        DataError: a line has no 5 values, an unknown class index, or pixel values.

    Example:
        >>> records = read_yolo(Path("dataset/images/train"), classes=Path("dataset/classes.txt"))
    """
    names = read_classes(classes)
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"Folder '{images_dir}' has no image. Point it at the folder of images.")
    records = []
    for image in images:
        width, height, _ = image_header(image)
        label_file = yolo_label_file(image, images_dir)
        rows, labels = _read_yolo_lines(label_file, names, width, height) if label_file else ([], [])
        boxes = yolo_to_xyxy(_boxes(rows), width=width, height=height)
        records.append(ImageBoxes(image, width, height, boxes, tuple(labels), label_file or image, "yolo"))
    return records


# --- CSV ------------------------------------------------------------------------------------------
def read_box_csv(path: Path, *, image_root: Path | None = None) -> list[ImageBoxes]:
    """Read a CSV with the header ``path,xmin,ymin,xmax,ymax,label`` (absolute pixel corners), a row a box.

    A row whose box and label are empty lists an image with no object. Image sizes come from the headers.

    Args:
        path: the CSV file.
        image_root: the folder ``path`` is relative to; by default the CSV file's folder.

    Returns:
        One record per image, in order of first appearance.

    Raises:
        DataError: a column is missing, or a value is not a number.

    Example:
        >>> records = read_box_csv(Path("boxes.csv"))
    """
    root = image_root if image_root is not None else path.parent
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"CSV file '{path}' has the columns {reader.fieldnames}; expected "
                    f"{','.join(CSV_COLUMNS)} (missing {missing}). Fix the header row."
                )
            grouped: dict[str, tuple[list[list[float]], list[str]]] = {}
            for n, row in enumerate(reader, start=2):
                rows, labels = grouped.setdefault(row["path"], ([], []))
                if not any((row[c] or "").strip() for c in CSV_COLUMNS[1:]):
                    continue
                where = f"CSV file '{path}', line {n}"
                rows.append([_number(row[c], f"{where}, column '{c}'") for c in CSV_COLUMNS[1:5]])
                labels.append((row["label"] or "").strip())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"CSV file '{path}' cannot be read ({exc}). Check the file.") from None
    records = []
    for name, (rows, labels) in grouped.items():
        image = root / name
        width, height, _ = image_header(image)
        records.append(ImageBoxes(image, width, height, _boxes(rows), tuple(labels), path, "csv"))
    return records
