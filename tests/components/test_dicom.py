"""DICOM radiographs through the one decoding path: exact pixels of the grayscale pipeline, bytes as files,
the server's header check, and the errors of files that are not DICOM images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.components.dicom import dicom_header, is_dicom, read_dicom
from torchkiln.components.image_requests import check_image
from torchkiln.components.images import (
    expand_inputs,
    image_header,
    open_image,
    peek_image,
    scan_folder,
    to_model_input,
)
from torchkiln.core.errors import ConfigError, DataError, PredictError

from .dicom_files import dicom_dataset, write_dicom

# 12-bit stored values; with slope 2 and intercept -1000 they become -1000, -200, -100, 0, 100, 1000.
STORED = np.array([[0, 400, 450], [500, 550, 1000]], dtype=np.uint16)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(open_image(path))


def test_rescale_then_window_gives_the_dicom_linear_function_exactly(tmp_path: Path) -> None:
    # Window center 0, width 401 (PS3.3 C.11.2.1.2.1): values <= -200.5 are black, > 199.5 white, between
    # ((x + 0.5) / 400 + 0.5) * 255: -200 -> 0.32 -> 0, -100 -> 64.07, 0 -> 127.8, 100 -> 191.6.
    path = write_dicom(tmp_path / "a.dcm", STORED, rescale=(2, -1000), window=(0, 401))
    img = open_image(path)
    assert img.mode == "L" and img.size == (3, 2)
    np.testing.assert_array_equal(np.asarray(img), [[0, 0, 64], [128, 192, 255]])


def test_the_window_applies_to_rescaled_values_not_stored_ones(tmp_path: Path) -> None:
    # Without the rescale, all stored values (0..1000) are above the window: all but 0 saturate white.
    path = write_dicom(tmp_path / "a.dcm", STORED, window=(0, 401))
    np.testing.assert_array_equal(pixels(path), [[128, 255, 255], [255, 255, 255]])


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = write_dicom(tmp_path / "2.dcm", STORED, rescale=(2, -1000), window=(0, 401))
    mono1 = write_dicom(
        tmp_path / "1.dcm", STORED, rescale=(2, -1000), window=(0, 401), photometric="MONOCHROME1"
    )
    np.testing.assert_array_equal(pixels(mono1), [[255, 255, 191], [127, 63, 0]])
    np.testing.assert_array_equal(pixels(mono1), 255 - pixels(mono2))


@pytest.mark.parametrize("rescale", [None, (2, -1000)])
def test_without_a_window_the_image_range_maps_to_0_255(tmp_path: Path, rescale: tuple | None) -> None:
    # 16-bit, 12 stored: 0..4095 -> 0..255 (a rescale is linear, so the result is the same).
    stored = np.array([[0, 100, 200], [300, 400, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, rescale=rescale)
    np.testing.assert_array_equal(pixels(path), [[0, 6, 12], [19, 25, 255]])


def test_bytes_decode_to_the_same_tensor_as_the_file(tmp_path: Path) -> None:
    stored = np.random.default_rng(0).integers(0, 4096, (40, 30)).astype(np.uint16)
    path = write_dicom(tmp_path / "chest.dcm", stored, rescale=(1, -1024), window=(1000, 3000))
    raw = path.read_bytes()
    assert check_image(raw, 0, 10_000) is raw  # the server's header check takes it as it is
    for channels in (1, 3):
        from_file = to_model_input(path, size=16, channels=channels)
        assert from_file.shape == (channels, 16, 16)
        assert torch.equal(to_model_input(raw, size=16, channels=channels), from_file)
        assert torch.equal(to_model_input(str(path), size=16, channels=channels), from_file)


def test_headers_give_size_and_a_16_bit_gray_mode(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.zeros((5, 7), np.uint16))
    assert image_header(path) == dicom_header(path) == (7, 5, "I;16")
    assert peek_image(path.read_bytes()) == (7, 5, "I;16")


def test_detection_by_magic_suffix_and_suffixless_files(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16))
    bare = tmp_path / "IM0001"
    bare.write_bytes(path.read_bytes())
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    assert is_dicom(path.read_bytes()) and is_dicom(path) and is_dicom(bare) and is_dicom(tmp_path / "x.DCM")
    assert not is_dicom(png.read_bytes()) and not is_dicom(png) and not is_dicom(tmp_path / "README")
    np.testing.assert_array_equal(pixels(bare), pixels(path))


def test_folder_scans_and_predict_inputs_find_dicom_files(tmp_path: Path) -> None:
    for split, cls in [("train", "NORMAL"), ("train", "PNEUMONIA"), ("test", "NORMAL")]:
        write_dicom(tmp_path / split / cls / "a.dcm", np.zeros((4, 4), np.uint16))
    bare = tmp_path / "train" / "NORMAL" / "IM0002"
    bare.write_bytes((tmp_path / "test" / "NORMAL" / "a.dcm").read_bytes())
    (tmp_path / "train" / "NORMAL" / "notes").write_text("not an image")
    items = scan_folder(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in items.paths] == [
        "test/NORMAL/a.dcm",
        "train/NORMAL/IM0002",
        "train/NORMAL/a.dcm",
        "train/PNEUMONIA/a.dcm",
    ]
    assert items.splits == ["test", "train", "train", "train"]
    assert len(expand_inputs([tmp_path / "train"])) == 3


def test_a_corrupt_dicom_file_is_a_data_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(DataError) as err:
        open_image(bad)
    assert str(err.value) == (
        f"DICOM file '{bad}' holds no image: it has no Rows, Columns, BitsAllocated, PixelData; expected a "
        f"single-frame DICOM image with pixel data (a radiograph). Replace or delete the file."
    )


def test_truncated_pixel_data_is_a_data_error(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm", np.zeros((8, 8), np.uint16))
    path.write_bytes(path.read_bytes()[:-40])
    assert image_header(path) == (8, 8, "I;16")  # the header is whole: the scan takes it, decoding does not
    with pytest.raises(DataError) as err:
        open_image(path)
    assert str(err.value) == (
        f"DICOM file '{path}' is corrupt or cannot be decoded (ValueError: The number of bytes of pixel data "
        f"is less than expected (88 vs 128 bytes) - the dataset may be corrupted, have an invalid group 0028 "
        f"element value, or the transfer syntax may be incorrect); expected a single-frame DICOM image with "
        f"pixel data. Replace or delete the file."
    )


def test_request_bytes_errors_speak_to_the_sender(tmp_path: Path) -> None:
    raw = b"\0" * 128 + b"DICM" + b"garbage"
    with pytest.raises(DataError) as err:
        open_image(raw)
    assert str(err.value) == (
        "The DICOM image holds no image: it has no Rows, Columns, BitsAllocated, PixelData; expected a "
        "single-frame DICOM image with pixel data (a radiograph). Send the whole DICOM Part 10 file (with "
        "its 128-byte preamble and DICM prefix)."
    )
    with pytest.raises(PredictError) as served:
        check_image(raw, 2, 10_000)
    assert str(served.value) == (
        "images[2] starts like a DICOM file but its header cannot be read. Expected a complete DICOM Part "
        "10 file; send the whole file again, or convert it to PNG."
    )


def test_too_many_pixels_and_several_frames_are_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "big.dcm", np.zeros((10, 20), np.uint16))
    with pytest.raises(DataError) as err:
        read_dicom(path, max_pixels=100)
    assert str(err.value) == (
        f"DICOM file '{path}' is 20x10 pixels, more than the 100 allowed. Downscale it before use."
    )
    ds = dicom_dataset(np.zeros((4, 4), np.uint16))
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, 4, 4), "<u2").tobytes()
    ds.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    with pytest.raises(DataError) as err:
        open_image(tmp_path / "two.dcm")
    assert str(err.value) == (
        f"DICOM file '{tmp_path / 'two.dcm'}' holds 2 frames; expected a single image (a radiograph). Save "
        f"the frame to classify as a file of its own."
    )


def test_without_pydicom_the_error_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ConfigError) as err:
        open_image(path)
    assert str(err.value) == (
        "Reading DICOM files (.dcm) needs pydicom, which is not installed; expected the medical extra. "
        "Fix: pip install 'torchkiln[medical]'."
    )
    with pytest.raises(PredictError) as served:
        check_image(path.read_bytes(), 0, 10_000)
    assert str(served.value) == (
        "images[0] is a DICOM file, which this server cannot read: pydicom is not installed. Expected PNG, "
        "JPEG, BMP, GIF, TIFF, WebP or PPM/PGM bytes; convert it to PNG, or ask the server's operator to "
        "install the medical extra (pip install 'torchkiln[medical]')."
    )
