"""The server app in-process: predictions, every refusal with its exact message, traffic, reload, metrics.

Requests go through httpx's ASGI transport inside the app's real lifespan, so batching, the model
threads and the prediction log all run as in production; only the sockets are left out (the e2e tests
cover those).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from torchkiln import load_predictor
from torchkiln.artifacts.predictor import Predictor
from torchkiln.serve.app import create_app
from torchkiln.serve.predlog import read_predictions
from torchkiln.serve.settings import load_settings

from ..conftest import running

TOKEN = "a-test-admin-token-0123456789"
URL = "/v1/models/shapes/predict"


def png(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@asynccontextmanager
async def serving(
    tmp_path: Path, bundle: Path, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app with its lifespan running and its models loaded; yields (client, app)."""
    model = {"uri": str(bundle), "name": "shapes"} | settings.pop("model", {})
    s = load_settings(models=[model], log_url=f"sqlite:///{tmp_path}/p.db", admin_token=TOKEN, **settings)
    app = create_app(s)
    async with running(app) as client:
        yield client, app


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def test_json_and_multipart_answers_equal_the_predictor(tmp_path: Path, tiny_bundle: Path) -> None:
    images = [png(0), png(1), png(2)]
    expected = load_predictor(tiny_bundle).predict(images, top_k=2)

    async def go() -> None:
        async with serving(tmp_path, tiny_bundle) as (client, _):
            r = await client.post(URL, json={"images": [b64(i) for i in images], "top_k": 2})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "shapes" and body["arm"] == "champion"
            assert body["version"] == r.headers["x-model-version"] == load_predictor(tiny_bundle).version
            files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
            r2 = await client.post(URL, files=files, data={"top_k": "2"})
            assert r2.status_code == 200, r2.text
            single = await client.post(URL, json={"image": "data:image/png;base64," + b64(images[0])})
            for answers in (body["predictions"], r2.json()["predictions"]):
                assert [a["label"] for a in answers] == [e["label"] for e in expected]
                for a, e in zip(answers, expected, strict=True):
                    assert a["score"] == pytest.approx(e["score"], abs=1e-6)
                    assert [t["label"] for t in a["top_k"]] == [t["label"] for t in e["top_k"]]
            assert single.json()["predictions"][0]["label"] == expected[0]["label"]
            listed = (await client.get("/v1/models")).json()["models"][0]
            assert listed["task"] == "image-classification" and listed["ready"] is True
            assert listed["input_schema"]["title"] == "ImagePredictRequest"
            assert listed["traffic"] == {"champion": 1.0}

    run(go())
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    assert len(rows) == 3 and [r.items for r in rows] == [3, 3, 1]
    assert rows[0].input_summary[0]["sha256"] == hashlib.sha256(images[0]).hexdigest()
    assert rows[0].payload is None  # sampling is off by default


BAD_INPUTS = [
    (
        {"images": ["not base64!"]},
        "images[0] is not valid base64 (Only base64 data is allowed). Expected the image file's bytes in "
        "standard base64, e.g. base64.b64encode(open('x.png', 'rb').read()).decode().",
    ),
    (
        {"images": [b64(b"plain text, not a picture")]},
        "images[0] is not an image file in a format this server reads (UnidentifiedImageError). Expected "
        "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM bytes; convert it to PNG or JPEG.",
    ),
    (
        {"images": []},
        "The request has no inputs. Send at least one (JSON: a non-empty list; multipart: a file part).",
    ),
    (
        {"images": "abc"},
        "The request body is invalid (1 problem(s)):\n"
        "  - 'images': Input should be a valid list. Got 'abc'.\n"
        'Expected a JSON object like {"images": ["iVBORw0KGgoA..."], "top_k": 3}.',
    ),
    (
        {"imgs": ["abc"]},
        "The request body is invalid (1 problem(s)):\n  - unknown key 'imgs'. Did you mean 'images'? Valid "
        "keys here: image, images, top_k.\n"
        'Expected a JSON object like {"images": ["iVBORw0KGgoA..."], "top_k": 3}.',
    ),
    (
        {"images": [b64(png(0, size=120))]},
        "images[0] is 120x120 = 14,400 pixels, more than this server's limit of 10,000. Downscale it before "
        "sending; the model sees it resized anyway.",
    ),
    (
        {"images": [b64(png(0))] * 5},
        "The request has 5 inputs; this server takes at most 4 per request. Split it into several requests.",
    ),
    (
        {"images": [b64(png(0)[:60])]},
        "images[0]: The image is corrupt or not an image (OSError: image file is truncated). Expected a "
        "complete PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM file; send the whole file again or re-encode "
        "it.",
    ),
]


def test_each_malformed_input_gets_its_own_422(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, max_image_pixels=10_000, max_items=4) as (client, _):
            for body, message in BAD_INPUTS:
                r = await client.post(URL, json=body)
                assert r.status_code == 422, (body, r.text)
                assert r.json()["detail"] == message
            r = await client.post(URL, content=b'{"images": [', headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["type"]) == (422, "invalid_json")
            r = await client.post(URL, files=[("images", ("x.txt", b"hello", "text/plain"))])
            assert r.status_code == 422 and "images[0] is not an image file" in r.json()["detail"]
            r = await client.post(URL, content=b"hello", headers={"content-type": "text/plain"})
            assert r.status_code == 415
            assert r.json()["detail"] == (
                "Content-Type 'text/plain' is not accepted. Send application/json or multipart/form-data; "
                "see the example in /docs."
            )
            r = await client.post("/v1/models/nope/predict", json={"images": [b64(png())]})
            assert r.status_code == 404
            assert r.json()["detail"] == "No model named 'nope' is served here. Served: shapes."
            # After all of that the server still answers.
            assert (await client.post(URL, json={"images": [b64(png())]})).status_code == 200

    run(go())


def test_a_body_over_the_cap_gets_413(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, max_body_bytes=4096) as (client, _):
            r = await client.post(URL, json={"images": [b64(bytes(8000))]})
            assert r.status_code == 413
            assert r.json()["detail"] == (
                "The request body is larger than this server's limit of 4,096 bytes. Send fewer or smaller "
                "inputs per request (downscale images), or raise max_body_bytes."
            )

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap counts the stream
                for _ in range(10):
                    yield b" " * 1000

            r = await client.post(URL, content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413

    run(go())


def slow_forward(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Make every model call take ``seconds`` longer: a stand-in for a big model on a busy machine.

    Both model calls are slowed: ``forward``, and ``forward_embed``, which the server calls instead for a
    bundle with a reference profile (the drift signals of the prediction log come from the same pass).
    """
    for name in ("forward", "forward_embed"):
        real = getattr(Predictor, name)

        def slow(self: Predictor, x: Any, real: Any = real) -> Any:
            time.sleep(seconds)
            return real(self, x)

        monkeypatch.setattr(Predictor, name, slow)


def test_a_full_queue_answers_429_with_retry_after(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, max_queue=2, max_batch_size=1) as (client, _):
            slow_forward(monkeypatch, 0.05)
            body = {"images": [b64(png())]}
            results = await asyncio.gather(*(client.post(URL, json=body) for _ in range(12)))
            codes = sorted(r.status_code for r in results)
            assert 200 in codes and 429 in codes and set(codes) == {200, 429}, codes
            refused = next(r for r in results if r.status_code == 429)
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["type"] == "queue_full"

    run(go())


def test_a_slow_prediction_answers_504(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, request_timeout_s=0.1) as (client, _):
            slow_forward(monkeypatch, 0.4)
            r = await client.post(URL, json={"images": [b64(png())]})
            assert r.status_code == 504
            assert r.json()["detail"] == (
                "The prediction took longer than this server's request_timeout_s of 0.1 s. Retry, send fewer "
                "inputs, or add replicas."
            )

    run(go())


def test_admin_endpoints_refuse_missing_and_wrong_tokens(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle) as (client, _):
            r = await client.post("/admin/reload")
            assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
            r = await client.post("/admin/reload", headers={"authorization": "Bearer " + "x" * len(TOKEN)})
            assert (r.status_code, r.json()["detail"]) == (403, "The admin token is wrong.")
            r = await client.post("/admin/reload", headers={"authorization": TOKEN})  # no scheme
            assert r.status_code == 401
            r = await client.post("/admin/reload", headers=admin())
            assert r.status_code == 200 and r.json()["results"]["shapes"]["champion"].startswith("loaded ")

    run(go())

    async def off() -> None:
        s = load_settings(models=[{"uri": str(tiny_bundle), "name": "shapes"}], log_url="off")
        app = create_app(s)
        assert s.log_url is None and app.state.kiln.predlog is None  # "off" really turns the log off
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post("/admin/reload", headers=admin())
                assert r.status_code == 404
                assert r.json()["detail"] == (
                    "Admin endpoints are off: no admin token is configured. Set KILN_SERVE_ADMIN_TOKEN."
                )

    run(off())


def arms_for(keys: list[str], client: httpx.AsyncClient) -> Callable[[], Any]:
    async def go() -> list[str]:
        body = {"images": [b64(png())]}
        answers = await asyncio.gather(
            *(client.post(URL, json=body, headers={"x-request-key": k}) for k in keys)
        )
        assert all(a.status_code == 200 for a in answers)
        return [a.json()["arm"] for a in answers]

    return go


def test_ab_split_holds_its_weight_and_is_sticky_per_key(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path]
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=1)
    model = {"challenger": str(challenger), "challenger_weight": 0.3}

    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, model=model) as (client, _):
            keys = [f"user-{i}" for i in range(400)]
            arms = await arms_for(keys, client)()
            share = arms.count("challenger") / len(arms)
            assert 0.23 < share < 0.37, share
            again = await arms_for(keys[:50], client)()
            assert again == arms[:50]  # the same key always lands on the same arm
            versions = {
                m["arm"]: m["version"]
                for m in (await client.get("/v1/models")).json()["models"][0]["versions"]
            }
            assert versions["champion"] != versions["challenger"]

    run(go())
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    assert len(rows) == 450 and {r.arm for r in rows} == {"champion", "challenger"}
    assert not any(r.shadow for r in rows)


def test_shadow_answers_are_logged_and_never_returned(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path]
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=2)
    shadow_version = load_predictor(challenger).version

    async def go() -> list[str]:
        async with serving(tmp_path, tiny_bundle, model={"challenger": str(challenger), "shadow": True}) as (
            c,
            _,
        ):
            rs = await asyncio.gather(*(c.post(URL, json={"images": [b64(png(i))]}) for i in range(20)))
            assert all(r.status_code == 200 and r.json()["arm"] == "champion" for r in rs)
            assert shadow_version not in {r.json()["version"] for r in rs}
            return [r.json()["request_id"] for r in rs]

    ids = run(go())
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    served = [r for r in rows if not r.shadow]
    mirrored = [r for r in rows if r.shadow]
    assert sorted(r.request_id for r in served) == sorted(ids)
    assert sorted(r.request_id for r in mirrored) == sorted(ids)
    assert {(r.arm, r.version) for r in mirrored} == {("challenger", shadow_version)}


def test_a_corrupt_reload_keeps_the_old_model_serving(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path]
) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")

    async def go() -> None:
        async with serving(tmp_path, bundle) as (client, _):
            before = (await client.get("/v1/models")).json()["models"][0]["versions"][0]["version"]
            (bundle / "model.safetensors").write_bytes(b"\x00garbage" * 100)
            body = {"images": [b64(png())]}
            load = [client.post(URL, json=body) for _ in range(60)]
            results = await asyncio.gather(client.post("/admin/reload", headers=admin()), *load)
            problem = (
                f"BundleError: Bundle '{bundle}': model.safetensors does not match the SHA-256 in "
                "bundle.json (the file was changed or truncated). Restore the file or retrain."
            )
            # A failed reload is an error answer (409), so automation sees it; the old version keeps serving.
            assert (results[0].status_code, results[0].json()) == (
                409,
                {
                    "detail": f"Reloading shapes/champion failed: {problem[:-1]}. Version {before} keeps "
                    "serving. Fix the bundle or the registry version and POST /admin/reload again; "
                    "GET /admin/models shows the last error per arm.",
                    "type": "reload_failed",
                    "request_id": None,
                    "results": {"shapes": {"champion": f"failed: {problem}"}},
                    "workers": {"total": 1, "serving": 1},
                },
            )
            assert [r.status_code for r in results[1:]] == [200] * 60  # zero failed requests meanwhile
            info = (await client.get("/admin/models", headers=admin())).json()["models"][0]
            assert info["versions"][0]["version"] == before
            assert info["errors"]["champion"].split(" ", 1)[1] == f"loading {bundle}: {problem}"
            assert (await client.post(URL, json=body)).json()["version"] == before
            # A good file again: the reload swaps it in and clears the error.
            variant_bundle(tiny_bundle, tmp_path / "v2", seed=3)
            shutil.copy(tmp_path / "v2" / "model.safetensors", bundle / "model.safetensors")
            shutil.copy(tmp_path / "v2" / "bundle.json", bundle / "bundle.json")
            r = await client.post("/admin/reload", headers=admin())
            after = load_predictor(bundle).version
            assert (r.status_code, r.json()) == (
                200,
                {
                    "results": {"shapes": {"champion": f"loaded {after}"}},
                    "workers": {"total": 1, "serving": 1},
                },
            )
            info = (await client.get("/admin/models", headers=admin())).json()["models"][0]
            assert info["errors"] == {} and info["versions"][0]["version"] == after != before
            assert (await client.post(URL, json=body)).json()["version"] == after
            metrics = (await client.get("/metrics")).text
            assert 'kiln_reload_failures_total{model="shapes"} 1.0' in metrics

    run(go())


def test_the_public_model_list_hides_paths_and_errors_and_the_admin_list_has_them(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")

    async def go() -> None:
        async with serving(tmp_path, bundle) as (client, _):
            version = load_predictor(bundle).version
            (bundle / "bundle.json").write_text("{garbage")  # the next reload fails and records why
            assert (await client.post("/admin/reload", headers=admin())).status_code == 409
            r = await client.get("/v1/models")
            assert r.status_code == 200
            [info] = r.json()["models"]
            assert set(info) == {"name", "task", "ready", "versions", "traffic", "labels", "input_schema"}
            [served] = info["versions"]
            assert set(served) == {"arm", "version", "runtime", "loaded_at"}
            assert (served["arm"], served["version"], served["runtime"]) == ("champion", version, "torch")
            assert str(tmp_path) not in r.text and "bundle.json" not in r.text and "garbage" not in r.text
            # The same list with the paths and the errors is an admin route, behind the admin token.
            r = await client.get("/admin/models")
            assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
            assert r.json()["detail"] == "This endpoint needs 'Authorization: Bearer <admin token>'."
            r = await client.get("/admin/models", headers={"authorization": "Bearer " + "x" * len(TOKEN)})
            assert (r.status_code, r.json()["detail"]) == (403, "The admin token is wrong.")
            r = await client.get("/admin/models", headers=admin())
            assert r.status_code == 200
            [detail] = r.json()["models"]
            assert {k: v for k, v in detail.items() if k not in ("versions", "errors")} == {
                k: v for k, v in info.items() if k != "versions"
            }
            assert detail["versions"] == [served | {"uri": str(bundle)}]
            assert detail["errors"]["champion"].split(" ", 1)[1] == (
                f"loading {bundle}: BundleError: Bundle '{bundle}': bundle.json is not valid JSON (Expecting "
                "property name enclosed in double quotes: line 1 column 2 (char 1)). Expected a JSON object "
                "with the bundle's format, version and SHA-256s. Restore the file, or retrain (or re-export) "
                "to rewrite it."
            )

    run(go())


def test_an_unknown_model_name_is_cut_in_the_404(tmp_path: Path, tiny_bundle: Path) -> None:
    long_name = "n" * 60_000

    async def go() -> None:
        async with serving(tmp_path, tiny_bundle) as (client, _):
            body = {"images": [b64(png())]}
            r = await client.post(f"/v1/models/{long_name}/predict", json=body)
            assert (r.status_code, r.json()["type"]) == (404, "unknown_model")
            assert r.json()["detail"] == f"No model named '{'n' * 60}...' is served here. Served: shapes."
            assert len(r.content) < 300
            r = await client.post(f"/v1/models/{'m' * 60}/predict", json=body)  # 60 characters: shown whole
            assert r.json()["detail"] == f"No model named '{'m' * 60}' is served here. Served: shapes."
            r = await client.post("/admin/reload", params={"model": long_name}, headers=admin())
            assert (r.status_code, r.json()["detail"]) == (
                404,
                f"No model named '{'n' * 60}...'. Served: shapes.",
            )

    run(go())


def test_a_bad_reload_request_gets_422(tmp_path: Path, tiny_bundle: Path) -> None:
    async def go() -> None:
        async with serving(tmp_path, tiny_bundle) as (client, _):
            r = await client.post("/admin/reload", params={"force": "maybe"}, headers=admin())
            assert (r.status_code, r.json()["type"]) == (422, "invalid_input")
            assert r.json()["detail"] == (
                "The request is invalid: query.force: Input should be a valid boolean, unable to interpret "
                "input."
            )

    run(go())


def test_metrics_parse_and_count_the_requests_sent(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = 24
    first_batch: list[int] = []  # how many inputs the model call that was held had

    async def go() -> str:
        async with serving(tmp_path, tiny_bundle, max_batch_size=8, max_wait_ms=20) as (client, app):
            batcher = app.state.kiln.manager.deployments["shapes"].models["champion"].batcher
            # The first model call waits until every request is queued: the rest must go in full batches.
            started, release, all_queued = threading.Event(), threading.Event(), asyncio.Event()
            real_submit, submitted = batcher.submit, 0

            def held(real_forward: Any) -> Any:
                def forward(self: Predictor, x: Any) -> Any:
                    if not started.is_set():
                        first_batch.append(len(x))
                        started.set()
                        assert release.wait(60), "the test never released the model"
                    return real_forward(self, x)

                return forward

            async def submit(x: torch.Tensor, options: Any = None) -> Any:
                nonlocal submitted
                submitted += 1
                if submitted == sent:
                    all_queued.set()  # set after this request joins the queue, before anything else runs
                return await real_submit(x, options)

            # The model call: forward_embed for a bundle with a reference profile (logged signals).
            for name in ("forward", "forward_embed"):
                monkeypatch.setattr(Predictor, name, held(getattr(Predictor, name)))
            monkeypatch.setattr(batcher, "submit", submit)
            posts = asyncio.gather(*(client.post(URL, json={"images": [b64(png(i))]}) for i in range(sent)))
            try:
                await asyncio.wait_for(all_queued.wait(), 60)
                assert await asyncio.to_thread(started.wait, 60), "the model was never called"
            finally:
                release.set()
            ok = await posts
            bad = await asyncio.gather(*(client.post(URL, json={"images": []}) for _ in range(5)))
            assert [r.status_code for r in ok] == [200] * sent and [r.status_code for r in bad] == [422] * 5
            return (await client.get("/metrics")).text

    text = run(go())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        s.labels["status"]: s.value
        for s in families["kiln_requests"].samples
        if s.name == "kiln_requests_total" and s.labels["route"] == URL.replace("shapes", "{name}")
    }
    assert requests == {"200": 24.0, "422": 5.0}
    batch = {
        s.name: s.value for s in families["kiln_batch_size"].samples if s.name.endswith(("_count", "_sum"))
    }
    assert batch["kiln_batch_size_sum"] == 24.0
    # The held call, then the rest of the 24 queued requests in full batches of 8 (and what is left over).
    assert len(first_batch) == 1 and 1 <= first_batch[0] <= 8, first_batch
    assert batch["kiln_batch_size_count"] == 1 + math.ceil((sent - first_batch[0]) / 8)
    predicted = sum(s.value for s in families["kiln_predicted_class"].samples if s.name.endswith("_total"))
    assert predicted == 24.0
    info = next(s for s in families["kiln_model_info"].samples)
    assert info.labels["runtime"] == "torch" and info.value == 1.0


def test_an_onnx_runtime_variant_serves_like_its_source(tmp_path: Path, tiny_bundle: Path) -> None:
    from torchkiln import api

    run_dir = shutil.copytree(tiny_bundle.parent, tmp_path / "run")
    variant = api.export(run_dir, bench_seconds=0.01).variant
    assert variant is not None
    images = [png(4), png(5)]
    expected = load_predictor(tiny_bundle).predict(images)

    async def go() -> None:
        async with serving(tmp_path, variant) as (client, _):
            r = await client.post(URL, json={"images": [b64(i) for i in images]})
            assert r.status_code == 200, r.text
            for a, e in zip(r.json()["predictions"], expected, strict=True):
                assert a["label"] == e["label"] and a["score"] == pytest.approx(e["score"], abs=1e-4)
            versions = (await client.get("/v1/models")).json()["models"][0]["versions"]
            assert versions[0]["runtime"] == "onnxruntime"

    run(go())


def test_registry_aliases_resolve_and_an_alias_change_is_picked_up(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path]
) -> None:
    from torchkiln.serve.registry import register_bundle, set_alias

    registry = f"sqlite:///{tmp_path}/mlflow.db"
    v1 = register_bundle(tiny_bundle, name="shapes", alias="champion", tracking_uri=registry)
    v2 = register_bundle(
        variant_bundle(tiny_bundle, tmp_path / "v2", seed=5), name="shapes", tracking_uri=registry
    )
    model = {"uri": "models:/shapes@champion"}

    async def go() -> None:
        settings = {"registry_uri": registry, "registry_poll_s": 0.2, "model": model}
        async with serving(tmp_path, tiny_bundle, **settings) as (client, _):
            body = {"images": [b64(png())]}
            assert (await client.post(URL, json=body)).json()["version"] == v1.version
            await asyncio.to_thread(set_alias, "shapes", v2.version, "champion", tracking_uri=registry)
            for _ in range(100):  # the poller notices within a few polls
                if (await client.post(URL, json=body)).json()["version"] == v2.version:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the server kept serving version 1 after the alias moved")

    run(go())


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm (Linux)")
def test_bad_and_good_requests_do_not_grow_memory(tmp_path: Path, tiny_bundle: Path) -> None:
    # 128x128 noise PNGs (~50 kB each): a server that kept bodies or tensors would grow by ~60 MB here.
    bodies = [body for body, _ in BAD_INPUTS] + [{"images": [b64(png(i, size=128)) for i in range(4)]}] * 4

    async def burst(client: httpx.AsyncClient, rounds: int) -> None:
        for _ in range(rounds):
            rs = await asyncio.gather(*(client.post(URL, json=b) for b in bodies))
            assert {r.status_code for r in rs} <= {200, 422}

    async def go() -> tuple[float, float]:
        async with serving(tmp_path, tiny_bundle, max_image_pixels=20_000, max_items=4) as (client, _):
            await burst(client, 15)  # warm up: allocator pools, caches, lazily built objects
            before = rss_mb()
            await burst(client, 40)  # 640 more requests, half of them malformed
            return before, rss_mb()

    before, after = run(go())
    assert after - before < 25, f"RSS grew from {before:.0f} MB to {after:.0f} MB over 640 requests"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_serving_on_cuda_batches_and_answers_like_the_cpu(tmp_path: Path, tiny_bundle: Path) -> None:
    """device: cuda keeps batching, its bounded queue and its timeouts; answers match the CPU predictor."""
    images = [png(i) for i in range(48)]
    expected = load_predictor(tiny_bundle, device="cpu").predict(images, top_k=3)

    async def go() -> None:
        async with serving(tmp_path, tiny_bundle, device="cuda", max_queue=64) as (client, _):
            answers = await asyncio.gather(
                *(client.post(URL, json={"image": b64(i), "top_k": 3}) for i in images)
            )
            assert [a.status_code for a in answers] == [200] * len(images)
            for a, want in zip(answers, expected, strict=True):
                [got] = a.json()["predictions"]
                assert got["label"] == want["label"]
                assert got["score"] == pytest.approx(want["score"], abs=1e-4)
            metrics = (await client.get("/metrics")).text
            batches = [
                s.value
                for f in text_string_to_metric_families(metrics)
                for s in f.samples
                if s.name == "kiln_batch_size_count"
            ]
            assert 0 < sum(batches) < len(images)  # fewer model calls than requests: they were batched

    run(go())


def test_a_request_whose_model_is_swapped_out_is_answered_by_the_new_version(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload between the pick of a model and its call: the request goes to the new version, not a 500."""
    from torchkiln.serve import routes

    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    parse, held, go_on = routes._parse, asyncio.Event(), asyncio.Event()

    async def held_parse(*args: Any) -> Any:
        if not held.is_set():  # the first request waits here, its model already picked
            held.set()
            await go_on.wait()
        return await parse(*args)

    monkeypatch.setattr(routes, "_parse", held_parse)

    async def go() -> None:
        async with serving(tmp_path, bundle) as (client, app):
            before = (await client.get("/v1/models")).json()["models"][0]["versions"][0]["version"]
            dep = app.state.kiln.manager.deployments["shapes"]
            old = dep.models["champion"]
            pending = asyncio.create_task(client.post(URL, json={"images": [b64(png())]}))
            await held.wait()
            variant_bundle(tiny_bundle, tmp_path / "v2", seed=7)
            shutil.copy(tmp_path / "v2" / "model.safetensors", bundle / "model.safetensors")
            shutil.copy(tmp_path / "v2" / "bundle.json", bundle / "bundle.json")
            assert (await client.post("/admin/reload", headers=admin())).status_code == 200
            while not old.batcher._stopping:  # the old model stops taking work (a task the reload started)
                await asyncio.sleep(0)
            go_on.set()
            r = await pending
            after = load_predictor(bundle).version
            assert (r.status_code, r.json()["version"]) == (200, after) and after != before

    run(go())
