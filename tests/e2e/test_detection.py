"""Object detection as a user runs it: fetch the catalog, train, evaluate, predict into a folder, the export
refusal, and the server's boxes with per-request options, logged for monitoring."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from torchkiln.serve.app import create_app
from torchkiln.serve.predlog import read_predictions
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.base import get_task

from ..conftest import kiln, running


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task's example (squares and discs, VOC) trained for 3 epochs with `kiln train`."""
    root = tmp_path_factory.mktemp("detect")
    raw = get_task("object-detection").example_config(root)
    raw["train"]["epochs"] = 3
    (root / "kiln.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return Path(kiln("train", "kiln.yaml", cwd=root).stdout.strip().splitlines()[-1])


def test_fetch_trees_writes_the_voc_layout(tmp_path: Path) -> None:
    done = kiln("datasets", "fetch", "trees", "--out", "data", cwd=tmp_path)
    assert done.stdout.strip() == "wrote 14 train images, 4 val images, 1 test image to data/trees"
    root = tmp_path / "data" / "trees"
    assert (root / "ImageSets" / "Main" / "test.txt").read_text() == "2019_YELL_2_541000_4977000_image_crop\n"
    assert (
        len(list((root / "Annotations").glob("*.xml")))
        == len(list((root / "JPEGImages").glob("*.png")))
        == 19
    )


def test_evaluate_writes_coco_figures_and_a_report_with_drawn_images(run_dir: Path) -> None:
    kiln("evaluate", str(run_dir), cwd=run_dir)
    metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert metrics["images"] == 3
    for key in ("map", "map_50", "map_75", "mar_100", "ap/disc", "ap/square"):
        assert -1 <= metrics["coco"][key] <= 1, key
    assert {"precision", "recall", "f1", "tp", "fp", "fn"} <= set(metrics["at_threshold"])
    html = (run_dir / "eval" / "test" / "report.html").read_text()
    assert (
        html.count("<img") >= 4 and "http://" not in html and "https://" not in html
    )  # 3 images + the curve


def test_predict_draws_the_boxes_into_a_folder(run_dir: Path) -> None:
    images = sorted((run_dir.parents[2] / "shapes-voc" / "JPEGImages").glob("test*.png"))
    done = kiln("predict", str(run_dir / "bundle"), *map(str, images), "--out", "drawn", cwd=run_dir)
    assert done.stdout.splitlines()[-1] == f"drew {len(images)} image(s) and predictions.jsonl in drawn"
    rows = [json.loads(line) for line in (run_dir / "drawn" / "predictions.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == list(map(str, images))
    for row, image in zip(rows, images, strict=True):
        drawn = Image.open(run_dir / "drawn" / row["drawn"])
        assert drawn.size == Image.open(image).size == (row["width"], row["height"])
        assert row["count"] == len(row["detections"]) == sum(row["classes"].values())
        for d in row["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= row["width"] and 0 <= y1 < y2 <= row["height"]


def test_export_says_a_detector_does_not_export(run_dir: Path) -> None:
    done = kiln("export", str(run_dir), cwd=run_dir, ok=False)
    assert done.returncode == 2  # a usage error, as for every KilnError
    bundle = run_dir / "bundle"
    assert " ".join(done.stderr.split()) == (
        f"error: '{bundle}' is an object-detection model, which kiln export does not export: a Faster R-CNN "
        "detector predicts large images tile by tile and keeps a data-dependent number of boxes per tile, "
        f"which ONNX export cannot trace. Serve the trained bundle itself: kiln serve {bundle} runs it on "
        "the torch runtime (CPU or CUDA)."
    )


def test_the_server_answers_boxes_with_the_request_options_and_logs_them(
    run_dir: Path, tmp_path: Path
) -> None:
    images = sorted((run_dir.parents[2] / "shapes-voc" / "JPEGImages").glob("test*.png"))
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in images]
    settings = load_settings(
        models=[{"uri": str(run_dir / "bundle"), "name": "shapes"}], log_url=f"sqlite:///{tmp_path}/p.db"
    )

    async def go() -> list[dict]:
        async with running(create_app(settings)) as client:
            url = "/v1/models/shapes/predict"
            every = await client.post(url, json={"images": encoded, "score_threshold": 0.0})
            two = await client.post(
                url, json={"images": encoded, "score_threshold": 0.0, "max_detections": 2}
            )
            none = await client.post(url, json={"image": encoded[0], "score_threshold": 1.0})
            files = [("files", (p.name, p.read_bytes(), "image/png")) for p in images[:1]]
            upload = await client.post(url, files=files)
            bad = await client.post(url, json={"images": encoded, "max_detections": 0})
            hostile = [
                {"images": ["not base64!"]},
                {"images": [base64.b64encode(b"GIF89a not really").decode()]},
                {"image": encoded[0], "score_threshold": "high"},
                {"image": encoded[0], "top_k": 3},  # a classifier's option
                {"image": encoded[0], "images": encoded},
            ]
            for body in hostile:
                r = await client.post(url, json=body)
                assert r.status_code == 422, (body, r.status_code, r.text)
            tiny = io.BytesIO()
            Image.new("L", (1, 1)).save(tiny, format="PNG")  # one grey pixel: answered, with no box
            r = await client.post(url, json={"image": base64.b64encode(tiny.getvalue()).decode()})
            assert r.status_code == 200 and r.json()["predictions"][0]["width"] == 1, r.text
            for r in (every, two, none, upload):
                assert r.status_code == 200, r.text
            assert bad.status_code == 422 and bad.json()["type"] == "invalid_input"
            assert none.json()["predictions"][0]["count"] == 0
            assert all(p["count"] <= 2 for p in two.json()["predictions"])
            assert upload.json()["predictions"][0]["width"] == Image.open(images[0]).width
            return every.json()["predictions"]

    answers = asyncio.run(go())
    assert any(a["count"] > 2 for a in answers)  # a barely trained model keeps many low-score boxes
    for answer in answers:
        scores = [d["score"] for d in answer["detections"]]
        assert scores == sorted(scores, reverse=True)
    logged = read_predictions(f"sqlite:///{tmp_path}/p.db", model="shapes")
    first = next(r for r in logged if r.items == len(images))
    assert [o["count"] for o in first.outputs] == [a["count"] for a in answers]
    assert [s["width"] for s in first.input_summary] == [Image.open(p).width for p in images]
    assert first.signals is not None and {"box_count", "mean_score", "embedding"} <= set(first.signals[0])
