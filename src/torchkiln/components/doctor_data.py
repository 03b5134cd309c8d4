"""What ``kiln doctor`` reads of a data set: each split's items as arrays, texts or a series, with labels.

A task family gives it through its optional ``doctor_data`` hook (:class:`DoctorSource`); the checks in
``torchkiln.doctor`` read only these views, so none of them names a family. Images come through an
:class:`ImageSource`: in memory (a slice of a uint8 tensor) or read from files on demand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from torchkiln.core.config import RunConfig
from torchkiln.core.errors import DataError


class ImageSource(Protocol):
    """A split's images, all one size: ``take(start, stop)`` is a ``(B, C, S, S)`` uint8 array."""

    in_memory: bool  # False: each take decodes files (a full pass costs a read of every image)

    def __len__(self) -> int: ...

    def take(self, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ArrayImages:
    """Images already decoded: ``(N, C, S, S)`` uint8, a view, never a copy."""

    images: torch.Tensor | np.ndarray
    in_memory: bool = True

    def __len__(self) -> int:
        return len(self.images)

    def take(self, start: int, stop: int) -> np.ndarray:
        part = self.images[start:stop]
        return part.numpy() if isinstance(part, torch.Tensor) else np.asarray(part)


@dataclass(frozen=True)
class FileImages:
    """Image files decoded on demand, resized to ``size`` (shorter side, then a center crop) like training."""

    paths: Sequence[Path]
    size: int
    channels: int
    in_memory: bool = False

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, start: int, stop: int) -> np.ndarray:
        from torchkiln.components.images import decode_all

        images, _, bad = decode_all(list(self.paths[start:stop]), size=self.size, channels=self.channels)
        if bad:
            raise DataError(
                f"{bad[0][1]} kiln doctor reads every image the run trains on; expected each to decode as "
                f"it did when the data was checked. Fix the file, or remove it from the data set."
            )
        return images.numpy()


@dataclass(frozen=True)
class SplitItems:
    """One split as the checks read it; ``name(i)`` names item ``i`` in a finding ("'cats/3.png'", "#12")."""

    name: Callable[[int], str]
    labels: np.ndarray | None = None  # (N,) int64 class indices; None: unlabelled
    images: ImageSource | None = None
    texts: Sequence[str] | None = None

    def __len__(self) -> int:
        for part in (self.labels, self.images, self.texts):
            if part is not None:
                return len(part)
        return 0


@dataclass(frozen=True)
class Normalization:
    """The per-channel ``mean`` and ``std`` (of pixels / 255) a model normalizes with, and who chose them."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # "data.mean / data.std in the config", "the pretrained weights (model.pretrained)"


@dataclass(frozen=True)
class SeriesView:
    """A time series as read, before training sorts, regularizes or fills it, and as training then sees it.

    Attributes:
        time: ``(N,)`` datetime64[ns], in file order.
        values: ``(N, C)`` float64 target columns, NaN where a cell is empty.
        columns: the C column names.
        where: ``where(i)`` names row ``i`` of the file ("line 12 of 'x.csv'").
        freq: the frequency (a pandas alias), None if it cannot be told.
        grid: ``(T,)`` the regular timestamps from the first to the last at ``freq``; None without one.
        fill: what training does with a missing timestamp or value: "raise", "interpolate" or "ffill".
        targets: ``(T, C)`` the regular series training reads (filled); None if it cannot be prepared.
        filled: ``(T,)`` bool, rows of ``targets`` that were filled in; None with ``targets``.
        bounds: ``[start, end)`` rows of ``targets`` holding each split's forecast targets.
        horizon: steps forecast at once.
    """

    time: np.ndarray
    values: np.ndarray
    columns: list[str]
    where: Callable[[int], str]
    freq: str | None
    grid: np.ndarray | None
    fill: str
    targets: np.ndarray | None = None
    filled: np.ndarray | None = None
    bounds: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    horizon: int = 1


# ``fold(fit, held)``: train indices -> a data handle like ``prepare``'s whose train split is ``fit`` and
# whose val split is ``held`` (the label-noise check trains on one and predicts the other).
Fold = Callable[[np.ndarray, np.ndarray], Any]


def train_folds(data: Any, subset: Callable[[Any, np.ndarray], Any]) -> Fold:
    """The :data:`Fold` of a data handle whose ``splits`` map names to split objects (a dataclass):
    ``subset(split, indices)`` cuts one split; the fold's train and val are cut from ``data``'s train, its
    test is empty.

    Example:
        >>> fold = train_folds(image_data, _subset)
        >>> fold(np.arange(0, 50), np.arange(50, 100)).splits["val"]  # train items 50..99
    """
    train = data.splits["train"]
    empty = subset(train, np.zeros(0, dtype=np.int64))

    def fold(fit: np.ndarray, held: np.ndarray) -> Any:
        splits = {"train": subset(train, fit), "val": subset(train, held), "test": empty}
        return dataclasses.replace(data, splits=splits)

    return fold


@dataclass(frozen=True)
class DoctorData:
    """Everything the data checks read, as a family's ``doctor_data`` hook gives it.

    Attributes:
        splits: split name -> its items ("train", "val", "test"; an empty split may be left out).
        classes: label ``i`` is ``classes[i]``; empty for unlabelled data.
        normalization: what the model normalizes pixels with when the config or the weights chose it;
            None when it is computed from the train split itself (then it fits by construction).
        balancing: how the config already evens out classes ("data.sampler: balanced"), "" if it does not
            (``train.class_weights`` is read from the config by the checks).
        series: the time series of a forecasting task.
        fold: makes the data handles of the label-noise check; None: the task cannot be refit on part of
            train (the check then says so).
    """

    splits: Mapping[str, SplitItems] = field(default_factory=dict)
    classes: Sequence[str] = ()
    normalization: Normalization | None = None
    balancing: str = ""
    series: SeriesView | None = None
    fold: Fold | None = None


@runtime_checkable
class DoctorSource(Protocol):
    """Optional for a task: its data as ``kiln doctor``'s checks read it.

    ``cfg`` is the config as written (``model_fields_set`` tells what the user set); ``resolved`` and
    ``data`` are what ``prepare`` returned from it, both None when ``prepare`` refused the data: the task
    then returns what it can read without ``prepare`` (a series' raw rows), or an empty view.
    """

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData: ...


def doctor_data(task: Any, cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData | None:
    """``task.doctor_data(cfg, resolved, data)`` for a task with the hook; None for one without (no data
    checks run then)."""
    return task.doctor_data(cfg, resolved, data) if isinstance(task, DoctorSource) else None
