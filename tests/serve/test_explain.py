"""Grad-CAM heatmaps from the server: ``explain=true`` on predict (answered and logged as without it), the
unlogged explain route the dashboard uses, and the 422s for what cannot explain (an ONNX variant, a text
model, an unknown method), which name no file."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from torchkiln.artifacts.predictor import load_predictor
from torchkiln.core.errors import BundleError
from torchkiln.serve.predlog import read_predictions

from .test_app import b64, png

URL = "/v1/models/shapes/predict"
EXPLAIN = "/v1/models/shapes/explain"


def documented(doc: Any, path: str) -> list[str]:
    """The query and header parameters the OpenAPI document gives the predict route of one model."""
    return sorted(p["name"] for p in doc.json()["paths"][path]["post"]["parameters"])


def decoded(item: dict[str, Any]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item["heatmap_png"])))


def test_explain_true_adds_a_heatmap_per_input_to_the_logged_answer(
    tmp_path: Path, tiny_bundle: Path, serve_one: Callable[..., Any]
) -> None:
    images = [png(0), png(1, size=24)]
    expected = load_predictor(tiny_bundle, device="cpu").explain(images, method="gradcam++")

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", max_items=2) as client:
            r = await client.post(
                f"{URL}?explain=true&method=gradcam%2B%2B", json={"images": [b64(i) for i in images]}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            plain = await client.post(URL, json={"images": [b64(i) for i in images]})
            assert body["predictions"] == plain.json()["predictions"]
            assert "explanations" not in plain.json()
            assert [e["input"] for e in body["explanations"]] == [0, 1]
            for item, e, p in zip(body["explanations"], expected, body["predictions"], strict=True):
                assert item["label"] == p["label"] == e.explained and item["method"] == "gradcam++"
                assert base64.b64decode(item["heatmap_png"]) == e.png()  # the predictor's own drawing
                with decoded(item) as img:
                    assert img.size == (16, 16) and img.mode == "RGB"  # the model's input size
            files = [("images", ("0.png", images[0], "image/png"))]
            r = await client.post(f"{URL}?explain=true", files=files)
            assert r.status_code == 200 and len(r.json()["explanations"]) == 1
            r = await client.post(f"{URL}?explain=true", json={"images": [b64(png(i)) for i in range(3)]})
            assert (r.status_code, r.json()["type"]) == (422, "too_many_items")  # the limits hold
            r = await client.post(f"{URL}?explain=true&method=cam", json={"images": [b64(images[0])]})
            assert r.status_code == 422 and r.json()["detail"] == (
                "The request is invalid: query.method: Input should be 'gradcam' or 'gradcam++'."
            )

    asyncio.run(go())
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    assert [r.items for r in rows] == [2, 2, 1]  # the explained requests are logged as predictions
    assert all("heatmap_png" not in str(r.outputs) for r in rows)  # without their heatmaps


def test_the_explain_route_is_not_logged_and_takes_a_served_version(
    tmp_path: Path, tiny_bundle: Path, serve_one: Callable[..., Any]
) -> None:
    version = load_predictor(tiny_bundle, device="cpu").version

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes") as client:
            body = {"images": [b64(png(3))]}
            r = await client.post(f"{EXPLAIN}?version={version}", json=body)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert (
                answer["version"] == r.headers["x-model-version"] == version and answer["arm"] == "champion"
            )
            assert answer["explanations"][0]["label"] == answer["predictions"][0]["label"]
            assert answer["explanations"][0]["method"] == "gradcam"
            r = await client.post(f"{EXPLAIN}?version=0123abc", json=body)
            assert (r.status_code, r.json()["detail"]) == (
                404,
                f"Model 'shapes' does not serve version '0123abc'; it serves {version} (champion). Ask for "
                f"one of them, or leave version out for the champion's.",
            )
            r = await client.post("/v1/models/shape/explain", json=body)
            assert r.status_code == 404 and r.json()["type"] == "unknown_model"
            assert documented(await client.get("/openapi.json"), URL) == [
                "explain",
                "method",
                "x-request-key",
            ]

    asyncio.run(go())
    assert read_predictions(f"sqlite:///{tmp_path}/p.db") == []


def test_an_onnx_variant_and_a_text_model_get_a_422_that_says_why(
    tmp_path: Path, tiny_bundle: Path, tiny_text_bundle: Path, serve_one: Callable[..., Any]
) -> None:
    from torchkiln import api

    run_dir = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    variant = api.export(run_dir, bench_seconds=0.01).variant
    assert variant is not None
    onnx = (
        "This model is an exported onnxruntime variant: ONNX Runtime computes no gradients, so it cannot "
        "draw Grad-CAM heatmaps. Explain with the trained (eager) bundle it came from."
    )
    text = (
        "Task 'text-classification' cannot explain its answers: it has no explain method; heatmaps exist for "
        "image-classification. Explain a bundle of that task instead."
    )

    async def go() -> None:
        async with serve_one(tmp_path / "a", variant, "shapes") as client:
            body = {"images": [b64(png(4))]}
            for url in (f"{URL}?explain=true", EXPLAIN):
                r = await client.post(url, json=body)
                assert (r.status_code, r.json()["type"], r.json()["detail"]) == (422, "cannot_explain", onnx)
            assert (await client.post(URL, json=body)).status_code == 200  # it predicts all the same
            assert documented(await client.get("/openapi.json"), URL) == ["x-request-key"]
        async with serve_one(tmp_path / "b", tiny_text_bundle, "reviews") as client:
            r = await client.post("/v1/models/reviews/predict?explain=true", json={"texts": ["a fine film"]})
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (422, "cannot_explain", text)
            doc = await client.get("/openapi.json")
            assert documented(doc, "/v1/models/reviews/predict") == [
                "x-request-key"
            ]  # explain=true: not here

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(go())
    assert [r.items for r in read_predictions(f"sqlite:///{tmp_path}/a/p.db")] == [1]  # refused: not logged
    with pytest.raises(BundleError) as err:  # in Python, the message names the bundles
        load_predictor(variant).explain([png(4)])
    assert str(err.value) == onnx.replace("This model", f"Bundle '{variant}'").replace(
        "came from.", f"came from ({run_dir / 'bundle'})."
    )
