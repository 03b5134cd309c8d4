"""The built-in catalog: digits, Fashion-MNIST (Debian copy and download over loopback), image folders."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchkiln.components import catalog
from torchkiln.components.arrays import ArrayData
from torchkiln.components.catalog import DATASETS, load_catalog, safe_folder_name, write_image_folder
from torchkiln.core.errors import DataError, RegistryError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def test_registry_lists_entries_with_source_and_license():
    assert {"digits", "fashion-mnist"} <= set(DATASETS.names())
    for entry in DATASETS:
        assert entry.obj.summary and entry.obj.source and entry.obj.license
    with pytest.raises(RegistryError, match="Did you mean 'fashion-mnist'"):
        load_catalog("fashion_mnist")


def test_digits():
    data = load_catalog("digits")
    assert data.images.shape == (1797, 8, 8) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and data.images.min() == 0
    assert data.classes == [str(i) for i in range(10)] and data.splits is None
    assert np.bincount(data.labels).tolist()[:3] == [178, 182, 177]


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    # scikit-learn is optional (the datasets extra): the entry stays listed, loading it says what to install.
    for name in ("sklearn", "sklearn.datasets"):  # a None entry makes the import fail, even when cached
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DataError) as info:
        load_catalog("digits")
    assert str(info.value) == (
        "The 'digits' dataset ships with scikit-learn, which is not installed; expected the datasets extra. "
        "Fix: pip install 'torchkiln[datasets]' (or scikit-learn>=1.4)."
    )
    assert "digits" in DATASETS.names()


@needs_debian
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHKILN_CACHE", str(tmp_path))  # an empty cache: the Debian copy must be used
    data = load_catalog("fashion-mnist")
    assert data.images.shape == (70000, 28, 28) and data.images.dtype == np.uint8
    assert (data.splits == "train").sum() == 60000 and (data.splits == "test").sum() == 10000
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10
    # The first training items are an ankle boot, two t-shirts and a dress.
    assert data.labels[:4].tolist() == [9, 0, 0, 3]
    assert np.bincount(data.labels[:60000]).tolist() == [6000] * 10
    assert not list(tmp_path.iterdir())  # nothing was downloaded


# Zalando's README lists these MD5s; the gzip header of the originals holds the file name and this mtime.
ZALANDO = {
    "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", 1504176606),
    "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", 1504176606),
    "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", 1504176627),
    "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", 1504176627),
}


@needs_debian
@pytest.mark.parametrize("name", list(ZALANDO))
def test_hard_coded_hashes_match_zalando_and_debian_files(name):
    debian = (DEBIAN_DIR / name).read_bytes()
    canonical_sha, debian_sha = catalog.FASHION_MNIST_SHA256[name]
    assert hashlib.sha256(debian).hexdigest() == debian_sha
    # Debian's copy only lost the FNAME field and the mtime of the gzip header; put them back.
    md5, mtime = ZALANDO[name]
    header = b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + b"\x00\x03" + name[:-3].encode() + b"\0"
    original = header + debian[10:]
    assert hashlib.md5(original).hexdigest() == md5
    assert hashlib.sha256(original).hexdigest() == canonical_sha


# ---- the download path, against a file server on 127.0.0.1 --------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1; yields (folder, base URL, list of requested paths)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(_Quiet):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + np.array(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()


@pytest.fixture
def fake_fashion(server, tmp_path, monkeypatch):
    """Put small fake Fashion-MNIST files on the server and point the catalog at it (cache empty)."""
    www, url, requests = server
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (6, 28, 28))),
        "train-labels-idx1-ubyte.gz": _idx(np.array([9, 0, 1, 2, 3, 4])),
        "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (4, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": _idx(np.array([5, 6, 7, 8])),
    }
    hashes = {}
    for name, raw in files.items():
        (www / name).write_bytes(gzip.compress(raw))
        hashes[name] = (hashlib.sha256((www / name).read_bytes()).hexdigest(),)
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHKILN_CACHE", str(cache))
    monkeypatch.setenv("TORCHKILN_FASHION_MNIST_URL", url)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(catalog, "FASHION_MNIST_SYSTEM_DIRS", ())
    monkeypatch.setattr(catalog, "FASHION_MNIST_SHA256", hashes)
    return cache / "fashion-mnist", requests


def test_download_verifies_caches_and_loads(fake_fashion):
    cache, requests = fake_fashion
    data = load_catalog("fashion-mnist")
    assert data.images.shape == (10, 28, 28)
    assert data.splits.tolist() == ["train"] * 6 + ["test"] * 4
    assert data.labels.tolist() == [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert data.classes[9] == "Ankle boot"
    assert sorted(p.name for p in cache.iterdir()) == sorted(catalog.FASHION_MNIST_SHA256)
    assert len(requests) == 4
    load_catalog("fashion-mnist")  # second time: from the cache, no request
    assert len(requests) == 4


def test_download_fetches_only_missing_files(fake_fashion, tmp_path):
    cache, requests = fake_fashion
    cache.mkdir(parents=True)
    www = tmp_path / "www"
    (cache / "train-images-idx3-ubyte.gz").write_bytes((www / "train-images-idx3-ubyte.gz").read_bytes())
    assert load_catalog("fashion-mnist").images.shape == (10, 28, 28)
    assert sorted(requests) == sorted(
        f"/{n}" for n in catalog.FASHION_MNIST_SHA256 if "train-images" not in n
    )


def test_hash_mismatch_raises_and_leaves_no_file(fake_fashion, monkeypatch):
    cache, _ = fake_fashion
    monkeypatch.setattr(
        catalog, "FASHION_MNIST_SHA256", {n: ("0" * 64,) for n in catalog.FASHION_MNIST_SHA256}
    )
    with pytest.raises(DataError) as e:
        load_catalog("fashion-mnist")
    msg = str(e.value)
    assert f"expected {'0' * 64}" in msg and "the file was deleted" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and str(cache) in msg
    assert [p for p in cache.rglob("*")] == []


def test_download_failure_says_how_to_install(fake_fashion, tmp_path):
    cache, _ = fake_fashion
    for f in (tmp_path / "www").iterdir():
        f.unlink()  # the server now answers 404
    with pytest.raises(DataError) as e:
        load_catalog("fashion-mnist")
    msg = str(e.value)
    assert "HTTP Error 404" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert f"in {cache}" in msg
    assert not list(cache.rglob("*"))


# ---- write_image_folder ---------------------------------------------------------------------------------


def _small(splits: bool, rgb: bool = False) -> ArrayData:
    rng = np.random.default_rng(0)
    shape = (5, 6, 7, 3) if rgb else (5, 6, 7)
    return ArrayData(
        rng.integers(0, 256, shape, np.uint8),
        np.array([0, 1, 0, 2, 1]),
        ["T-shirt/top", "Trouser", "a:b"],
        np.array(["train", "train", "val", "test", "test"]) if splits else None,
    )


def test_write_image_folder_with_splits(tmp_path):
    data = _small(splits=True)
    out = write_image_folder(data, tmp_path / "out")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "classes.txt",
        "test/Trouser/00004.png",
        "test/a_b/00003.png",
        "train/T-shirt_top/00000.png",
        "train/Trouser/00001.png",
        "val/T-shirt_top/00002.png",
    ]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "test/a_b/00003.png")), data.images[3])
    assert (out / "classes.txt").read_text().splitlines() == data.classes
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_write_image_folder_without_splits_rgb(tmp_path):
    data = _small(splits=False, rgb=True)
    out = write_image_folder(data, tmp_path / "out")
    img = Image.open(out / "T-shirt_top" / "00002.png")
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), data.images[2])


def test_write_image_folder_refuses_non_empty_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match=r"not an empty folder.*overwrite=True"):
        write_image_folder(_small(splits=True), target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    write_image_folder(_small(splits=False), target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "Trouser" / "00001.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_image_folder_into_empty_folder_and_name_collisions(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image_folder(_small(splits=False), tmp_path / "empty")
    assert (tmp_path / "empty" / "a_b" / "00003.png").is_file()
    clash = ArrayData(np.zeros((2, 3, 3), np.uint8), np.array([0, 1]), ["a/b", "a_b"], None)
    with pytest.raises(DataError, match="which repeat"):
        write_image_folder(clash, tmp_path / "clash")
    assert not (tmp_path / "clash").exists()


@pytest.mark.parametrize(
    ("name", "folder"),
    [("T-shirt/top", "T-shirt_top"), ("Ankle boot", "Ankle boot"), ("..", "_"), ("x.", "x"), ("a\\b", "a_b")],
)
def test_safe_folder_name(name, folder):
    assert safe_folder_name(name) == folder


def test_download_accepts_any_listed_digest(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    accepted = ("1" * 64, hashlib.sha256(b"abc").hexdigest())
    dest = catalog.download(src.as_uri(), tmp_path / "cache" / "x.bin", sha256=accepted)
    assert dest.read_bytes() == b"abc"
    assert [p.name for p in dest.parent.iterdir()] == ["x.bin"]


def test_select_split_keeps_one_split_and_refuses_unknown_ones() -> None:
    from torchkiln.components.catalog import select_split

    data = ArrayData(
        np.zeros((4, 2, 2), np.uint8),
        np.array([0, 1, 0, 1]),
        ["a", "b"],
        np.array(["train", "test", "test", "train"]),
    )
    test = select_split(data, "test")
    assert test.labels.tolist() == [1, 0] and set(test.splits.tolist()) == {"test"}
    with pytest.raises(DataError, match=r"This data set has no 'val' split \(it has \['test', 'train'\]\)"):
        select_split(data, "val")


# ---- runtime checks (they hold under python -O: no assert does the checking) ---------------------------


@pytest.mark.parametrize(
    ("kind", "load", "returned", "expected"),
    [
        ("images", catalog.load_image_catalog, "str", "an ArrayData"),
        ("text", catalog.load_text_catalog, "ArrayData", "a TextTable"),
        (
            "timeseries",
            catalog.load_series_catalog,
            "ArrayData",
            "a pandas DataFrame (a time column, then the values)",
        ),
    ],
)
def test_an_entry_whose_loader_returns_another_kind_is_refused(monkeypatch, kind, load, returned, expected):
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # the entry ends with the test
    data = "not a data set" if returned == "str" else _small(splits=False)
    DATASETS.add(
        "mislabelled",
        catalog.CatalogEntry(load=lambda: data, summary="s", source="s", license="MIT", kind=kind),
    )
    with pytest.raises(DataError) as e:
        load("mislabelled")
    assert str(e.value) == (
        f"The catalog data set 'mislabelled' is registered as {kind}, but its loader returned a {returned}; "
        f"expected {expected}. Fix: make the entry's load function return {expected}, or register it with "
        f"the kind of what it returns."
    )


def test_a_file_removed_right_after_its_download_is_reported(fake_fashion, monkeypatch):
    cache, _ = fake_fashion
    download = catalog.download

    def download_then_lose(url, path, **kwargs):  # as if a cache cleaner ran in between
        download(url, path, **kwargs)
        if path.name == "t10k-labels-idx1-ubyte.gz":
            path.unlink()

    monkeypatch.setattr(catalog, "download", download_then_lose)
    with pytest.raises(DataError) as e:
        catalog.fashion_mnist_files()
    assert str(e.value) == (
        f"Fashion-MNIST's t10k-labels-idx1-ubyte.gz disappeared from {cache} right after being downloaded; "
        f"expected all of train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        f"t10k-labels-idx1-ubyte.gz there. Fix: make sure nothing else cleans {cache} while torchkiln runs "
        f"(or point TORCHKILN_CACHE at another folder), and load again."
    )
