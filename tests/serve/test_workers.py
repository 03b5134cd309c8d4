"""The workers of one server share their model versions through a folder (``serve/workers.py``).

Each app here plays one worker, in process; the folder is the one ``kiln serve --workers N`` would make.
tests/e2e/test_serve.py reloads a real two-worker server.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchkiln import load_predictor
from torchkiln.serve.workers import Target, WorkerSync, pinned_uri

TOKEN = "worker-test-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


def test_a_worker_that_starts_after_a_reload_serves_the_published_version(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    """gunicorn replaces a worker that died: the new one loads what the others serve, not the settings."""
    v2 = variant_bundle(tiny_bundle, tmp_path / "v2", seed=11)
    version = load_predictor(v2).version
    sync = WorkerSync(tmp_path / "sync", workers=1)
    generation = sync.publish({"shapes": {"champion": Target(str(v2), version)}})

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", sync) as client:
            [info] = (await client.get("/v1/models")).json()["models"]
            assert [v["version"] for v in info["versions"]] == [version]

    asyncio.run(go())
    [report] = sync.reports()
    assert (report.pid, report.generation, report.served) == (
        os.getpid(),
        generation,
        {"shapes": {"champion": version}},
    )


def test_a_reload_that_a_worker_does_not_apply_answers_409(
    tmp_path: Path, tiny_bundle: Path, serve_one: Any
) -> None:
    """Two workers expected, one answers: the reload waits reload_timeout_s, then says so."""
    sync = WorkerSync(tmp_path / "sync", workers=2)

    async def go() -> None:
        async with serve_one(
            tmp_path, tiny_bundle, "shapes", sync, admin_token=TOKEN, reload_timeout_s=0.5
        ) as client:
            r = await client.post("/admin/reload", headers=ADMIN)
            version = load_predictor(tiny_bundle).version
            assert (r.status_code, r.json()) == (
                409,
                {
                    "detail": "The reload reached 1 of 2 workers: 1 of 2 workers did not apply the reload "
                    "within 0.5 s. Until every worker serves the same versions, requests may get either. "
                    "See the server log for why, then POST /admin/reload again.",
                    "type": "reload_incomplete",
                    "request_id": None,
                    "results": {"shapes": {"champion": f"loaded {version}"}},
                    "workers": {"total": 2, "serving": 1},
                },
            )

    asyncio.run(go())


def test_a_worker_that_kept_the_old_version_makes_the_reload_409(
    tmp_path: Path, tiny_bundle: Path, serve_one: Any
) -> None:
    """A second worker (the test's parent process plays it) reports that its load failed."""
    sync = WorkerSync(tmp_path / "sync", workers=2)
    other = {
        "pid": os.getppid(),
        "generation": 10**6,
        "served": {"shapes": {"champion": "0123456789ab"}},
        "errors": {"shapes": {"champion": "loading x: BundleError: broken"}},
    }
    (tmp_path / "sync" / "workers" / f"{os.getppid()}.json").write_text(json.dumps(other))

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", sync, admin_token=TOKEN) as client:
            r = await client.post("/admin/reload", headers=ADMIN)
            version = load_predictor(tiny_bundle).version
            assert r.status_code == 409
            assert r.json()["type"] == "reload_incomplete"
            assert r.json()["workers"] == {"total": 2, "serving": 1}
            assert r.json()["detail"] == (
                f"The reload reached 1 of 2 workers: worker {os.getppid()}: shapes/champion serves version "
                f"0123456789ab, not {version} (loading x: BundleError: broken). Until every worker serves "
                "the same versions, requests may get either. See the server log for why, then POST "
                "/admin/reload again."
            )

    asyncio.run(go())


def test_a_published_generation_reaches_a_running_worker(
    tmp_path: Path, tiny_bundle: Path, variant_bundle: Callable[..., Path], serve_one: Any
) -> None:
    """What another worker publishes, this one loads (its watcher reads desired.json every 100 ms)."""
    v2 = variant_bundle(tiny_bundle, tmp_path / "v2", seed=12)
    version = load_predictor(v2).version
    sync = WorkerSync(tmp_path / "sync", workers=1)

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", sync) as client:
            generation = sync.publish({"shapes": {"champion": Target(str(v2), version)}})
            agreement = await sync.wait(generation, {"shapes": {"champion": Target(str(v2), version)}}, 30)
            assert (agreement.workers, agreement.agreeing, agreement.problems) == (1, 1, [])
            [info] = (await client.get("/v1/models")).json()["models"]
            assert [v["version"] for v in info["versions"]] == [version]

    asyncio.run(go())


def test_an_alias_is_pinned_to_the_version_it_resolved_to() -> None:
    assert pinned_uri("models:/shapes@champion", "3") == "models:/shapes/3"
    assert pinned_uri("models:/shapes/2", "2") == "models:/shapes/2"
    assert pinned_uri("runs/a/bundle", "3f2a9c1b0d4e") == "runs/a/bundle"
