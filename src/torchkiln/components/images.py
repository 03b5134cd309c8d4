"""Image preprocessing shared by training, evaluation and prediction, and the scan of image sources.

One function, :func:`to_model_input`, turns any image into the uint8 ``(C, S, S)`` tensor the model
sees: convert the mode, resize the shorter side to ``S``, center-crop, and optionally CLAHE. Training,
``kiln predict`` and the server all call it, so their preprocessing cannot drift apart. DICOM files and
bytes (``components/dicom.py``) go through the same path as PNG and JPEG.
"""

from __future__ import annotations

import csv
import glob
import io
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from torchkiln.components import dicom
from torchkiln.components.columns import match_column
from torchkiln.components.contrast import clahe as apply_clahe
from torchkiln.core.errors import DataError, did_you_mean

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".dcm"}
MAX_PIXELS = 50_000_000  # refuse decompression bombs before decoding
# The Pillow decoders for IMAGE_EXTENSIONS (PPM also reads .pgm): Image.open tries only these, so a file
# never reaches a decoder we do not accept, in training or in serving.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM"
# The server refuses images whose longer side is more than this many times the shorter one. Photos (3:2,
# 16:9), phone panoramas (about 4:1 to 8:1) and scanned pages or receipts (up to about 10:1) stay below it;
# a 1x2,000,000 strip is an attack, not a picture.
MAX_ASPECT_RATIO = 20
# to_model_input resizes the whole image while the resized image is at most this many times the model's
# square; beyond that it resamples only the square it keeps, so the work is bounded by the model's size.
_FULL_RESIZE_FACTOR = 4

ImageLike = str | Path | bytes | np.ndarray | Image.Image
# The Pillow modes that hold one grey value per pixel; every other mode (palette P included) is colour.
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def open_image(source: ImageLike) -> Image.Image:
    """Open a path, encoded bytes, a uint8 array or a PIL image, fully decoded (DICOM: 8-bit, windowed).

    Messages name a file by its path, with a fix that holds wherever the file came from (training data adds
    ``data.on_error``); encoded bytes (a served request) are "The image", with a fix for whoever sent them.

    Raises:
        DataError: the file is missing, not an image, truncated, or too large.
        ConfigError: a DICOM image, and pydicom (the medical extra) is not installed.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3):
            raise DataError(
                f"Image array has dtype {source.dtype} and shape {source.shape}; expected uint8 (H, W) "
                f"or (H, W, 3). Convert it with (array * 255).astype('uint8') if it is in [0, 1]."
            )
        return Image.fromarray(source.squeeze(-1) if source.ndim == 3 and source.shape[-1] == 1 else source)
    name = str(source) if isinstance(source, str | Path) else None
    subject = f"Image '{name}'" if name is not None else "The image"
    with _image_errors(name):
        if dicom.is_dicom(source):
            return dicom.read_dicom(source, max_pixels=MAX_PIXELS)
        img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=PIL_FORMATS)
        if img.width * img.height > MAX_PIXELS:
            raise DataError(
                f"{subject} is {img.width}x{img.height} pixels, more than the {MAX_PIXELS:,} allowed. "
                f"Downscale it before use."
            )
        img.load()
    return img


def bomb_pixels(exc: Image.DecompressionBombError) -> int | None:
    """The pixel count in Pillow's DecompressionBombError message, or None where it has none."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


@contextmanager
def _image_errors(name: str | None) -> Iterator[None]:
    """Turn Pillow's errors into a DataError that names the file (None: encoded bytes) and the fix."""
    subject = f"Image '{name}'" if name is not None else "The image"
    try:
        yield
    except FileNotFoundError:
        raise DataError(
            f"Image file '{name}' does not exist. Check the path or remove it from the data."
        ) from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked while reading the header
        n = bomb_pixels(exc)
        size = f"{n:,} pixels" if n is not None else "more pixels than Pillow's decompression-bomb limit"
        raise DataError(
            f"{subject} is {size}, more than the {MAX_PIXELS:,} allowed. Downscale it before use."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        fix = (
            "Replace or delete the file."
            if name is not None
            else f"Expected a complete {FORMAT_NAMES} file; send the whole file again or re-encode it."
        )
        raise DataError(
            f"{subject} is corrupt or not an image ({type(exc).__name__}: {exc}). {fix}"
        ) from None


def to_model_input(
    source: ImageLike, *, size: int, channels: int, clahe: float | None = None
) -> torch.Tensor:
    """Preprocess one image to a uint8 ``(C, size, size)`` tensor: mode, shorter side, center crop, then
    CLAHE with clip limit ``clahe`` (None: off) on that square, so its cost is bounded by the model's size.

    Example:
        >>> to_model_input("cat.jpg", size=224, channels=3).shape
        torch.Size([3, 224, 224])
    """
    img = _to_mode(open_image(source), channels, str(source) if isinstance(source, str | Path) else None)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        if nw * nh <= _FULL_RESIZE_FACTOR * size * size:
            img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
            img = img.crop((left, top, left + size, top + size))
        else:  # an elongated image: resample only the square kept (the same up to rounding), size² work
            sx, sy = w / nw, h / nh
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            img = img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    arr = np.array(img, dtype=np.uint8)  # a writable copy: PIL's buffer is read-only
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, S, S)
    x = torch.from_numpy(np.ascontiguousarray(arr))
    return x if clahe is None else apply_clahe(x, clip_limit=clahe)


def convert_images(images: torch.Tensor, *, channels: int, size: int) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> ``(N, channels, size, size)``: gray to RGB (or back), then the shorter side
    to ``size`` (antialiased) and a centre crop; in chunks, so 70,000 images never need two full copies.

    Example:
        >>> convert_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), channels=3, size=32).shape
        torch.Size([2, 3, 32, 32])
    """
    from torchvision.transforms.v2 import functional as TF  # here: only data loading needs it

    if images.shape[1] != channels:
        images = images.expand(-1, 3, -1, -1) if channels == 3 else TF.rgb_to_grayscale(images)
    if images.shape[-2:] != (size, size):
        images = torch.cat(
            [TF.center_crop(TF.resize(c, [size], antialias=True), [size]) for c in images.split(4096)]
        )
    return images.contiguous()


def image_tensor(source: ImageLike, *, channels: int = 3) -> torch.Tensor:
    """One image as it is, in uint8 ``(C, H, W)`` (``channels`` 1: grayscale, 3: RGB): no resize, no crop.

    Example:
        >>> image_tensor("field.png").shape  # a 1249 x 1035 aerial photo
        torch.Size([3, 1035, 1249])
    """
    img = _to_mode(open_image(source), channels, str(source) if isinstance(source, str | Path) else None)
    arr = np.array(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to_mode(img: Image.Image, channels: int, name: str | None = None) -> Image.Image:
    """Convert to L or RGB; 16-bit and float grayscale are rescaled, not clipped at 255.

    Raises:
        DataError: a color mode Pillow cannot convert (LAB: Pillow would copy L, a, b as R, G, B).
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(scaled.round().astype(np.uint8))
    target = "L" if channels == 1 else "RGB"
    try:
        if img.mode in ("LAB", "La"):
            raise ValueError(f"conversion from {img.mode} to {target} not supported")
        return img.convert(target)
    except ValueError:
        subject = f"Image '{name}'" if name is not None else "The image"
        raise DataError(
            f"{subject} has color mode {img.mode}, which cannot be converted to {target} here; expected a "
            f"grayscale, RGB, RGBA, palette, CMYK or YCbCr image. Convert it to RGB (e.g. save it as an "
            f"sRGB PNG or JPEG) and try again."
        ) from None


def image_header(path: Path) -> tuple[int, int, str]:
    """(width, height, mode) read from the header only; raises DataError like :func:`open_image`."""
    with _image_errors(str(path)):
        if dicom.is_dicom(path):
            return dicom.dicom_header(path)
        with Image.open(path, formats=PIL_FORMATS) as img:
            return img.width, img.height, img.mode


def peek_image(source: ImageLike) -> tuple[int, int, str] | None:
    """(width, height, mode) of any image from its header (arrays: from the shape), or None when it
    cannot be read; never raises (:func:`open_image` says what is wrong with such an input)."""
    if isinstance(source, Image.Image):
        return source.width, source.height, source.mode
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            return source.shape[1], source.shape[0], "L"
        modes = {1: "L", 3: "RGB", 4: "RGBA"}
        return (
            (source.shape[1], source.shape[0], modes[source.shape[2]])
            if source.ndim == 3 and source.shape[2] in modes
            else None
        )
    try:
        if dicom.is_dicom(source):
            return dicom.dicom_header(source)
        with Image.open(
            io.BytesIO(source) if isinstance(source, bytes) else source, formats=PIL_FORMATS
        ) as img:
            return img.width, img.height, img.mode
    except Exception:  # Pillow (and pydicom) raise many types for foreign or missing files
        return None


def is_image_file(path: Path) -> bool:
    """A file a scan takes: an image suffix, or no suffix and DICOM bytes (PACS exports name files IM0001)."""
    return path.is_file() and (path.suffix.lower() in IMAGE_EXTENSIONS or dicom.is_dicom(path))


@dataclass
class FileItems:
    """Image files found by a scan, before any split is made."""

    paths: list[Path]
    labels: list[str]
    splits: list[str] | None  # None when the source brings no split
    problems: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) skipped
    groups: list[str] | None = None  # a manifest's group (patient) per item, with data.group_column


def scan_folder(root: Path) -> FileItems:
    """Scan ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name in ("train", "val", "test")]
    if split_dirs and "train" not in {p.name for p in split_dirs}:
        raise DataError(
            f"Image folder '{root}' has {[p.name for p in split_dirs]} but no 'train/' folder. "
            f"Expected root/train/<class>/... (val/ and test/ optional), or root/<class>/... without splits."
        )
    layout = [(p.name, p) for p in split_dirs] if split_dirs else [(None, root)]
    paths: list[Path] = []
    labels: list[str] = []
    splits: list[str] = []
    for split, base in layout:
        for cls_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(cls_dir.rglob("*")):
                hidden = any(part.startswith(".") for part in f.relative_to(cls_dir).parts)
                if not hidden and is_image_file(f):
                    paths.append(f)
                    labels.append(cls_dir.name)
                    splits.append(split or "")
    if not paths:
        raise DataError(
            f"No images found in '{root}'. Expected one subfolder per class holding image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), optionally inside train/, val/ and test/."
        )
    return FileItems(paths, labels, splits if split_dirs else None)


def scan_data_files(path: Path, d: Any) -> FileItems:
    """The image files a data section names: a folder (``scan_folder``) or a CSV manifest (``scan_csv``).

    Args:
        path: the folder or the ``.csv`` file.
        d: the image ``data`` section: its ``on_error``, ``path_column``, ``label_column``, ``split_column``
            (required in the file when the config set it) and ``group_column``.

    Example:
        >>> scan_data_files(Path(cfg.data.path), cfg.data).paths[:1]
    """
    if path.is_dir():
        return scan_folder(path)
    return scan_csv(
        path,
        on_error=d.on_error,
        path_column=d.path_column,
        label_column=d.label_column,
        split_column=d.split_column,
        split_required="split_column" in d.model_fields_set,
        group_column=d.group_column,
    )


def scan_csv(
    path: Path,
    *,
    on_error: str,
    path_column: str = "path",
    label_column: str = "label",
    split_column: str | None = "split",
    split_required: bool = False,
    group_column: str | None = None,
) -> FileItems:
    """Scan an image manifest: a CSV with a header, one row per image.

    Args:
        path: the CSV file; relative image paths are relative to its folder.
        on_error: ``raise`` at the first bad row, or ``skip`` it and report it.
        path_column, label_column: the header names of the image path and the label; each column name
            may differ in case from the header's when one column matches (a warning says which).
        split_column: a column with train/val/test per row, used when the file has it (None: never).
        split_required: the config named ``split_column``, so the file must have it.
        group_column: a column the file must have, of a group id (a patient) per row; None: no groups.

    Raises:
        DataError: not UTF-8, a column is missing (with a did-you-mean), no rows, or a bad row.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a BOM
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"Manifest '{path}' is not valid UTF-8 ({exc}). Save it as UTF-8.") from None
    wanted = {"data.path_column": path_column, "data.label_column": label_column}
    if split_column is not None:
        wanted["data.split_column"] = split_column
    if group_column is not None:
        wanted["data.group_column"] = group_column
    found = {
        key: match_column(col, fields, setting=key, source=f"Manifest '{path}'")
        for key, col in wanted.items()
    }
    missing = {key: col for key, col in wanted.items() if found[key] is None}
    if not split_required:  # an optional split column is used when the file has it
        missing.pop("data.split_column", None)
    if missing:
        raise DataError(_missing_columns(path, fields, missing))
    path_column, label_column = cast(str, found["data.path_column"]), cast(str, found["data.label_column"])
    split_column = found.get("data.split_column")
    group_column = found.get("data.group_column")
    if not rows:
        raise DataError(
            f"Manifest '{path}' has a header but no rows. Add one line per image: "
            f"{path_column},{label_column}"
        )
    has_split = split_column is not None and split_column in fields
    items = FileItems([], [], [] if has_split else None, groups=[] if group_column is not None else None)
    for line, row in enumerate(rows, start=2):
        file = Path(row[path_column] or "")
        file = file if file.is_absolute() else path.parent / file
        split = (row.get(split_column) or "").strip() if has_split and split_column else ""
        label = (row.get(label_column) or "").strip()
        group = (row.get(group_column) or "").strip() if group_column is not None else None
        problem = _check_row(label, file, split, has_split) or _check_group(group, group_column)
        if problem:
            if on_error == "raise":
                raise DataError(f"Manifest '{path}', line {line}: {problem}")
            items.problems.append((f"{path.name}:{line}", problem))
            continue
        items.paths.append(file)
        items.labels.append(label)
        if items.splits is not None:
            items.splits.append(split)
        if items.groups is not None and group is not None:
            items.groups.append(group)
    return items


def _missing_columns(path: Path, fields: list[str], missing: dict[str, str]) -> str:
    """What to say when a manifest lacks a column: a header line to add, or which setting to change."""
    if not fields or any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in fields):  # data in line 1
        return (
            f"Manifest '{path}' has no header line: its first line is data ({','.join(fields)[:80]}). Add a "
            f"header line first, e.g. {','.join(missing.values())}"
        )
    cols = " and ".join(f"'{col}'" for col in missing.values())
    keys = " and ".join(missing)
    hints = "".join(did_you_mean(col, fields) for col in missing.values())
    group = ", data.group_column" if "data.group_column" in missing else ""
    return (
        f"Manifest '{path}' has the columns {', '.join(fields)}, but not {cols}, which {keys} "
        f"name{'' if len(missing) > 1 else 's'}.{hints} Name its columns in the config (data.path_column, "
        f"data.label_column, data.split_column{group}), or rename them in the file."
    )


def _check_row(label: str, file: Path, split: str, has_split: bool) -> str | None:
    if not label:
        return "the label is empty. Give every row a label, or set data.on_error: skip."
    if not file.is_file():
        return f"image file '{file}' does not exist. Fix the path or set data.on_error: skip."
    if has_split and split not in ("train", "val", "test"):
        return f"split '{split}' is not one of train, val, test. Fix the value or leave the column out."
    return None


def _check_group(group: str | None, column: str | None) -> str | None:
    if group == "":
        return (
            f"the group (column '{column}', data.group_column) is empty. Give every row its group, such as "
            f"the patient id, or set data.on_error: skip."
        )
    return None


def decode_all(
    paths: Sequence[Path], *, size: int, channels: int, clahe: float | None = None, workers: int = 4
) -> tuple[torch.Tensor, list[int], list[tuple[str, str]]]:
    """Decode and preprocess every file in parallel (Pillow releases the GIL while decoding); ``clahe`` as
    in :func:`to_model_input`.

    Returns:
        (images ``(M, C, S, S)`` uint8 for the M files that decoded, their indices, problems).
    """

    def one(p: Path) -> torch.Tensor | str:
        try:
            return to_model_input(p, size=size, channels=channels, clahe=clahe)
        except DataError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, paths, chunksize=64))
    ok = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    problems = [(str(paths[i]), r) for i, r in enumerate(results) if isinstance(r, str)]
    empty = torch.empty(0, channels, size, size, dtype=torch.uint8)
    stacked = torch.stack([results[i] for i in ok]) if ok else empty  # type: ignore[misc]
    return stacked, ok, problems


def expand_inputs(paths: Sequence[Path]) -> list[Path]:
    """Image files from what a user names: files as they are, a folder's images (recursively, sorted), and
    a quoted glob's matches (``"data/**/*.png"``, sorted). A path that is none of these is kept, so that
    opening it says what is wrong with it.

    Raises:
        DataError: a folder holds no image file, or a glob matches none.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if is_image_file(f))
            if not found:
                raise DataError(
                    f"Folder '{p}' holds no image file ({', '.join(sorted(IMAGE_EXTENSIONS))}). Name image "
                    f"files, or a folder that has some."
                )
            out += found
        elif not p.exists() and any(c in str(p) for c in "*?["):
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
            if not found:
                raise DataError(
                    f"No file matches '{p}'. Check the pattern (quote it, e.g. \"data/**/*.png\")."
                )
            out += found
        else:
            out.append(p)
    return out
