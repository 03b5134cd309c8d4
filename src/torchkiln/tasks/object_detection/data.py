"""Detection data: annotation files -> checked records -> splits -> tiles with their boxes -> batches.

Every format is read into :class:`~torchkiln.components.boxes.ImageBoxes` (absolute ``xyxy``) and checked
by :func:`~torchkiln.components.boxes.check_records` before anything trains. Training draws tiles of at
most ``data.tile_size`` pixels: an image is cut into as many tiles per epoch as it takes to cover it, each
at a random position (seeded per batch, so a resumed run sees the same tiles), and the boxes move with
every crop, flip and zoom (torchvision transforms v2 with ``tv_tensors.BoundingBoxes``). Evaluation reads
whole images; the model tiles them itself (:class:`~.models.DetectorModel`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from torchkiln.components.batches import EpochBatchSampler
from torchkiln.components.box_formats import read_box_csv, read_classes, read_coco, read_voc, read_yolo
from torchkiln.components.boxes import ImageBoxes, check_records, crop_boxes
from torchkiln.components.catalog import DATASETS
from torchkiln.components.images import image_tensor
from torchkiln.core.errors import DataError
from torchkiln.tasks.object_detection.config import DetectionDataConfig, ScaleJitter

SPLITS = ("train", "val", "test")


@dataclass
class DetectionData:
    """The checked records of each split and the class names (label ``i`` is ``classes[i]``)."""

    classes: list[str]
    splits: dict[str, list[ImageBoxes]]
    root: Path  # the data set's folder (or file), for messages
    problems: list[tuple[str, str]] = field(default_factory=list)  # skipped items (none: boxes are checked)
    _pixels: dict[Path, torch.Tensor] = field(default_factory=dict, repr=False)

    def image(self, record: ImageBoxes) -> torch.Tensor:
        """The decoded uint8 ``(3, H, W)`` image of ``record`` (decoded once, then kept in memory)."""
        found = self._pixels.get(record.path)
        if found is None:
            found = self._pixels[record.path] = image_tensor(record.path)
            if tuple(found.shape[1:]) != (record.height, record.width):
                raise DataError(
                    f"Image '{record.path}' is {found.shape[2]}x{found.shape[1]} pixels, but "
                    f"'{record.source}' says {record.width}x{record.height}; the boxes would be misplaced. "
                    f"Fix the annotation's size, or re-export the annotations for this image."
                )
        return found

    def targets(self, record: ImageBoxes) -> dict[str, torch.Tensor]:
        """``{"boxes": (N, 4) float32 xyxy, "labels": (N,) int64 0..K-1}`` of ``record``."""
        index = {c: i for i, c in enumerate(self.classes)}
        labels = torch.tensor([index[name] for name in record.labels], dtype=torch.int64)
        return {"boxes": record.boxes.float().reshape(-1, 4), "labels": labels}


def resolve_format(d: DetectionDataConfig) -> tuple[str, Path]:
    """The format of ``data.path`` (``data.format``, or guessed) and the path to read.

    Raises:
        DataError: the path does not exist, or its format cannot be told (the message lists the layouts).
    """
    if d.format == "catalog" or (d.format == "auto" and d.path in DATASETS and not Path(d.path).exists()):
        entry = DATASETS.get(d.path)
        if entry.kind != "boxes":
            raise DataError(
                f"Catalog data set '{d.path}' holds {entry.kind}, not boxes; object detection needs a "
                f"detection data set (kiln list datasets shows 'trees'). Fix data.path."
            )
        return "voc", Path(entry.load())
    path = Path(d.path).expanduser()
    if not path.exists():
        raise DataError(
            f"data.path '{d.path}' does not exist. Expected a Pascal VOC folder, a COCO .json, a .csv of "
            f"boxes, a YOLO images folder, or a catalog name such as 'trees'. Check the path."
        )
    if d.format != "auto":
        return d.format, path
    if path.suffix.lower() == ".json":
        return "coco", path
    if path.suffix.lower() == ".csv":
        return "csv", path
    if path.suffix.lower() == ".xml" or (path / "Annotations").is_dir() or any(path.glob("*.xml")):
        return "voc", path
    if path.is_dir() and (any(path.rglob("*.txt"))):
        return "yolo", path
    raise DataError(
        f"Cannot tell the annotation format of '{path}'. Expected a Pascal VOC folder (Annotations/*.xml), "
        f"a COCO .json, a .csv with path,xmin,ymin,xmax,ymax,label, or a YOLO folder of images with .txt "
        f"labels. Fix: set data.format to voc, coco, csv or yolo."
    )


def read_records(d: DetectionDataConfig) -> tuple[list[ImageBoxes], dict[str, list[int]] | None, Path]:
    """All records of the data set, the splits it brings (indices per split, or None) and its root."""
    fmt, path = resolve_format(d)
    images = Path(d.images).expanduser() if d.images else None
    if fmt == "coco":
        return read_coco(path, image_root=images), None, path
    if fmt == "csv":
        return read_box_csv(path, image_root=images), None, path
    if fmt == "yolo":
        classes: Sequence[str] | Path | None = d.classes
        if classes is None:
            found = [p for p in (path / "classes.txt", path.parent / "classes.txt") if p.is_file()]
            if not found:
                raise DataError(
                    f"YOLO folder '{path}' has no classes.txt, and data.classes is not set; YOLO label files "
                    f"hold class numbers only. Fix: set data.classes to the names in label order, or add "
                    f"classes.txt (one name a line)."
                )
            classes = found[0]
        return read_yolo(path, classes=read_classes(classes)), None, path
    annotations = path / "Annotations" if (path / "Annotations").is_dir() else path
    records = read_voc(annotations, images_dir=images)
    return records, _voc_sets(path, records), path


def _voc_sets(root: Path, records: list[ImageBoxes]) -> dict[str, list[int]] | None:
    """The VOC layout's ``ImageSets/Main/{train,val,test}.txt`` as record indices (None without them)."""
    folder = root / "ImageSets" / "Main"
    if not (folder / "train.txt").is_file():
        return None
    by_name = {r.source.stem: i for i, r in enumerate(records)}
    out: dict[str, list[int]] = {}
    for split in SPLITS:
        file = folder / f"{split}.txt"
        names = file.read_text(encoding="utf-8").split() if file.is_file() else []
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DataError(
                f"'{file}' lists {len(unknown)} image(s) with no annotation in '{root / 'Annotations'}', "
                f"e.g. '{unknown[0]}'. Expected one name a line, each with an Annotations/NAME.xml. Fix it."
            )
        out[split] = [by_name[n] for n in names]
    return out


def load_detection_data(
    d: DetectionDataConfig, *, seed: int, only_splits: Collection[str] | None = None
) -> DetectionData:
    """Read, check and split the data set of ``data``.

    Splits come from the data (the VOC layout's ImageSets) or are drawn by image with ``data.split``'s
    fractions. Classes are ``data.classes``, else the labels found, sorted.

    Raises:
        DataError: any box or format problem (see :func:`~torchkiln.components.boxes.check_records`), or a
            split with no image.
    """
    records, given, root = read_records(d)
    if not records:
        raise DataError(f"'{root}' has no annotated image. Add images with boxes.")
    classes = list(d.classes) if d.classes else sorted({label for r in records for label in r.labels})
    if not classes:
        raise DataError(f"'{root}' has no box at all; a detector needs boxes to learn from. Annotate images.")
    records = check_records(records, classes=classes)
    if given is None:
        given = _draw_splits(len(records), val=d.split.val, test=d.split.test, seed=seed)
    wanted = set(SPLITS if only_splits is None else only_splits) | {"train"}
    splits = {s: [records[i] for i in given.get(s, [])] for s in SPLITS if s in wanted}
    if not splits["train"]:
        raise DataError(f"'{root}' has no training image. Give the train split at least one image.")
    return DetectionData(classes, splits, root)


def _draw_splits(n: int, *, val: float, test: float, seed: int) -> dict[str, list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = round(n * test) if test else 0
    n_val = round(n * val) if val else 0
    if n - n_val - n_test < 1:
        n_val, n_test = (0, 0) if n < 3 else (n_val, n_test)
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def box_sizes(records: Sequence[ImageBoxes]) -> torch.Tensor:
    """``sqrt(w * h)`` of every box, in pixels: what the anchor sizes are chosen from."""
    boxes = [r.boxes.reshape(-1, 4) for r in records]
    if not boxes:
        return torch.zeros(0)
    b = torch.cat(boxes)
    return ((b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)).sqrt()


def tiles_per_epoch(record: ImageBoxes, tile: int) -> int:
    """How many random tiles of ``record`` one epoch draws: enough to cover it once."""
    return math.ceil(record.width / tile) * math.ceil(record.height / tile)


def build_augment(steps: Sequence[Any]) -> v2.Compose | None:
    """The configured augmentation as one v2 pipeline over ``(tv_tensors.Image, {"boxes", "labels"})``."""
    ops: list[torch.nn.Module] = []
    for s in steps:
        match s.name:
            case "horizontal_flip":
                ops.append(v2.RandomHorizontalFlip(s.p))
            case "vertical_flip":
                ops.append(v2.RandomVerticalFlip(s.p))
            case "color_jitter":
                ops.append(v2.ColorJitter(s.brightness, s.contrast, s.saturation, s.hue))
            case "scale_jitter":
                ops.append(_ScaleJitter(s))
    return v2.Compose([*ops, v2.SanitizeBoundingBoxes(min_size=2)]) if ops else None


class _ScaleJitter(torch.nn.Module):
    """Zoom by a factor drawn from ``scale``, then crop (or pad) back to the tile's size; boxes follow."""

    def __init__(self, s: ScaleJitter) -> None:
        super().__init__()
        self.lo, self.hi = s.scale

    def forward(self, image: tv_tensors.Image, target: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        h, w = image.shape[-2:]
        factor = float(torch.empty(()).uniform_(self.lo, self.hi))
        size = [max(8, round(h * factor)), max(8, round(w * factor))]
        image, target = v2.functional.resize(image, size, antialias=True), dict(target)
        target["boxes"] = v2.functional.resize(target["boxes"], size)
        crop = v2.RandomCrop((h, w), pad_if_needed=True)
        return crop(image, target)


class TileSet(Dataset):
    """Batches keyed ``(epoch, b, indices)`` by :class:`EpochBatchSampler`; each index is one tile.

    Training: index ``i`` is a tile of image ``owner[i]`` at a position drawn from ``(seed, epoch, b, i)``.
    """

    def __init__(self, data: DetectionData, records: list[ImageBoxes], *, tile: int, augment: Any, seed: int):
        self.data, self.records, self.tile, self.augment, self.seed = data, records, tile, augment, seed
        self.owner = [k for k, r in enumerate(records) for _ in range(tiles_per_epoch(r, tile))]

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[list[torch.Tensor], list[dict]]:
        epoch, b, indices = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + b)
        images, targets = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=g)))
            for i in indices.tolist():
                image, target = self._tile(self.records[self.owner[i]], g)
                images.append(image)
                targets.append(target)
        return images, targets

    def _tile(self, record: ImageBoxes, g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, target = self.data.image(record), self.data.targets(record)
        h, w = pixels.shape[1:]
        th, tw = min(self.tile, h), min(self.tile, w)
        y0 = int(torch.randint(0, h - th + 1, (), generator=g))
        x0 = int(torch.randint(0, w - tw + 1, (), generator=g))
        image = tv_tensors.Image(pixels[:, y0 : y0 + th, x0 : x0 + tw])
        clipped, keep = crop_boxes(target["boxes"], (x0, y0, x0 + tw, y0 + th))
        sample = {
            "boxes": tv_tensors.BoundingBoxes(clipped[keep], format="XYXY", canvas_size=(th, tw)),
            "labels": target["labels"][keep],
        }
        if self.augment is not None:
            image, sample = self.augment(image, sample)
        return image.as_subclass(torch.Tensor), {
            "boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
            "labels": sample["labels"] + 1,  # torchvision: 0 is the background
        }


class ImageSet(Dataset):
    """Whole images, padded into one uint8 batch, with their targets (0-based labels): evaluation."""

    def __init__(self, data: DetectionData, records: list[ImageBoxes]) -> None:
        self.data, self.records = data, records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int, torch.Tensor]) -> tuple[torch.Tensor, list[dict]]:
        _, _, indices = key
        records = [self.records[i] for i in indices.tolist()]
        return pad_batch([self.data.image(r) for r in records]), [self.data.targets(r) for r in records]


def pad_batch(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 ``(3, H_i, W_i)`` images -> ``(B, 3, max H, max W)``, padded with zeros at the bottom and right
    (so box coordinates are unchanged)."""
    h = max(int(i.shape[1]) for i in images)
    w = max(int(i.shape[2]) for i in images)
    out = torch.zeros(len(images), 3, h, w, dtype=torch.uint8)
    for k, image in enumerate(images):
        out[k, :, : image.shape[1], : image.shape[2]] = image
    return out


def make_loader(
    data: DetectionData,
    split: str,
    *,
    train: bool,
    batch_size: int,
    tile: int,
    augment: Any,
    seed: int,
    num_workers: int,
) -> DataLoader:
    """Training: tiles (lists of tensors and targets). Otherwise: whole images, a padded batch."""
    records = data.splits[split]
    dataset: Dataset = (
        TileSet(data, records, tile=tile, augment=augment, seed=seed) if train else ImageSet(data, records)
    )
    n = len(dataset)  # type: ignore[arg-type]
    sampler = EpochBatchSampler(n, batch_size, shuffle=train, seed=seed, drop_last=train and n > batch_size)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
