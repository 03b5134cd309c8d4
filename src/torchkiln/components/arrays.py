"""Readers for image data sets stored as arrays: IDX files (MNIST layout) and NumPy ``.npz`` files.

Both readers return an :class:`ArrayData`: uint8 images, int64 labels, class names and an optional split
per sample. This module needs only NumPy (no torch) and does no work at import time.
"""

from __future__ import annotations

import gzip
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from torchkiln.components.medmnist import medmnist_classes
from torchkiln.core.errors import DataError

SPLIT_NAMES = ("train", "val", "test")

# IDX type byte -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# Key pairs accepted in an .npz file. Keras uses x_train/y_train, MedMNIST uses train_images/train_labels.
_SINGLE_KEYS = (("x", "y"), ("images", "labels"))
_SPLIT_KEYS = {
    "train": (("x_train", "y_train"), ("train_images", "train_labels")),
    "val": (("x_val", "y_val"), ("val_images", "val_labels"), ("x_valid", "y_valid")),
    "test": (("x_test", "y_test"), ("test_images", "test_labels")),
}
_EXPECTED_NPZ_KEYS = (
    "(x, y), (images, labels), or per split (x_train, y_train, [x_val, y_val], x_test, y_test) / "
    "(train_images, train_labels, [val_images, val_labels], test_images, test_labels); "
    "optionally 'classes'"
)


@dataclass(frozen=True)
class ArrayData:
    """An in-memory image classification data set; arrays that break the rules below raise DataError.

    Attributes:
        images: uint8, ``(N, H, W)`` grayscale or ``(N, H, W, 3)`` RGB.
        labels: int64 ``(N,)``, indices into ``classes``.
        classes: class names; ``classes[i]`` is the name of label ``i``.
        splits: ``None``, or a str array ``(N,)`` of "train" / "val" / "test".
        own_names: the names come with the data (a ``classes`` array, classes.txt, the catalog); False for
            "0".."K-1" and MedMNIST's documented names, which data.classes may replace.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: np.ndarray | None = None
    own_names: bool = True

    def __post_init__(self) -> None:
        im, lb = self.images, self.labels
        if im.dtype != np.uint8 or not (im.ndim == 3 or (im.ndim == 4 and im.shape[-1] == 3)):
            raise DataError(
                f"ArrayData.images has dtype {im.dtype} and shape {im.shape}; expected uint8 (N, H, W) or "
                f"(N, H, W, 3). Fix: convert the images before building ArrayData."
            )
        if lb.dtype != np.int64 or lb.shape != (len(im),):
            raise DataError(
                f"ArrayData.labels has dtype {lb.dtype} and shape {lb.shape}; expected int64 ({len(im)},). "
                f"Fix: pass one integer label per image."
            )
        if len(lb) and (lb.min() < 0 or lb.max() >= len(self.classes)):
            raise DataError(
                f"ArrayData.labels range from {lb.min()} to {lb.max()} but there are {len(self.classes)} "
                f"classes; expected labels in 0..{len(self.classes) - 1}. Fix: pass one class name per label."
            )
        if self.splits is not None:
            bad = sorted(set(np.unique(self.splits).tolist()) - set(SPLIT_NAMES))
            if self.splits.shape != (len(im),) or bad:
                raise DataError(
                    f"ArrayData.splits has shape {self.splits.shape} and values {bad or 'ok'}; expected "
                    f"({len(im)},) with values in {SPLIT_NAMES}. Fix: pass None or one split per image."
                )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte[.gz]``; gzip is detected from the content.

    Returns:
        An array with the file's shape and dtype, in native byte order.

    Raises:
        DataError: the file is missing, is not IDX, or holds fewer or more bytes than its header says.

    Example:
        >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        >>> images.shape
        (10000, 28, 28)
    """
    path = Path(path)
    raw = _read_bytes(path)
    magic = raw[:4]
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(
            f"{path} is not an IDX file: it starts with bytes {magic.hex(' ') or '(empty)'}, but an IDX file "
            f"starts with 00 00 <type> <ndim>, type one of 08 09 0b 0c 0d 0e. "
            f"Fix: pass an IDX file such as train-images-idx3-ubyte(.gz), or download it again."
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[magic[2]]), magic[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path} is truncated: its header announces {ndim} dimensions ({header} header bytes) but the "
            f"file holds only {len(raw)} bytes. Fix: download or copy the file again."
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or corrupt: its header says shape {dims} of {dtype.name} "
            f"({expected} data bytes) but the file holds {len(raw) - header} data bytes. "
            f"Fix: download or copy the file again."
        )
    # frombuffer gives a read-only view of `raw`; astype copies into a writable, native-order array.
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Fix: check the path, or download the file.") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut .gz raises EOFError
        raise DataError(
            f"{path} cannot be read ({type(e).__name__}: {e}); expected a readable IDX file, plain or gzip. "
            f"Fix: download or copy the file again."
        ) from None
    return raw


def read_idx_pair(images: str | Path, labels: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an images IDX file and its labels IDX file, and check that they match.

    Args:
        images: images file, shape ``(N, H, W)`` (or ``(N, H, W, 3)``).
        labels: labels file, shape ``(N,)``.

    Returns:
        ``(images, labels)`` with labels as int64.

    Raises:
        DataError: a file is unreadable, the labels are not 1-D integers, or the counts differ.

    Example:
        >>> x, y = read_idx_pair("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    """
    x, y = read_idx(images), read_idx(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            f"{labels} holds {y.dtype.name} of shape {y.shape}; expected one integer label per image, "
            f"shape (N,). Fix: pass the labels file (…-labels-idx1-ubyte), not an images file."
        )
    if len(x) != len(y):
        raise DataError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; expected the same count. "
            f"Fix: pair each images file with its own labels file (train with train, t10k with t10k)."
        )
    return x, y.astype(np.int64)


def to_uint8_images(images: np.ndarray, *, source: str) -> np.ndarray:
    """Normalize an image array to uint8 ``(N, H, W)`` or ``(N, H, W, 3)``.

    Floats in [0, 1] are scaled by 255, other values in [0, 255] are cast. Single-channel axes
    (``(N, 1, H, W)``, ``(N, H, W, 1)``) are dropped; ``(N, 3, H, W)`` becomes ``(N, H, W, 3)``.

    Args:
        images: the raw array.
        source: where the array came from, for error messages.

    Returns:
        A uint8 array.

    Raises:
        DataError: the shape or value range cannot be read as images.

    Example:
        >>> to_uint8_images(np.zeros((2, 1, 8, 8), np.float32), source="demo").shape
        (2, 8, 8)
    """
    x = images
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = np.moveaxis(x, 1, -1)  # (N, C, H, W) -> (N, H, W, C)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise DataError(
            f"{source}: images have shape {images.shape}; expected (N, H, W), (N, H, W, 1), (N, 1, H, W), "
            f"(N, H, W, 3) or (N, 3, H, W). Fix: reshape flat images to (N, H, W) before saving."
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind not in "iuf":
        raise DataError(f"{source}: images have dtype {x.dtype}; expected numbers. Fix: save uint8 or float.")
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return np.rint(x * 255.0).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.rint(x).astype(np.uint8) if x.dtype.kind == "f" else x.astype(np.uint8)
    raise DataError(
        f"{source}: image values range from {lo} to {hi}; expected floats in [0, 1] or values in [0, 255]. "
        f"Fix: rescale the images before saving."
    )


def _to_labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # MedMNIST stores labels as (N, 1)
    if y.ndim != 1:
        raise DataError(
            f"{source}: labels have shape {y.shape}; expected (N,) or (N, 1), one class per image. "
            f"Fix: multi-label data is not supported; keep one integer label per image."
        )
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels have dtype {y.dtype}; expected integers. Fix: save int labels.")
    return y.astype(np.int64)


def _combine(
    where: Path, parts: list[tuple[str | None, np.ndarray, np.ndarray]], classes: list[str] | None
) -> ArrayData:
    """Concatenate ``(split, images, labels)`` parts into one :class:`ArrayData`, checking they fit."""
    if len({x.shape[1:] for _, x, _ in parts}) > 1 or any(len(x) != len(y) for _, x, y in parts):
        raise DataError(
            f"{where}: the arrays do not match (image, label shapes: "
            f"{[(x.shape, y.shape) for _, x, y in parts]}); expected one label per image and one image "
            f"size. Fix: re-create the data with matching arrays."
        )
    labels = np.concatenate([y for _, _, y in parts])
    own_names = classes is not None
    documented = medmnist_classes(where) if classes is None else None
    if documented is not None and (not len(labels) or labels.max() < len(documented)):
        classes = documented
    elif classes is None:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    elif len(labels) and labels.max() >= len(classes):
        raise DataError(
            f"{where}: labels go up to {labels.max()} but only {len(classes)} class names are given; "
            f"expected a name for every label. Fix: add the missing class names."
        )
    splits = None
    if parts[0][0] is not None:
        splits = np.concatenate([np.full(len(y), split) for split, _, y in parts])
    return ArrayData(np.concatenate([x for _, x, _ in parts]), labels, classes, splits, own_names)


def load_npz(path: str | Path) -> ArrayData:
    """Load an image classification data set from a NumPy ``.npz`` file.

    Accepted keys: ``(x, y)``, ``(images, labels)``, or per split ``x_train, y_train, [x_val, y_val],
    x_test, y_test`` (Keras) / ``train_images, train_labels, [val_images, ...]`` (MedMNIST; labels
    ``(N, 1)``), plus an optional ``classes`` array of names; without one, a MedMNIST file
    (``pneumoniamnist[_224].npz``...) gets its documented names, any other "0".."K-1". Pickled (object)
    arrays are refused.

    Args:
        path: the ``.npz`` file.

    Returns:
        An :class:`ArrayData`; ``splits`` is set when the file uses per-split keys.

    Raises:
        DataError: the file is unreadable, has none of the accepted keys, or holds invalid arrays.

    Example:
        >>> data = load_npz("pneumoniamnist.npz")
        >>> data.classes, data.images.shape
        (['normal', 'pneumonia'], (5856, 28, 28))
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise DataError(f"{path} does not exist. Fix: check the path.") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{path} cannot be read as .npz ({type(e).__name__}: {e}); expected a NumPy .npz archive "
            f"without pickled objects. Fix: save it with np.savez(path, x=images, y=labels)."
        ) from None
    parts = [
        (split, to_uint8_images(arrays[kx], source=f"{path}[{kx}]"), _to_labels(arrays[ky], f"{path}[{ky}]"))
        for split, kx, ky in _npz_keys(path, arrays)
    ]
    return _combine(path, parts, _npz_classes(path, arrays))


def _npz_keys(path: Path, arrays: dict[str, np.ndarray]) -> list[tuple[str | None, str, str]]:
    """Return ``(split, images_key, labels_key)`` per pair in the file; per-split keys win over (x, y)."""

    def pair(split: str | None, pairs: tuple[tuple[str, str], ...]) -> tuple[str | None, str, str] | None:
        for kx, ky in pairs:
            if (kx in arrays) != (ky in arrays):
                raise DataError(
                    f"{path} has keys {sorted(arrays)}: '{kx}' and '{ky}' must come together; expected "
                    f"{_EXPECTED_NPZ_KEYS}. Fix: save both the images and the labels of each split."
                )
            if kx in arrays:
                return split, kx, ky
        return None

    found = [p for split, pairs in _SPLIT_KEYS.items() if (p := pair(split, pairs))]
    found = found or [p for p in [pair(None, _SINGLE_KEYS)] if p]
    if not found:
        raise DataError(
            f"{path} has keys {sorted(arrays)}, none of which is an image/label pair; expected "
            f"{_EXPECTED_NPZ_KEYS}. Fix: save it with np.savez(path, x=images, y=labels, classes=names)."
        )
    return found


def _npz_classes(path: Path, arrays: dict[str, np.ndarray]) -> list[str] | None:
    if "classes" not in arrays:
        return None
    names = arrays["classes"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise DataError(
            f"{path}['classes'] has dtype {names.dtype} and shape {names.shape}; expected a 1-D array of "
            f"names. Fix: save classes=np.array(['cat', 'dog'])."
        )
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]


def load_idx_dataset(path: str | Path) -> ArrayData:
    """Load an IDX data set (MNIST layout) from an images file or a directory.

    Given an images file (``train-images-idx3-ubyte[.gz]``), its labels file is found beside it
    (``train-labels-idx1-ubyte[.gz]``) and no split is set. Given a directory holding both the ``train``
    and the ``t10k`` pairs, both are loaded with splits "train" and "test"; a directory with a single
    images file loads that one. Class names come from ``classes.txt`` (one per line) in the folder when
    present, else ``"0".."K-1"``.

    Args:
        path: an images IDX file or a directory.

    Returns:
        An :class:`ArrayData`.

    Raises:
        DataError: a file is missing or corrupt, or the counts or class names do not match.

    Example:
        >>> data = load_idx_dataset("/usr/share/datasets/fashion-mnist")
        >>> data.images.shape, sorted(set(data.splits))
        ((70000, 28, 28), ['test', 'train'])
    """
    path = Path(path)
    if path.is_dir():
        folder, files = path, _idx_images_in(path)
    elif path.is_file():
        folder, files = path.parent, [(None, path)]
    else:
        raise DataError(f"{path} does not exist. Fix: pass an IDX images file or the directory holding it.")
    parts = []
    for split, images in files:
        x, y = read_idx_pair(images, _labels_beside(images))
        parts.append((split, to_uint8_images(x, source=str(images)), y))
    classes = None
    if (folder / "classes.txt").is_file():
        lines = (folder / "classes.txt").read_text(encoding="utf-8").splitlines()
        classes = [line.strip() for line in lines if line.strip()]
    return _combine(path, parts, classes)


def _idx_images_in(folder: Path) -> list[tuple[str | None, Path]]:
    found = sorted(p for p in folder.iterdir() if "images" in p.name and not p.name.startswith("."))
    train = [p for p in found if p.name.startswith("train-images")]
    test = [p for p in found if p.name.startswith("t10k-images")]
    if len(train) == 1 and len(test) == 1:
        return [("train", train[0]), ("test", test[0])]
    if len(found) == 1:
        return [(None, found[0])]
    raise DataError(
        f"{folder} holds {len(found)} IDX images files ({', '.join(p.name for p in found) or 'none'}); "
        f"expected one, or exactly one train-images-… and one t10k-images-… file. "
        f"Fix: pass the images file itself, or remove the extra files."
    )


def _labels_beside(images: Path) -> Path:
    """``…-images-idx3-ubyte[.gz]`` -> the existing ``…-labels-idx1-ubyte[.gz]`` in the same folder."""
    name = images.name.removesuffix(".gz")
    old, new = ("images-idx3", "labels-idx1") if "images-idx3" in name else ("images", "labels")
    candidates = [images.with_name(name.replace(old, new) + ".gz"), images.with_name(name.replace(old, new))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"No labels file for {images}: looked for {' or '.join(c.name for c in candidates)} in "
        f"{images.parent}. Fix: put the labels file beside the images file under that name."
    )
