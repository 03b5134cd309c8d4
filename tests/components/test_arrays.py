"""IDX and .npz readers: round trips, every accepted layout, and the errors for broken files."""

from __future__ import annotations

import ast
import gzip
from pathlib import Path

import numpy as np
import pytest

from torchkiln.components import arrays
from torchkiln.components.arrays import ArrayData, load_idx_dataset, load_npz, read_idx, read_idx_pair
from torchkiln.core.errors import DataError

IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Encode ``a`` as IDX by hand: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian data."""
    code = IDX_CODES[a.dtype.str[1:]]
    header = bytes([0, 0, code, a.ndim]) + np.array(a.shape, ">u4").tobytes()
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, *, gz: bool | None = None) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw) if (path.suffix == ".gz" if gz is None else gz) else raw)
    return path


def test_modules_do_not_import_torch():
    for module in (arrays, __import__("torchkiln.components.catalog", fromlist=["x"])):
        tree = ast.parse(Path(module.__file__).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], module.__name__


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == "u1":
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    out = read_idx(write_idx(tmp_path / f"a-idx3{suffix}", a))
    assert out.shape == (2, 3, 5)
    assert out.dtype == np.dtype(dtype)  # native byte order
    np.testing.assert_array_equal(out, a)
    out[0, 0, 0] = 1  # the result is writable


def test_gzip_is_detected_from_content_not_name(tmp_path):
    a = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels", a, gz=True)), a)


def test_bad_magic_message(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (
        f"{p} is not an IDX file: it starts with bytes 89 50 4e 47, but an IDX file starts with "
        f"00 00 <type> <ndim>, type one of 08 09 0b 0c 0d 0e. "
        f"Fix: pass an IDX file such as train-images-idx3-ubyte(.gz), or download it again."
    )


def test_truncated_data_message(tmp_path):
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10]))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(e.value) == (
        f"{p} is truncated or corrupt: its header says shape (4, 28, 28) of uint8 (3136 data bytes) "
        f"but the file holds 3126 data bytes. Fix: download or copy the file again."
    )


def test_truncated_header_and_cut_gzip_and_missing_file(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="truncated: its header announces 3 dimensions"):
        read_idx(short)
    cut = tmp_path / "cut.gz"
    noise = np.random.default_rng(0).integers(0, 256, (50, 28, 28), np.uint8)
    cut.write_bytes(gzip.compress(idx_bytes(noise))[:2000])
    with pytest.raises(DataError, match=r"cannot be read .*EOFError.*download or copy the file again"):
        read_idx(cut)
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_read_idx_pair_checks_counts_and_label_shape(tmp_path):
    x = write_idx(tmp_path / "x", np.zeros((3, 4, 4), np.uint8))
    y = write_idx(tmp_path / "y", np.array([0, 1, 2, 1], np.uint8))
    with pytest.raises(DataError, match=r"holds 3 images but .* holds 4 labels"):
        read_idx_pair(x, y)
    with pytest.raises(DataError, match="expected one integer label per image"):
        read_idx_pair(x, x)
    y3 = write_idx(tmp_path / "y3", np.array([0, 1, 2], np.uint8))
    images, labels = read_idx_pair(x, y3)
    assert images.shape == (3, 4, 4) and labels.dtype == np.int64


def make_mnist_dir(folder: Path, *, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x_train, x_test = rng.integers(0, 256, (6, 28, 28), np.uint8), rng.integers(0, 256, (4, 28, 28), np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{ext}", x_train)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", np.array([0, 1, 2, 0, 1, 2], np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.array([2, 1, 0, 0], np.uint8))  # labels not gzipped
    return x_train, x_test


def test_load_idx_dataset_directory_gives_train_and_test(tmp_path):
    x_train, x_test = make_mnist_dir(tmp_path)
    data = load_idx_dataset(tmp_path)
    assert data.images.shape == (10, 28, 28)
    np.testing.assert_array_equal(data.images[:6], x_train)
    np.testing.assert_array_equal(data.images[6:], x_test)
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 1, 0, 0]
    assert data.splits.tolist() == ["train"] * 6 + ["test"] * 4
    assert data.classes == ["0", "1", "2"]


def test_load_idx_dataset_single_file_and_classes_txt(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n\n")
    data = load_idx_dataset(tmp_path / "train-images-idx3-ubyte")
    assert data.images.shape == (6, 28, 28) and data.splits is None
    assert data.classes == ["cat", "dog", "bird"]
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match="labels go up to 2 but only 2 class names"):
        load_idx_dataset(tmp_path / "train-images-idx3-ubyte")


def test_load_idx_dataset_missing_labels(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError) as e:
        load_idx_dataset(tmp_path / "train-images-idx3-ubyte.gz")
    assert "looked for train-labels-idx1-ubyte.gz or train-labels-idx1-ubyte" in str(e.value)
    assert "Fix:" in str(e.value)


# ---- .npz ---------------------------------------------------------------------------------------------


def test_npz_x_y_float_channel_first(tmp_path):
    x = np.linspace(0, 1, 5 * 8 * 8, dtype=np.float32).reshape(5, 1, 8, 8)  # (N, 1, H, W) in [0, 1]
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1, 3]))
    data = load_npz(tmp_path / "d.npz")
    assert data.images.dtype == np.uint8 and data.images.shape == (5, 8, 8)
    assert data.images.max() == 255 and data.images.min() == 0
    assert data.classes == ["0", "1", "2", "3"] and data.splits is None
    assert data.labels.dtype == np.int64


def test_npz_images_labels_channel_last_with_classes(tmp_path):
    x = np.full((3, 6, 6, 1), 200, np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([1, 0, 1]), classes=np.array(["cat", "dog"]))
    data = load_npz(tmp_path / "d.npz")
    assert data.images.shape == (3, 6, 6) and data.classes == ["cat", "dog"]


def test_npz_rgb_channel_first_becomes_channel_last(tmp_path):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1]))
    data = load_npz(tmp_path / "d.npz")
    assert data.images.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(data.images[1, 2, 3], x[1, :, 2, 3])


def test_npz_keras_split_keys(tmp_path):
    z = np.zeros
    np.savez(tmp_path / "k.npz", x_train=z((4, 5, 5)), y_train=z(4), x_test=z((2, 5, 5)), y_test=np.ones(2))
    data = load_npz(tmp_path / "k.npz")
    assert data.splits.tolist() == ["train"] * 4 + ["test"] * 2
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_npz_medmnist_layout(tmp_path):
    # MedMNIST: uint8 (N, 28, 28) images and uint8 (N, 1) labels, per split.
    rng = np.random.default_rng(1)
    split_n = {"train": 7, "val": 2, "test": 3}
    keys = {f"{s}_images": rng.integers(0, 256, (n, 28, 28), np.uint8) for s, n in split_n.items()}
    keys |= {f"{s}_labels": rng.integers(0, 2, (n, 1), np.uint8) for s, n in split_n.items()}
    np.savez_compressed(tmp_path / "pneumoniamnist.npz", **keys)
    data = load_npz(tmp_path / "pneumoniamnist.npz")
    assert data.images.shape == (12, 28, 28) and data.labels.shape == (12,)
    assert data.splits.tolist() == ["train"] * 7 + ["val"] * 2 + ["test"] * 3
    np.testing.assert_array_equal(data.images[7:9], keys["val_images"])
    np.testing.assert_array_equal(data.labels[-3:], keys["test_labels"][:, 0])
    # MedMNIST's files carry no class names; torchkiln knows the documented ones, which data.classes may
    # replace (own_names is False).
    assert data.classes == ["normal", "pneumonia"] and not data.own_names


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("pneumoniamnist_224.npz", ["normal", "pneumonia"]),
        ("breastmnist.npz", ["malignant", "normal, benign"]),
        ("octmnist_64.npz", ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"]),
        ("retinamnist.npz", ["0", "1"]),  # graded 0..4: its names are its digits
        ("pneumonia.npz", ["0", "1"]),  # not a MedMNIST file name
    ],
)
def test_npz_class_names_of_known_medmnist_files(tmp_path, name, classes):
    labels = np.arange(len(classes)).reshape(-1, 1).astype(np.uint8)
    np.savez(tmp_path / name, train_images=np.zeros((len(classes), 28, 28), np.uint8), train_labels=labels)
    assert load_npz(tmp_path / name).classes == classes


def test_npz_own_classes_win_over_the_documented_names(tmp_path):
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 1]), classes=np.array(["healthy", "sick"]))
    data = load_npz(path)
    assert data.classes == ["healthy", "sick"] and data.own_names


def test_npz_bad_keys_names_file_found_and_expected(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, pixels=np.zeros((2, 4, 4)), targets=np.zeros(2))
    with pytest.raises(DataError) as e:
        load_npz(p)
    msg = str(e.value)
    assert str(p) in msg and "['pixels', 'targets']" in msg
    assert "x_train, y_train" in msg and "train_images, train_labels" in msg and "Fix: save it" in msg


@pytest.mark.parametrize(
    ("arrays_in", "match"),
    [
        ({"x_train": np.zeros((2, 4, 4))}, "'x_train' and 'y_train' must come together"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros((2, 3))}, "multi-label data is not supported"),
        ({"x": np.zeros((2, 16)), "y": np.zeros(2)}, r"reshape flat images to \(N, H, W\)"),
        ({"x": np.full((2, 4, 4), 300.0), "y": np.zeros(2)}, "image values range from 300.0 to 300.0"),
        ({"x": np.zeros((2, 4, 4)), "y": np.zeros(3)}, "the arrays do not match"),
        (
            {"x": np.zeros((2, 4, 4)), "y": np.array([0, 2]), "classes": np.array(["a", "b"])},
            "labels go up to 2",
        ),
        ({"x": np.zeros((2, 4, 4)), "y": np.array([0.5, 1])}, "expected integers"),
    ],
)
def test_npz_invalid_arrays(tmp_path, arrays_in, match):
    np.savez(tmp_path / "d.npz", **arrays_in)
    with pytest.raises(DataError, match=match):
        load_npz(tmp_path / "d.npz")


def test_npz_refuses_pickles_and_non_npz(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.zeros((2, 4, 4)), y=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="without pickled objects"):
        load_npz(tmp_path / "obj.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match=r"cannot be read as \.npz"):
        load_npz(tmp_path / "text.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")


def test_array_data_checks_its_invariants():
    x, y = np.zeros((2, 4, 4), np.uint8), np.array([0, 1])
    ArrayData(x, y, ["a", "b"], np.array(["train", "test"]))
    with pytest.raises(DataError, match="expected uint8"):
        ArrayData(x.astype(np.float32), y, ["a", "b"], None)
    with pytest.raises(DataError, match=r"expected labels in 0\.\.0"):
        ArrayData(x, y, ["a"], None)
    with pytest.raises(DataError, match=r"values \['training'\]"):
        ArrayData(x, y, ["a", "b"], np.array(["training", "test"]))
