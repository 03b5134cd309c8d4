"""From ``data.path`` to validated, split, preprocessed image data (statistics from train only).

``loader.py`` turns a split into whole, reproducibly augmented batches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from torchkiln.components import arrays, catalog
from torchkiln.components.contrast import clahe
from torchkiln.components.images import (
    GRAY_MODES,
    FileItems,
    convert_images,
    decode_all,
    image_header,
    scan_data_files,
    scan_folder,
)
from torchkiln.components.splits import SPLITS, check_coverage, class_list, group_ids, make_splits
from torchkiln.core.errors import DataError, did_you_mean
from torchkiln.core.io import beside
from torchkiln.tasks.base import RawItems
from torchkiln.tasks.image_classification.config import ImageDataConfig
from torchkiln.tasks.image_classification.profile import array_profile, raw_profile

MEMORY_BUDGET = 8 * 2**30  # decoded uint8 bytes kept in memory before falling back to lazy files
DECODE_CHUNK = 4096
STATS_SAMPLE = 20_000  # train images used for mean/std: plenty for two decimals


@dataclass(frozen=True)
class SplitData:
    """One split: decoded images in memory, or file paths decoded on demand.

    Images read from files keep their ``paths`` even when they are held in memory: the evaluation
    report names each mistake by its file. Arrays from the catalog have no file (``paths`` is None).
    """

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, S, S) uint8; None: decode ``paths`` on demand
    paths: tuple[Path, ...] | None = None
    clahe: float | None = None  # CLAHE's clip limit (data.contrast), for paths decoded on demand

    def __post_init__(self) -> None:
        if self.images is None and self.paths is None:
            raise DataError(
                f"A SplitData of {len(self.labels)} label(s) holds neither images nor paths; expected the "
                f"decoded images (a uint8 tensor (N, C, S, S)) or the image file paths, one per label. "
                f"Fix: pass images= or paths= when making it."
            )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ImageData:
    """Everything the image task needs from the data, resolved once before training."""

    classes: list[str]
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: dict[str, SplitData]
    problems: list[tuple[str, str]]  # (item, reason) left out under on_error: skip
    source: str
    profile: dict[str, Any] = field(default_factory=dict)  # the train images' raw form (profile.py)


def detect_format(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "folder"
    if p.is_file():
        suffixes = "".join(p.suffixes).lower()
        if suffixes.endswith(".csv"):
            return "csv"
        if suffixes.endswith(".npz"):
            return "npz"
        if "idx" in p.name or "ubyte" in p.name:
            return "idx"
        raise DataError(
            f"Cannot tell the format of '{path}'. Expected an image folder, a .csv manifest, an .npz file or "
            f"an IDX file. Set data.format explicitly."
        )
    if path in catalog.DATASETS:
        return "catalog"
    hint = did_you_mean(path, beside(path) + catalog.DATASETS.names())  # a folder there, or a catalog name
    raise DataError(
        f"data.path '{path}' is neither an existing file or folder nor a catalog dataset.{hint} Run "
        f"'kiln list datasets' for the catalog, or 'kiln datasets fetch NAME --out DIR' to write one out "
        f"as an image folder."
    )


def load_image_data(
    cfg: ImageDataConfig,
    *,
    seed: int,
    default_size: int | None = None,
    need_channels: int | None = None,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    only_splits: Collection[str] | None = None,
) -> ImageData:
    """Scan, validate, split and preprocess the images named by ``cfg``.

    Args:
        cfg: the ``data`` section.
        seed: makes the split (when the data has none) deterministic.
        default_size: size to use when the config gives none and image sizes vary (the model's).
        need_channels: channel count the model requires (3 for ImageNet weights), if any.
        stats: normalization (mean, std) the pretrained weights expect, used unless the config sets one.
        only_splits: decode only the files of these splits (evaluation needs one); the others come
            back empty. The split itself is still computed from every label, so it is the same.

    Raises:
        DataError: with the file and the fix, before any training happens.
    """
    fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    if fmt == "folder" and cfg.group_column is not None:
        raise DataError(
            f"data.group_column '{cfg.group_column}' names a CSV manifest's column, but data.path "
            f"'{cfg.path}' is an image folder, which has none. Fix: use data.group_pattern, a regex whose "
            f"first group finds the patient in each file name, or give a manifest."
        )
    if fmt in ("folder", "csv"):
        files = scan_folder(Path(cfg.path)) if fmt == "folder" else scan_data_files(Path(cfg.path), cfg)
        return _from_files(cfg, files, seed, default_size, need_channels, stats, only_splits)
    if cfg.group_column is not None or cfg.group_pattern is not None:
        key = "data.group_column" if cfg.group_column is not None else "data.group_pattern"
        raise DataError(
            f"{key} names the groups (patients) of image files, but data.path '{cfg.path}' is a {fmt} data "
            f"set of arrays, which has no file names or columns; expected an image folder or a CSV manifest. "
            f"Fix: remove {key}, or give the images as files with a manifest that has a patient column."
        )
    if fmt == "catalog":
        data = catalog.load_image_catalog(cfg.path)
    elif fmt == "npz":
        data = arrays.load_npz(cfg.path)
    else:
        data = arrays.load_idx_dataset(cfg.path)
    return _from_arrays(cfg, data, seed, default_size, need_channels, stats, only_splits)


def _resolve_channels(cfg: ImageDataConfig, found: list[str] | int, need: int | None) -> int:
    """The config's channels, else the model's, else what the data has: ``found`` is the arrays' channel
    count, or the PIL modes of the image files."""
    if cfg.channels is not None:
        return cfg.channels
    if need is not None:
        return need
    if isinstance(found, int):
        return found
    return 1 if all(m in GRAY_MODES for m in found) else 3


def _resolve_size(cfg: ImageDataConfig, sizes: list[tuple[int, int]], default: int | None) -> int:
    if cfg.image_size is not None:
        return cfg.image_size
    common = Counter(sizes).most_common(2)
    if len(common) == 1 and common[0][0][0] == common[0][0][1]:
        return common[0][0][0]
    if default is not None:
        return default
    return int(min(224, max(32, np.median([min(w, h) for w, h in sizes]))))


def _from_files(cfg, files: FileItems, seed, default_size, need_channels, stats, only_splits) -> ImageData:
    where = f"Data '{cfg.path}'"
    with ThreadPoolExecutor(max_workers=8) as pool:
        headers = list(pool.map(_safe_header, files.paths))
    bad = [(str(p), h) for p, h in zip(files.paths, headers, strict=True) if isinstance(h, str)]
    if bad and cfg.on_error == "raise":
        raise DataError(f"{bad[0][1]} {SKIP_FIX} ({len(bad)} bad image(s) in all.)")
    keep = [i for i, h in enumerate(headers) if not isinstance(h, str)]
    paths = [files.paths[i] for i in keep]
    labels = [files.labels[i] for i in keep]
    splits_in = np.array([files.splits[i] for i in keep]) if files.splits is not None else None
    groups = _groups(cfg, files, keep, where)
    classes = class_list(cfg, labels, splits_in, where)
    modes = [headers[i][2] for i in keep]  # type: ignore[index]
    channels = _resolve_channels(cfg, modes, need_channels)
    size = _resolve_size(cfg, [headers[i][:2] for i in keep], default_size)  # type: ignore[misc]
    label_idx = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
    explain = only_splits is None  # training: say when data.split's fractions go unused
    splits = make_splits(cfg, label_idx, splits_in, seed, groups=groups, where=where, explain=explain)
    check_coverage(classes, label_idx, splits, where=where, items="images")
    in_memory = cfg.cache == "memory" or (
        cfg.cache == "auto" and len(paths) * channels * size * size < MEMORY_BUDGET
    )
    todo = np.isin(splits, list(only_splits)) if only_splits else np.ones(len(paths), dtype=bool)
    images, row, ok_mask, problems = _decode_checked(
        cfg, paths, splits, size, channels, keep_all=in_memory, todo=np.flatnonzero(todo)
    )
    out: dict[str, SplitData] = {}
    for split in SPLITS:
        sel = np.flatnonzero((splits == split) & ok_mask)
        labels_t = torch.from_numpy(label_idx[sel])
        files_of_split = tuple(paths[i] for i in sel)
        if in_memory:
            out[split] = SplitData(labels_t, images=images[torch.from_numpy(row[sel])], paths=files_of_split)
        else:
            out[split] = SplitData(labels_t, paths=files_of_split, clahe=cfg.clahe)
    train_rows = row[(splits == "train") & (row >= 0)]
    mean, std = _stats(cfg, stats, images[torch.from_numpy(train_rows)])
    profile = raw_profile(headers[keep[i]] for i in np.flatnonzero(splits == "train"))  # type: ignore[misc]
    problems = files.problems + bad + problems
    return ImageData(classes, size, channels, mean, std, out, problems, str(cfg.path), profile)


def _groups(cfg: ImageDataConfig, files: FileItems, keep: list[int], where: str) -> np.ndarray | None:
    """The group (patient) of each kept file: the manifest's data.group_column, or data.group_pattern's
    first group in the file name; None without either."""
    if files.groups is not None:
        return np.array([files.groups[i] for i in keep], dtype=str)
    if cfg.group_pattern is not None:
        return group_ids([files.paths[i].name for i in keep], cfg.group_pattern, where=where)
    return None


SKIP_FIX = "Or set data.on_error: skip to leave such files out."  # training only, not kiln predict


def _decode_checked(cfg, paths, splits, size, channels, *, keep_all: bool, todo: np.ndarray):
    """Decode the files at indices ``todo`` now, so a corrupt image fails before training, not in epoch 7.

    Returns the kept images, ``row`` (index into them per path, -1 if not kept), which paths
    decoded, and the problems.
    Without ``keep_all`` (lazy data) only a train sample for the statistics is kept.
    """
    kept: list[torch.Tensor] = []
    row = np.full(len(paths), -1, dtype=np.int64)
    ok_mask = np.zeros(len(paths), dtype=bool)
    problems: list[tuple[str, str]] = []
    n_kept = 0
    for start in range(0, len(todo), DECODE_CHUNK):
        chunk = todo[start : start + DECODE_CHUNK]
        imgs, ok, bad = decode_all([paths[i] for i in chunk], size=size, channels=channels, clahe=cfg.clahe)
        problems += bad
        ok_abs = chunk[np.asarray(ok, dtype=np.int64)]
        ok_mask[ok_abs] = True
        want = np.ones(len(ok_abs), dtype=bool) if keep_all else (splits[ok_abs] == "train")
        if not keep_all:
            want &= np.cumsum(want) + n_kept <= STATS_SAMPLE
        kept.append(imgs[torch.from_numpy(np.flatnonzero(want))])
        row[ok_abs[want]] = np.arange(n_kept, n_kept + int(want.sum()))
        n_kept += int(want.sum())
    if problems and cfg.on_error == "raise":
        raise DataError(f"{problems[0][1]} {SKIP_FIX} ({len(problems)} bad image(s) in all.)")
    empty = torch.empty(0, channels, size, size, dtype=torch.uint8)
    return (torch.cat(kept) if kept else empty), row, ok_mask, problems


def _safe_header(p: Path) -> tuple[int, int, str] | str:
    try:
        return image_header(p)
    except DataError as exc:
        return str(exc)


def _from_arrays(
    cfg, data: arrays.ArrayData, seed, default_size, need_channels, stats, only_splits
) -> ImageData:
    imgs = torch.from_numpy(np.ascontiguousarray(data.images))
    imgs = imgs.unsqueeze(1) if imgs.ndim == 3 else imgs.permute(0, 3, 1, 2)  # (N, C, H, W)
    raw_shape = imgs.shape[1:]  # (C, H, W) before conversion: what the profile records
    data = _named_by_config(cfg, data)
    labels = [data.classes[i] for i in data.labels]
    classes = class_list(cfg, labels, data.splits, f"Dataset '{cfg.path}'", order=data.classes)
    label_idx = np.array([classes.index(lab) for lab in labels], dtype=np.int64)
    channels = _resolve_channels(cfg, imgs.shape[1], need_channels)
    size = _resolve_size(cfg, [(imgs.shape[3], imgs.shape[2])], default_size)
    where = f"Dataset '{cfg.path}'"
    splits = make_splits(cfg, label_idx, data.splits, seed, where=where, explain=only_splits is None)
    check_coverage(classes, label_idx, splits, where=f"Dataset '{cfg.path}'", items="images")
    # Convert and resize only what this run uses (limit_per_class, only_splits): upscaling all
    # 70,000 Fashion-MNIST images to 96x96 RGB would take minutes and 2 GB for 1,000 used ones.
    used = np.isin(splits, list(only_splits) if only_splits else list(SPLITS))
    imgs, label_idx, splits = imgs[torch.from_numpy(used)], label_idx[used], splits[used]
    imgs = convert_images(imgs, channels=channels, size=size)
    if cfg.clahe is not None:  # on the model's square, as to_model_input does for a served image
        imgs = clahe(imgs, clip_limit=cfg.clahe)
    out = {}
    for split in SPLITS:
        sel = torch.from_numpy(np.flatnonzero(splits == split))
        out[split] = SplitData(torch.from_numpy(label_idx)[sel], images=imgs[sel])
    mean, std = _stats(cfg, stats, out["train"].images)
    profile = array_profile(len(out["train"]), raw_shape[2], raw_shape[1], raw_shape[0])
    return ImageData(classes, size, channels, mean, std, out, [], str(cfg.path), profile)


def _named_by_config(cfg: ImageDataConfig, data: arrays.ArrayData) -> arrays.ArrayData:
    """``data`` with its labels named by data.classes (label i is data.classes[i]) when the file brings no
    names of its own ("0", "1", ... or MedMNIST's documented ones) and data.classes does not just list
    those names in another order."""
    if cfg.classes is None or data.own_names or set(data.classes) <= set(cfg.classes):
        return data
    top = int(data.labels.max()) if len(data.labels) else -1
    if top >= len(cfg.classes):
        raise DataError(
            f"Dataset '{cfg.path}' has labels 0..{top} but data.classes names {len(cfg.classes)} "
            f"({', '.join(cfg.classes)}); expected one name per label, label i named by data.classes[i]. "
            f"Fix: add the missing names to data.classes."
        )
    return replace(data, classes=list(cfg.classes))


def _stats(cfg, pretrained, train_images: torch.Tensor | None):
    """(mean, std) per channel: the config's, the pretrained weights', or the train split's."""
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if pretrained is not None:
        return tuple(pretrained[0]), tuple(pretrained[1])
    if train_images is None or len(train_images) == 0:
        raise DataError("The train split is empty; there is nothing to learn from. Add training images.")
    x = train_images[:STATS_SAMPLE].to(torch.float64).div_(255)  # (N, C, S, S)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def raw_images(split: SplitData) -> RawItems:
    """The images of ``split`` as a request carries them, for the reference profile: each file's bytes, or
    for an array data set (no files) the decoded ``(H, W, C)`` uint8 array."""

    def fetch(i: int) -> bytes | np.ndarray:
        if split.paths is not None:
            try:
                return split.paths[i].read_bytes()
            except OSError as exc:
                if split.images is None:
                    raise DataError(
                        f"Image '{split.paths[i]}' cannot be read ({exc}); the reference profile reads "
                        f"the held-out images the bundle's config names. Restore the data set, or point "
                        f"data.path at where it is now."
                    ) from None
        return cast(torch.Tensor, split.images)[i].permute(1, 2, 0).numpy()  # (C, S, S) -> (S, S, C)

    return RawItems(len(split), fetch)
