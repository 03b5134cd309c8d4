"""The one image preprocessing function, and the scans of image folders and CSV manifests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchkiln.components import images
from torchkiln.components.images import decode_all, open_image, scan_csv, scan_folder, to_model_input
from torchkiln.core.errors import DataError


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def gradient(h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 whose red channel is the column index and green channel the row index."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([cols, rows, np.full((h, w), 7)], axis=-1).astype(np.uint8)


# --- to_model_input -----------------------------------------------------------------------------
def test_center_crop_without_resize_keeps_the_middle() -> None:
    arr = gradient(10, 30)  # wide: the shorter side already has the target size
    x = to_model_input(arr, size=10, channels=3)
    assert x.dtype == torch.uint8 and x.shape == (3, 10, 10)
    np.testing.assert_array_equal(x.numpy(), arr[:, 10:20].transpose(2, 0, 1))


def test_shorter_side_is_resized_then_center_cropped(tmp_path: Path) -> None:
    arr = gradient(40, 20)  # tall: width 20 -> 10, height 40 -> 20, then rows 5..15 are kept
    x = to_model_input(save(tmp_path / "tall.png", arr), size=10, channels=3)
    assert x.shape == (3, 10, 10)
    expected = Image.fromarray(arr).resize((10, 20), Image.Resampling.BILINEAR, reducing_gap=None)
    np.testing.assert_array_equal(x.numpy(), np.asarray(expected)[5:15].transpose(2, 0, 1))


def test_upscales_small_images() -> None:
    assert to_model_input(gradient(4, 6), size=12, channels=3).shape == (3, 12, 12)


def test_channels_follow_the_request_not_the_file() -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = to_model_input(gray, size=8, channels=3)
    assert rgb.shape == (3, 8, 8)
    assert torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    one = to_model_input(gradient(8, 8), size=8, channels=1)
    assert one.shape == (1, 8, 8)


@pytest.mark.parametrize("kind", ["path", "bytes", "array", "pil"])
def test_every_input_kind_gives_the_same_tensor(tmp_path: Path, kind: str) -> None:
    arr = gradient(12, 18)
    path = save(tmp_path / "img.png", arr)
    source = {
        "path": path,
        "bytes": path.read_bytes(),
        "array": arr,
        "pil": Image.fromarray(arr),
    }[kind]
    expected = to_model_input(str(path), size=8, channels=3)
    assert torch.equal(to_model_input(source, size=8, channels=3), expected)


def test_model_input_is_built_on_writable_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    writable: list[bool] = []
    from_numpy = torch.from_numpy

    def spy(arr: np.ndarray) -> torch.Tensor:
        writable.append(arr.flags.writeable)
        return from_numpy(arr)

    monkeypatch.setattr(torch, "from_numpy", spy)
    to_model_input(Image.fromarray(np.zeros((8, 8), dtype=np.uint8)), size=8, channels=1)
    assert all(writable)


def test_refuses_a_huge_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    path = save(tmp_path / "big.png", gradient(16, 16))
    with pytest.raises(DataError) as info:
        to_model_input(path, size=8, channels=3)
    assert "is 16x16 pixels, more than the 100 allowed. Downscale it before use." in str(info.value)
    assert "big.png" in str(info.value)


def test_rejects_float_arrays() -> None:
    with pytest.raises(DataError) as info:
        open_image(np.zeros((4, 4), dtype=np.float32))
    assert "expected uint8 (H, W) or (H, W, 3)" in str(info.value)


def test_corrupt_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError) as info:
        to_model_input(bad, size=8, channels=3)
    msg = str(info.value)
    assert f"Image '{bad}' is corrupt or not an image" in msg
    assert msg.endswith("Replace or delete the file.")
    assert "on_error" not in msg  # the same function serves kiln predict, where data.on_error means nothing


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        to_model_input(tmp_path / "gone.png", size=8, channels=3)


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # does not compress
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = buf.getvalue()
    with pytest.raises(DataError, match=r"is corrupt or not an image \(OSError: image file is truncated\)"):
        to_model_input(data[: len(data) // 2], size=8, channels=3)


def test_decode_all_skips_and_reports(tmp_path: Path) -> None:
    good = [save(tmp_path / f"{i}.png", gradient(8, 8)) for i in range(3)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    paths = [good[0], bad, good[1], good[2]]
    imgs, ok, problems = decode_all(paths, size=8, channels=1, workers=2)
    assert imgs.shape == (3, 1, 8, 8) and ok == [0, 2, 3]
    assert [p for p, _ in problems] == [str(bad)]


# --- scan_folder --------------------------------------------------------------------------------
def test_scan_flat_folder(tiny_image_folder: Path) -> None:
    (tiny_image_folder / "dot" / "notes.txt").write_text("not an image")
    save(tiny_image_folder / ".hidden" / "x.png", gradient(4, 4))
    save(tiny_image_folder / "vbar" / "nested" / "deep.png", gradient(4, 4))
    items = scan_folder(tiny_image_folder)
    assert items.splits is None
    assert sorted(set(items.labels)) == ["dot", "hbar", "vbar"]
    assert len(items.paths) == 37  # 36 + the nested one; text files and hidden folders are left out
    assert items.labels[items.paths.index(tiny_image_folder / "vbar" / "nested" / "deep.png")] == "vbar"


def test_scan_train_val_test_layout(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "train", per_class=4)
    make_image_folder(tmp_path / "val", per_class=2)
    make_image_folder(tmp_path / "test", per_class=1)
    items = scan_folder(tmp_path)
    assert items.splits is not None
    assert {s: items.splits.count(s) for s in ("train", "val", "test")} == {"train": 12, "val": 6, "test": 3}
    assert all(p.parts[-3] == s for p, s in zip(items.paths, items.splits, strict=True))


def test_scan_split_folders_without_train(tmp_path: Path, make_image_folder) -> None:
    make_image_folder(tmp_path / "val", per_class=1)
    with pytest.raises(DataError) as info:
        scan_folder(tmp_path)
    assert f"Image folder '{tmp_path}' has ['val'] but no 'train/' folder." in str(info.value)


def test_scan_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match=f"No images found in '{tmp_path}'"):
        scan_folder(tmp_path)


# --- scan_csv -----------------------------------------------------------------------------------
@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    for name in ("a0", "a1", "b0"):
        save(tmp_path / "img" / f"{name}.png", gradient(8, 8))
    return tmp_path


def test_scan_csv_with_relative_paths_and_splits(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("path,label,split\nimg/a0.png,a,train\nimg/a1.png,a,test\nimg/b0.png,b,train\n")
    items = scan_csv(csv, on_error="raise")
    assert items.paths == [manifest_dir / "img" / n for n in ("a0.png", "a1.png", "b0.png")]
    assert items.labels == ["a", "a", "b"]
    assert items.splits == ["train", "test", "train"]
    assert items.problems == []


def test_scan_csv_without_split_column(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text(f"path,label\n{manifest_dir / 'img' / 'a0.png'},a\n")  # an absolute path
    items = scan_csv(csv, on_error="raise")
    assert items.splits is None and items.paths == [manifest_dir / "img" / "a0.png"]


def test_scan_csv_missing_column(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("file,label\nimg/a0.png,a\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise")
    assert str(info.value) == (
        f"Manifest '{csv}' has the columns file, label, but not 'path', which data.path_column names. Name "
        "its columns in the config (data.path_column, data.label_column, data.split_column), or rename them "
        "in the file."
    )  # the file has a header: no advice to add one


def test_scan_csv_matches_columns_by_case_with_a_warning(
    manifest_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("Path,LABEL,Split\nimg/a0.png,a,train\nimg/b0.png,b,test\n")
    with caplog.at_level("WARNING", logger="torchkiln.data"):
        items = scan_csv(csv, on_error="raise")
    assert items.labels == ["a", "b"] and items.splits == ["train", "test"]
    assert caplog.messages == [
        "data.path_column 'path' matched the column 'Path'; write that name to silence this",
        "data.label_column 'label' matched the column 'LABEL'; write that name to silence this",
        "data.split_column 'split' matched the column 'Split'; write that name to silence this",
    ]


def test_scan_csv_columns_that_differ_only_in_case_are_ambiguous(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("path,Label,LABEL\nimg/a0.png,a,b\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise")
    assert str(info.value) == (
        f"Manifest '{csv}' has no column 'label', and 2 columns differ from it only in case: 'Label' and "
        "'LABEL'; expected one column that data.label_column names. Fix: set `data.label_column` to one of "
        "them exactly, or rename the others."
    )


def test_scan_csv_reads_a_group_column_and_needs_it_when_named(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("path,label,patient_id\nimg/a0.png,a,p1\nimg/a1.png,a,\nimg/b0.png,b,p2\n")
    items = scan_csv(csv, on_error="skip", group_column="patient_id")
    assert items.groups == ["p1", "p2"] and items.labels == ["a", "b"]
    assert items.problems == [
        (
            "labels.csv:3",
            "the group (column 'patient_id', data.group_column) is empty. Give every row its group, such as "
            "the patient id, or set data.on_error: skip.",
        )
    ]
    assert scan_csv(csv, on_error="skip").groups is None
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise", group_column="patient")
    assert str(info.value) == (
        f"Manifest '{csv}' has the columns path, label, patient_id, but not 'patient', which "
        "data.group_column names. Did you mean 'patient_id'? Name its columns in the config "
        "(data.path_column, data.label_column, data.split_column, data.group_column), or rename them in the "
        "file."
    )


def test_scan_csv_without_a_header_line_says_to_add_one(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("img/a0.png,a\nimg/b0.png,b\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise")
    assert str(info.value) == (
        f"Manifest '{csv}' has no header line: its first line is data (img/a0.png,a). Add a header line "
        "first, e.g. path,label"
    )


def test_scan_csv_reads_the_columns_the_config_names(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("id,file,category,fold\n1,img/a0.png,a,train\n2,img/b0.png,b,val\n")
    items = scan_csv(
        csv, on_error="raise", path_column="file", label_column="category", split_column="fold",
        split_required=True,
    )  # fmt: skip
    assert (items.labels, items.splits) == (["a", "b"], ["train", "val"])
    with pytest.raises(DataError, match=r"but not 'split', which data\.split_column names"):
        scan_csv(csv, on_error="raise", path_column="file", label_column="category", split_required=True)


def test_scan_csv_missing_file_names_line_and_file(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("path,label\nimg/a0.png,a\nimg/gone.png,a\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise")
    missing = manifest_dir / "img" / "gone.png"
    assert f"Manifest '{csv}', line 3: image file '{missing}' does not exist." in str(info.value)


def test_scan_csv_skip_collects_problems(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text(
        "path,label,split\n"
        "img/a0.png,a,train\n"
        "img/gone.png,a,train\n"  # line 3: missing file
        "img/a1.png,,train\n"  # line 4: empty label
        "img/b0.png,b,holdout\n"  # line 5: unknown split
    )
    items = scan_csv(csv, on_error="skip")
    assert items.labels == ["a"]
    assert [where for where, _ in items.problems] == ["labels.csv:3", "labels.csv:4", "labels.csv:5"]
    reasons = [why for _, why in items.problems]
    assert "does not exist" in reasons[0]
    assert reasons[1].startswith("the label is empty.")
    assert reasons[2].startswith("split 'holdout' is not one of train, val, test.")


def test_scan_csv_accepts_a_byte_order_mark(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("\ufeffpath,label\nimg/a0.png,a\n", encoding="utf-8")
    assert scan_csv(csv, on_error="raise").labels == ["a"]


def test_scan_csv_without_rows_does_not_blame_the_header(manifest_dir: Path) -> None:
    csv = manifest_dir / "labels.csv"
    csv.write_text("path,label,split\n")
    with pytest.raises(DataError) as info:
        scan_csv(csv, on_error="raise")
    assert "has columns []" not in str(info.value)


def test_sixteen_bit_grayscale_keeps_its_contrast(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(ramp, (16, 1))).save(path)
    assert Image.open(path).mode == "I;16"
    row = to_model_input(path, size=16, channels=1)[0, 0].tolist()
    assert row == sorted(row) and len(set(row)) == 16


# --- hostile images (issue 16) -------------------------------------------------------------------
def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_an_elongated_image_is_resampled_only_where_the_crop_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (2, 5000, 3), dtype=np.uint8)  # 2x5000: 2,500:1
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", spy)
    x = to_model_input(arr, size=16, channels=3)
    assert sizes == [(16, 16)]  # not (40000, 16): the work is bounded by the model's input size
    monkeypatch.undo()
    full = Image.fromarray(arr).resize((40_000, 16), Image.Resampling.BILINEAR, reducing_gap=None)
    expected = np.asarray(full)[:, 19_992:20_008].transpose(2, 0, 1).astype(int)
    assert np.abs(x.numpy().astype(int) - expected).max() <= 1  # the same pixels, up to rounding


def test_a_lab_image_is_refused_with_the_fix() -> None:
    lab = _encoded(Image.new("LAB", (8, 8)), "TIFF")
    for channels, target in ((1, "L"), (3, "RGB")):
        with pytest.raises(DataError) as info:
            to_model_input(lab, size=8, channels=channels)
        assert str(info.value) == (
            f"The image has color mode LAB, which cannot be converted to {target} here; expected a "
            f"grayscale, RGB, RGBA, palette, CMYK or YCbCr image. Convert it to RGB (e.g. save it as an "
            f"sRGB PNG or JPEG) and try again."
        )


def test_a_decompression_bomb_gets_the_pixel_limit_message(tmp_path: Path) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 10_000, 8, 2, 0, 0, 0))
    bomb = header + chunk(b"IDAT", b"")
    with pytest.raises(DataError) as info:
        to_model_input(bomb, size=8, channels=3)
    assert str(info.value) == (
        "The image is 200,000,000 pixels, more than the 50,000,000 allowed. Downscale it before use."
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with pytest.raises(DataError) as info:
        images.image_header(path)
    assert str(info.value) == (
        f"Image '{path}' is 200,000,000 pixels, more than the 50,000,000 allowed. Downscale it before use."
    )


def test_only_the_formats_of_image_extensions_are_opened(tmp_path: Path) -> None:
    pcx = _encoded(Image.new("RGB", (8, 8)), "PCX")  # Pillow reads PCX; training's file scan does not
    with pytest.raises(DataError) as info:
        open_image(pcx)
    assert str(info.value).startswith("The image is corrupt or not an image (UnidentifiedImageError: ")
    assert str(info.value).endswith(
        "Expected a complete PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM file; send the whole file again or "
        "re-encode it."
    )
    assert "data.on_error" not in str(info.value)  # no training advice for bytes
    for fmt in images.PIL_FORMATS:  # every accepted format opens (PGM through the PPM decoder)
        mode = "L" if fmt == "PPM" else "RGB"
        assert open_image(_encoded(Image.new(mode, (4, 4)), fmt)).size == (4, 4)
