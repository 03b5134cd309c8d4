"""A GAN as a user runs it: train, kiln generate (a grid, seeded), the server's seeded PNGs and its errors."""

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
    """The task's example (bars, columns, squares) as a conditional GAN, trained for 2 epochs."""
    root = tmp_path_factory.mktemp("gan")
    raw = get_task("image-generation").example_config(root)
    raw["task"]["conditional"] = True
    raw["train"]["epochs"] = 2
    (root / "kiln.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return Path(kiln("train", "kiln.yaml", cwd=root).stdout.strip().splitlines()[-1])


def test_generate_writes_a_seeded_grid(run_dir: Path) -> None:
    done = kiln(
        "generate",
        str(run_dir),
        "--n",
        "6",
        "--nrow",
        "3",
        "--label",
        "square",
        "--seed",
        "4",
        "--out",
        "grid.png",
        cwd=run_dir,
    )
    assert done.stdout.strip() == "wrote 6 image(s) of class square, seeds 4..9, to grid.png"
    grid = Image.open(run_dir / "grid.png")
    assert grid.size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)  # 3 x 2 images of 28 px, 2 px apart
    kiln(
        "generate",
        str(run_dir / "bundle"),
        "--n",
        "6",
        "--nrow",
        "3",
        "--label",
        "square",
        "--seed",
        "4",
        "--out",
        "again.png",
        cwd=run_dir,
    )
    assert (run_dir / "again.png").read_bytes() == (run_dir / "grid.png").read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--label", "squares"],
            "error: label 'squares' is not a class of this model. Did you mean 'square'? "
            "Expected one of bar, column, square.",
        ),
        (["--n", "0"], "error: --n is 0; expected 1 to 4096 images. Ask for fewer, in several runs."),
        (
            ["--out", "grid.gif"],
            "error: --out grid.gif: expected an image file name ending in .png, .jpg, .jpeg, .webp.",
        ),
    ],
)
def test_generate_refuses_bad_options(run_dir: Path, args: list[str], message: str) -> None:
    base = ["generate", str(run_dir), "--out", "x.png"]
    done = kiln(*base, *args, cwd=run_dir, ok=False)
    assert done.returncode == 2 and " ".join(done.stderr.split()) == message
    assert not (run_dir / "grid.gif").exists()


def test_predict_points_to_generate(run_dir: Path) -> None:
    done = kiln("predict", str(run_dir), cwd=run_dir, ok=False)
    assert done.returncode == 2
    assert " ".join(done.stderr.split()) == (
        "error: A generator has no inputs to predict from. Draw images with: kiln generate BUNDLE --n 64 "
        "--out grid.png"
    )


def test_the_server_draws_seeded_pngs_and_logs_them(run_dir: Path, tmp_path: Path) -> None:
    settings = load_settings(
        models=[{"uri": str(run_dir / "bundle"), "name": "gan"}], log_url=f"sqlite:///{tmp_path}/p.db"
    )

    async def go() -> None:
        async with running(create_app(settings)) as client:
            url = "/v1/models/gan/predict"
            first = await client.post(url, json={"n": 3, "seed": 11, "label": "column"})
            again = await client.post(url, json={"n": 1, "seed": 12, "label": "column"})
            drawn = await client.post(url, json={"n": 2})
            for r in (first, again, drawn):
                assert r.status_code == 200, r.text
            answers = first.json()["predictions"]
            assert [(a["seed"], a["label"]) for a in answers] == [
                (11, "column"),
                (12, "column"),
                (13, "column"),
            ]
            assert again.json()["predictions"][0]["image"] == answers[1]["image"]  # seed 12 alone: the same
            png = Image.open(io.BytesIO(base64.b64decode(answers[0]["image"])))
            assert (png.size, png.mode) == ((28, 28), "L")
            seeds = [a["seed"] for a in drawn.json()["predictions"]]
            assert seeds[1] == seeds[0] + 1  # a random first seed, returned so the image can be drawn again
            bad = await client.post(url, json={"n": 1, "label": "columns"})
            assert bad.status_code == 422
            assert bad.json()["detail"] == (
                "Input 0: label 'columns' is not a class of this model. Did you mean 'column'? Expected one "
                "of bar, column, square."
            )
            for body in ({"n": 0}, {"n": 65}, {"n": "many"}, {"seed": -1}, {"images": ["x"]}):
                r = await client.post(url, json=body)
                assert r.status_code == 422, (body, r.text)
            files = [("files", ("a.png", b"\x89PNG", "image/png"))]
            assert (await client.post(url, files=files)).status_code in (415, 422)
            unknown = await client.post("/v1/models/gan/paint", json={})
            assert unknown.status_code == 404
            assert unknown.json()["detail"] == (
                "Model 'gan' (image-generation) answers no 'paint' requests. It answers: predict, stylize "
                "(POST /v1/models/gan/ACTION)."
            )

    asyncio.run(go())
    logged = read_predictions(f"sqlite:///{tmp_path}/p.db", model="gan")
    first = next(r for r in logged if r.items == 3)
    assert [s["seed"] for s in first.input_summary] == [11, 12, 13]
    assert first.signals is not None and {"brightness", "contrast", "embedding"} <= set(first.signals[0])


def test_evaluate_scores_against_the_real_versus_real_floor(run_dir: Path) -> None:
    done = kiln("evaluate", str(run_dir), cwd=run_dir)
    assert "real vs real (floor)" in done.stdout
    metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert metrics["n"] == 9 and metrics["features"] == "fashion-mnist-cnn"
    for part in ("model", "real_vs_real"):
        assert set(metrics[part]) >= {"fid", "kid", "precision", "recall"}
        assert metrics[part]["n_real"] == metrics[part]["n_fake"] == 9
    assert metrics["fid_ratio"] == pytest.approx(metrics["model"]["fid"] / metrics["real_vs_real"]["fid"])
    assert metrics["copying"]["ratio"] > 0
    assert metrics["class_accuracy"] is None  # the shapes are not Fashion-MNIST classes
    html = (run_dir / "eval" / "test" / "report.html").read_text()
    assert (
        html.count("<img") == 1 + 8 and "http://" not in html and "https://" not in html
    )  # a class grid, 8 rows of neighbours


def test_the_server_stylizes_on_its_own_route_one_at_a_time(run_dir: Path) -> None:
    from torchkiln.tasks.image_generation.style_serve import example_request

    settings = load_settings(models=[{"uri": str(run_dir / "bundle"), "name": "gan"}])
    app = create_app(settings)
    body = example_request()

    async def go() -> None:
        async with running(app) as client:
            url = "/v1/models/gan/stylize"
            r = await client.post(url, json=body)
            assert r.status_code == 200, r.text
            answer = r.json()["answer"]
            assert (r.json()["action"], answer["width"], answer["height"], answer["steps"]) == (
                "stylize",
                32,
                32,
                3,
            )
            assert Image.open(io.BytesIO(base64.b64decode(answer["image"]))).size == (32, 32)
            text = base64.b64encode(b"just some text, not an image").decode()
            bad = await client.post(url, json=body | {"style": text})
            assert bad.status_code == 422 and bad.json()["type"] == "invalid_input"
            assert bad.json()["detail"].startswith("'style' ")
            huge = await client.post(url, json=body | {"size": 5000})
            assert huge.status_code == 422 and "size" in huge.json()["detail"]
            wrong = await client.post(url, content=b"content=x", headers={"content-type": "text/plain"})
            assert wrong.status_code == 415
            slot = app.state.kiln.action_slot
            await slot.acquire()  # another stylize request is running
            try:
                busy = await client.post(url, json=body)
            finally:
                slot.release()
            assert busy.status_code == 429 and busy.headers["retry-after"] == "5"
            assert busy.json()["detail"] == (
                "This server is answering another 'stylize' request, which runs one at a time. Retry after "
                "the Retry-After seconds, or add replicas."
            )
            again = await client.post(url, json=body)
            assert again.status_code == 200
            assert again.json()["answer"]["image"] == answer["image"]  # the same seed: the same picture

    asyncio.run(go())
