"""DICOM radiographs (``.dcm``) to 8-bit grayscale pixels, as a radiologist's viewer shows them.

The steps are the DICOM grayscale pipeline (PS3.4 N.2.1): stored values -> modality LUT (rescale slope and
intercept, Hounsfield units on CT) -> VOI LUT (the window, or a lookup table) -> presentation, where
MONOCHROME1 (white is 0, most computed radiography) is inverted so that bone is always bright. The result is
scaled to 0..255 by the VOI output's own range (a window's saturated ends map to 0 and 255), so that every
file of a study comes out alike, not stretched image by image.

pydicom is the optional ``medical`` extra and is imported only when a DICOM file is read.
:mod:`torchkiln.components.images` calls this module from its one decoding path, so training, ``kiln
predict`` and the server read DICOM the same way.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchkiln.core.errors import ConfigError, DataError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
INSTALL_HINT = "pip install 'torchkiln[medical]'"
_MAGIC_AT, _MAGIC = 128, b"DICM"  # a Part 10 file: a 128-byte preamble, then "DICM"


def is_dicom(source: object) -> bool:
    """Whether ``source`` is DICOM: bytes with the ``DICM`` magic at offset 128; a path named ``.dcm`` or
    ``.dicom``, or a path without a suffix (PACS exports such as ``IM00001``) whose bytes have the magic.

    Example:
        >>> is_dicom(Path("chest.dcm")), is_dicom(b"\\x89PNG...")
        (True, False)
    """
    if isinstance(source, bytes):
        return source[_MAGIC_AT : _MAGIC_AT + 4] == _MAGIC
    if not isinstance(source, str | Path):
        return False
    path = Path(source)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix or not path.is_file():
        return False
    with path.open("rb") as fh:
        return fh.read(_MAGIC_AT + 4)[_MAGIC_AT:] == _MAGIC


def _pydicom() -> Any:
    """The pydicom module, or a ConfigError that names the extra (not a DataError: ``data.on_error: skip``
    must not quietly skip every DICOM file of a data set because a package is missing)."""
    try:
        import pydicom
        import pydicom.pixels  # apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ConfigError(
            f"Reading DICOM files (.dcm) needs pydicom, which is not installed; expected the medical extra. "
            f"Fix: {INSTALL_HINT}."
        ) from None
    return pydicom


@contextmanager
def _dicom_errors(name: str | None) -> Iterator[None]:
    """pydicom's many exception types -> one DataError naming the file (None: request bytes) and the fix.
    A missing file is left to the caller, which words it like any image's."""
    try:
        yield
    except (DataError, ConfigError, FileNotFoundError):
        raise
    except Exception as exc:  # InvalidDicomError, struct.error, EOFError, KeyError, NotImplementedError...
        raise DataError(
            f"{_subject(name)} is corrupt or cannot be decoded ({type(exc).__name__}: {exc}); expected a "
            f"single-frame DICOM image with pixel data. {_fix(name)}"
        ) from None


def _subject(name: str | None) -> str:
    return f"DICOM file '{name}'" if name is not None else "The DICOM image"


def _fix(name: str | None) -> str:
    if name is not None:
        return "Replace or delete the file."
    return "Send the whole DICOM Part 10 file (with its 128-byte preamble and DICM prefix)."


def _require_image(ds: Any, name: str | None, *, pixels: bool) -> None:
    """Refuse a DICOM object that is not an image (a structured report, a text file named .dcm)."""
    wanted = ("Rows", "Columns", "BitsAllocated") + (("PixelData",) if pixels else ())
    missing = [key for key in wanted if key not in ds]
    if missing:
        raise DataError(
            f"{_subject(name)} holds no image: it has no {', '.join(missing)}; expected a single-frame DICOM "
            f"image with pixel data (a radiograph). {_fix(name)}"
        )


def _read(source: str | Path | bytes, *, pixels: bool) -> Any:
    pydicom = _pydicom()
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    # force: a file named .dcm without the Part 10 preamble (older modalities) is still read; bytes only get
    # here with the DICM magic (is_dicom).
    return pydicom.dcmread(stream, force=True, stop_before_pixels=not pixels)


def dicom_header(source: str | Path | bytes) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the header alone, in Pillow's words: ``RGB`` for colour, ``L`` for
    8-bit and ``I;16`` for deeper grayscale (a radiograph's 10 to 16 bits).

    Raises:
        DataError: not DICOM, or a header without Rows and Columns.
        ConfigError: pydicom is not installed.
    """
    name = None if isinstance(source, bytes) else str(source)
    with _dicom_errors(name):
        ds = _read(source, pixels=False)
        _require_image(ds, name, pixels=False)
        width, height = int(ds.Columns), int(ds.Rows)
        mode = (
            "RGB" if int(ds.get("SamplesPerPixel", 1)) == 3 else "L" if int(ds.BitsAllocated) <= 8 else "I;16"
        )
    return width, height, mode


def read_dicom(source: str | Path | bytes, *, max_pixels: int) -> Image.Image:
    """Decode one DICOM image to an 8-bit ``L`` (or ``RGB``) PIL image through the grayscale pipeline above.

    Args:
        source: a path, or the file's bytes (a served request).
        max_pixels: refuse larger images before decoding their pixel data.

    Raises:
        DataError: corrupt, not single-frame, a colour model other than grayscale or RGB, or too large.
        ConfigError: pydicom is not installed.

    Example:
        >>> read_dicom("chest.dcm", max_pixels=50_000_000).mode
        'L'
    """
    name = None if isinstance(source, bytes) else str(source)
    subject = _subject(name)
    with _dicom_errors(name):
        ds = _read(source, pixels=True)
        _require_image(ds, name, pixels=True)
        width, height, frames = int(ds.Columns), int(ds.Rows), int(ds.get("NumberOfFrames") or 1)
        if width * height > max_pixels:
            raise DataError(
                f"{subject} is {width}x{height} pixels, more than the {max_pixels:,} allowed. "
                f"Downscale it before use."
            )
        if frames > 1:
            raise DataError(
                f"{subject} holds {frames} frames; expected a single image (a radiograph). Save the frame "
                f"to classify as a file of its own."
            )
        return Image.fromarray(_to_uint8(ds, subject))


def _to_uint8(ds: Any, subject: str) -> np.ndarray:
    """The pixel data through modality LUT, VOI LUT and MONOCHROME1 inversion to uint8 ``(H, W[, 3])``."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) == 3:  # colour: pydicom gives RGB (YBR converted)
        return arr if arr.dtype == np.uint8 else _scale(arr, float(arr.min()), float(arr.max()))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(
            f"{subject} has photometric interpretation {photometric}; expected MONOCHROME1, MONOCHROME2 or "
            f"RGB. Convert it to grayscale or RGB (e.g. with dcmtk's dcmconv or pydicom) and try again."
        )
    x = apply_modality_lut(arr, ds)  # rescale slope/intercept or the modality LUT: float64 or as stored
    if ds.get("VOILUTSequence") and x.dtype.kind == "f":
        x = np.rint(x).astype(np.int64)  # a VOI LUT is indexed by integer values
    lo, hi = _voi_range(ds, x)
    y = _scale(apply_voi_lut(x, ds), lo, hi)  # (H, W) uint8
    return 255 - y if photometric == "MONOCHROME1" else y  # MONOCHROME1: 0 is white


def _voi_range(ds: Any, x: np.ndarray) -> tuple[float, float]:
    """The range the VOI step maps into: a LUT's nominal depth, a window's saturated ends (found by sending
    the two extremes through the same pydicom function, so LINEAR, LINEAR_EXACT and SIGMOID all agree), or
    without either the image's own minimum and maximum."""
    from pydicom.pixels import apply_voi_lut

    if ds.get("VOILUTSequence"):
        return 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(over="ignore"):  # SIGMOID: exp of a huge number is inf, which saturates as it should
            ends = apply_voi_lut(np.array([-1e300, 1e300]), ds)
        lo, hi = sorted(float(v) for v in ends)
        if hi > lo:
            return lo, hi
    return float(x.min()), float(x.max())


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` from ``[lo, hi]`` to uint8 0..255 (rounded, clipped); a constant image is all 0."""
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.rint(np.clip((x.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
