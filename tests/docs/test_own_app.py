"""docs/own-app.md: its FastAPI and Flask listings run as printed and answer what the predictor answers.

The listings are cut out of the page (fenced ``python`` blocks whose first line is ``# file: NAME.py``),
written to files and imported with ``KILN_BUNDLE`` pointing at the tiny bundle, so the page cannot drift.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from torchkiln import load_predictor

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-app.md"
LISTING = re.compile(r"^```python\n(# file: (\w+\.py)\n.*?)^```$", re.S | re.M)


def listings() -> dict[str, str]:
    return {name: code for code, name in LISTING.findall(DOC.read_text(encoding="utf-8"))}


def load(name: str, tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Write the listing to ``tmp_path/name`` and import it as its own module, with KILN_BUNDLE set."""
    path = tmp_path / name
    path.write_text(listings()[name], encoding="utf-8")
    monkeypatch.setenv("KILN_BUNDLE", str(bundle))
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image() -> bytes:
    arr = np.random.default_rng(1).integers(0, 60, (16, 16, 3), dtype=np.uint8)
    arr[:, 6:10] = 230  # a vertical bar, one of the tiny bundle's classes
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_the_page_has_both_listings_of_about_ten_lines() -> None:
    found = listings()
    assert set(found) == {"own_fastapi.py", "own_flask.py"}
    for code in found.values():
        assert len([ln for ln in code.splitlines() if ln.strip()]) <= 12
        assert 'load_predictor(os.environ["KILN_BUNDLE"])' in code


def test_fastapi_listing(
    tmp_path: Path, tiny_bundle: Path, image: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load("own_fastapi.py", tmp_path, tiny_bundle, monkeypatch)
    # The page explains why the endpoint is a plain def (Starlette's thread pool, not the event loop).
    assert not inspect.iscoroutinefunction(module.predict)
    client = TestClient(module.app, raise_server_exceptions=False)
    response = client.post("/predict", files={"file": ("x.png", image, "image/png")})
    assert response.status_code == 200, response.text
    assert response.json() == load_predictor(tiny_bundle).predict([image])[0]
    # The table's claim about the ten-line app: a file that is not an image becomes a bare 500.
    assert client.post("/predict", files={"file": ("x.png", b"not an image", "image/png")}).status_code == 500


def test_flask_listing(
    tmp_path: Path, tiny_bundle: Path, image: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load("own_flask.py", tmp_path, tiny_bundle, monkeypatch)
    client = module.app.test_client()
    response = client.post(
        "/predict", data={"file": (io.BytesIO(image), "x.png")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == load_predictor(tiny_bundle).predict([image])[0]
    bad = client.post(
        "/predict", data={"file": (io.BytesIO(b"not an image"), "x.png")}, content_type="multipart/form-data"
    )
    assert bad.status_code == 500
