"""Traffic rules changed at runtime (``PUT /admin/models/NAME/traffic``), in every worker, and the canary's
safety net: a request the challenger fails is answered by the champion and counted.

tests/monitor/test_retrain_live.py drives a canary through ``kiln retrain`` on a real two-worker server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchkiln import load_predictor
from torchkiln.serve.predlog import read_predictions
from torchkiln.serve.workers import Traffic, WorkerSync

TOKEN = "traffic-test-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
URL, TRAFFIC = "/v1/models/shapes/predict", "/admin/models/shapes/traffic"


def image(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def arms(client: Any, keys: list[str]) -> list[str]:
    answers = await asyncio.gather(
        *(client.post(URL, json={"images": [image(0)]}, headers={"x-request-key": k}) for k in keys)
    )
    assert all(a.status_code == 200 for a in answers), [a.json() for a in answers if a.status_code != 200]
    return [a.json()["arm"] for a in answers]


def test_a_canary_share_set_at_runtime_is_sticky_and_shadow_can_follow(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=3)
    keys = [f"user-{i}" for i in range(300)]

    async def go() -> None:
        model = {"challenger": str(challenger)}
        async with serve_one(tmp_path, tiny_bundle, "shapes", model=model, admin_token=TOKEN) as client:
            assert set(await arms(client, keys[:40])) == {"champion"}  # weight 0: the settings'
            r = await client.put(TRAFFIC, json={"challenger_weight": 0.3}, headers=ADMIN)
            assert (r.status_code, r.json()) == (
                200,
                {
                    "model": "shapes",
                    "traffic": {"champion": 0.7, "challenger": 0.3, "shadow": False},
                    "workers": {"total": 1, "serving": 1},
                },
            )
            first = await arms(client, keys)
            assert 0.22 < first.count("challenger") / len(first) < 0.38
            assert await arms(client, keys[:60]) == first[:60]  # the same key, the same arm
            [info] = (await client.get("/v1/models")).json()["models"]
            assert info["traffic"] == {"champion": 0.7, "challenger": 0.3, "shadow": False}
            # Back to mirroring: every request answered by the champion and copied to the challenger.
            r = await client.put(TRAFFIC, json={"challenger_weight": 0, "shadow": True}, headers=ADMIN)
            assert r.json()["traffic"] == {"champion": 1.0, "challenger": 0.0, "shadow": True}
            assert set(await arms(client, keys[:20])) == {"champion"}

    asyncio.run(go())
    shadows = [r for r in read_predictions(f"sqlite:///{tmp_path}/p.db") if r.shadow]
    assert len(shadows) == 20 and {r.version for r in shadows} == {load_predictor(challenger).version}


def test_bad_traffic_rules_get_their_own_answers(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=4)
    example = 'Expected a JSON object like {"challenger_weight": 0.1, "shadow": false}.'

    async def go() -> None:
        model = {"challenger": str(challenger)}
        async with serve_one(tmp_path, tiny_bundle, "shapes", model=model, admin_token=TOKEN) as client:
            r = await client.put(TRAFFIC, json={"challenger_weight": 0.1})
            assert (r.status_code, r.json()["type"]) == (401, "unauthorized")
            r = await client.put("/admin/models/nope/traffic", json={"shadow": True}, headers=ADMIN)
            assert (r.status_code, r.json()["detail"]) == (404, "No model named 'nope'. Served: shapes.")
            r = await client.put(TRAFFIC, json={"challenger_weight": 0.2, "shadow": True}, headers=ADMIN)
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (
                422,
                "invalid_traffic",
                "Shadow mirroring and a challenger share exclude each other (this would be challenger_weight "
                "0.2 with shadow true). Send shadow false with a share, or challenger_weight 0 with shadow "
                "true.",
            )
            r = await client.put(TRAFFIC, json={}, headers=ADMIN)
            assert (r.status_code, r.json()["detail"]) == (
                422,
                "The body changes nothing; expected challenger_weight (0 to 1) and/or shadow (true or "
                "false). " + example,
            )
            r = await client.put(TRAFFIC, json={"challenger_weight": 1.5}, headers=ADMIN)
            assert (r.status_code, r.json()["type"]) == (422, "invalid_input")
            assert "challenger_weight" in r.json()["detail"] and r.json()["detail"].endswith(example)
            r = await client.put(TRAFFIC, content=b"{", headers=ADMIN | {"content-type": "application/json"})
            assert (r.status_code, r.json()["type"]) == (422, "invalid_json")
            r = await client.put(TRAFFIC, content=b"shadow=1", headers=ADMIN | {"content-type": "text/plain"})
            assert (r.status_code, r.json()["type"]) == (415, "unsupported_media_type")
            [info] = (await client.get("/v1/models")).json()["models"]
            assert info["traffic"] == {"champion": 1.0, "challenger": 0.0, "shadow": False}  # unchanged

        async with serve_one(tmp_path / "solo", tiny_bundle, "shapes", admin_token=TOKEN) as client:
            r = await client.put(TRAFFIC, json={"challenger_weight": 0.1}, headers=ADMIN)
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (
                409,
                "no_challenger",
                "Model 'shapes' is served without a challenger, so it has no traffic to split or mirror. "
                "Serve it with a challenger URI (challenger: models:/shapes@challenger in the serve "
                "settings).",
            )

    (tmp_path / "solo").mkdir()
    asyncio.run(go())


def test_a_rule_reaches_every_worker_and_a_worker_that_starts_later(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    """What one worker's PUT publishes, a running worker applies, and a new worker starts with."""
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=5)
    sync = WorkerSync(tmp_path / "sync", workers=1)
    model = {"challenger": str(challenger)}

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", sync, model=model, admin_token=TOKEN) as client:
            r = await client.put(TRAFFIC, json={"challenger_weight": 1.0}, headers=ADMIN)
            assert r.json()["workers"] == {"total": 1, "serving": 1}
            [report] = sync.reports()
            assert report.traffic == {"shapes": Traffic(1.0, False)}
            assert set(await arms(client, ["a", "b", "c"])) == {"challenger"}
        (tmp_path / "later").mkdir()
        async with serve_one(tmp_path / "later", tiny_bundle, "shapes", sync, model=model) as client:
            assert set(await arms(client, ["a", "b", "c"])) == {"challenger"}  # not the settings' 0
            [info] = (await client.get("/v1/models")).json()["models"]
            assert info["traffic"]["challenger"] == 1.0

    asyncio.run(go())
    assert sync.desired().traffic == {"shapes": Traffic(1.0, False)}
    assert [r.pid for r in sync.reports()] == [os.getpid()]


def test_a_request_the_canary_fails_is_answered_by_the_champion_and_counted(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    challenger = variant_bundle(tiny_bundle, tmp_path / "challenger", seed=6)
    champion_version, canary = load_predictor(tiny_bundle).version, load_predictor(challenger).version
    model = {"challenger": str(challenger), "challenger_weight": 1.0}

    def broken(xs: Any, works: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    async def go() -> str:
        async with serve_one(tmp_path, tiny_bundle, "shapes", model=model) as client:
            answers = await asyncio.gather(*(client.post(URL, json={"images": [image(i)]}) for i in range(5)))
            assert {(a.status_code, a.json()["version"]) for a in answers} == {(200, canary)}
            app = client._transport.app  # the canary starts failing: its model thread raises
            app.state.kiln.manager.deployments["shapes"].models["challenger"].batcher.run = broken
            answers = await asyncio.gather(*(client.post(URL, json={"images": [image(i)]}) for i in range(8)))
            assert {(a.status_code, a.json()["arm"], a.json()["version"]) for a in answers} == {
                (200, "champion", champion_version)
            }
            return (await client.get("/metrics")).text

    metrics = asyncio.run(go())
    assert f'kiln_canary_failures_total{{model="shapes",reason="error",version="{canary}"}} 8.0' in metrics
    assert f'route="/v1/models/{{name}}/predict",status="200",version="{champion_version}"}} 8.0' in metrics
    rows = [r for r in read_predictions(f"sqlite:///{tmp_path}/p.db") if r.version == champion_version]
    assert len(rows) == 8 and {r.arm for r in rows} == {"champion"}
