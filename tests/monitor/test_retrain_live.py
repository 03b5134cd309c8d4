"""kiln retrain against a real `kiln serve --workers 2`: a challenger that fails on the served traffic is
rolled back in shadow; a better one goes through shadow, is promoted, and every worker serves it.

The server serves ``models:/shapes@champion`` with ``challenger: models:/shapes@challenger`` in shadow,
as docs/monitoring.md says; a thread sends inverted shapes (which the champion gets wrong) the whole time.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image, ImageOps

from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.retrain import retrain
from torchkiln.serve import registry
from torchkiln.tasks.base import load_config
from torchkiln.tasks.training import train_new_run

from ..conftest import KILN

pytest.importorskip("mlflow")
pytest.importorskip("gunicorn")

MODEL, TOKEN = "shapes", "retrain-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inverted(root: Path, make_image_folder: Any, *, per_class: int = 40, seed: int = 1) -> Path:
    folder = make_image_folder(root, per_class=per_class, seed=seed)
    for p in folder.rglob("*.png"):
        ImageOps.invert(Image.open(p).convert("RGB")).save(p)
    return folder


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any
) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("live")
    cache = root / "cache"
    os.environ["KILN_CACHE_DIR"] = str(cache)  # this process's registry downloads; restored below
    cfg = make_config(make_image_folder(root / "orig", per_class=12), root / "runs")
    cfg["train"]["epochs"] = 3
    (root / "kiln.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = train_new_run(load_config(root / "kiln.yaml"))
    uri = f"sqlite:///{root}/mlflow.db"
    registry.register_bundle(run / "bundle", name=MODEL, alias="champion", tracking_uri=uri)
    registry.set_alias(MODEL, 1, "challenger", tracking_uri=uri)  # idle: the challenger is the champion
    settings = {
        "models": [
            {
                "name": MODEL,
                "uri": f"models:/{MODEL}@champion",
                "challenger": f"models:/{MODEL}@challenger",
                "shadow": True,
            }
        ],
        "registry_uri": uri,
        "admin_token": TOKEN,
    }
    (root / "serve.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    (root / "tmp").mkdir()
    port, log_url = free_port(), f"sqlite:///{root}/p.db"
    cmd = [
        KILN,
        "serve",
        "--config",
        str(root / "serve.yaml"),
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-url",
        log_url,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(root / "tmp"), "KILN_CACHE_DIR": str(cache)}
    with open(root / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    traffic = sorted(inverted(root / "traffic", make_image_folder, per_class=10, seed=5).rglob("*.png"))
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while (root / "stderr.txt").read_text(errors="replace").count(f"'{MODEL}' champion now serves") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (root / "stderr.txt").read_text()
            time.sleep(0.1)
        sender = threading.Thread(target=send_forever, args=(url, traffic, stop), daemon=True)
        sender.start()
        yield {"root": root, "uri": uri, "url": url, "log_url": log_url, "config": root / "kiln.yaml"}
    finally:
        stop.set()
        os.environ.pop("KILN_CACHE_DIR", None)
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def send_forever(url: str, images: list[Path], stop: threading.Event) -> None:
    """Requests on fresh connections (any worker may take each) until ``stop``."""
    bodies = [{"images": [base64.b64encode(p.read_bytes()).decode()]} for p in images]
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=30, limits=fresh) as client:
        i = 0
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # the shutdown; the next request says more
                client.post(f"/v1/models/{MODEL}/predict", json=bodies[i % len(bodies)])
            i += 1


def retrain_on_server(live: dict, config: Path, new: Path, out: str, gates: RetrainSettings) -> Any:
    """kiln retrain with the new images, against the live server and its log."""
    return retrain(
        config,
        model=MODEL,
        data=[new],
        tracking_uri=live["uri"],
        server=live["url"],
        admin_token=TOKEN,
        log_url=live["log_url"],
        out_dir=live["root"] / out,
        device="cpu",
        settings=gates,
    )


def served(live: dict) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    models = httpx.get(f"{live['url']}/admin/models", headers=headers, timeout=30).json()["models"]
    return {v["arm"]: v["version"] for m in models if m["name"] == MODEL for v in m["versions"]}


def test_a_challenger_that_fails_on_the_served_traffic_is_rolled_back_in_shadow(
    live: dict, make_image_folder: Any
) -> None:
    # Trained on grayscale (data.channels 1): right offline through its own preprocessing, but in shadow it
    # gets the champion's preprocessed RGB batch, which its first convolution refuses.
    raw = yaml.safe_load(live["config"].read_text())
    raw["data"]["channels"] = 1
    gray = live["root"] / "gray.yaml"
    gray.write_text(yaml.safe_dump(raw))
    new = inverted(live["root"] / "new-gray", make_image_folder)
    gates = RetrainSettings(epochs=5, from_scratch=True, shadow_requests=30, shadow_settle_s=2)
    result = retrain_on_server(live, gray, new, "retrain-gray", gates)
    record = result.record
    assert result.challenger_version == "2"
    assert record.test["p_value"] < 0.05  # it passed the offline gate
    assert record.outcome == "rejected", record.reason
    assert record.reason.startswith("shadow gate on 30 requests: error rate 1.000 > shadow_max_error_rate")
    assert record.live["shadow"]["shadow_answers"] == 0
    assert record.live["rollback_reload"]["workers"] == {"total": 2, "serving": 2}
    assert registry.current_version(MODEL, "champion", tracking_uri=live["uri"]) == "1"
    assert registry.current_version(MODEL, "challenger", tracking_uri=live["uri"]) == "1"
    assert served(live) == {"champion": "1", "challenger": "1"}


def traffic(live: dict) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    models = httpx.get(f"{live['url']}/admin/models", headers=headers, timeout=30).json()["models"]
    return next(m["traffic"] for m in models if m["name"] == MODEL)


IDLE = {"champion": 1.0, "challenger": 0.0, "shadow": True}  # the serve settings' rule


def test_a_canary_over_its_latency_limit_is_rolled_back_by_itself(live: dict, make_image_folder: Any) -> None:
    new = inverted(live["root"] / "new-slow", make_image_folder, seed=2)
    champion = registry.current_version(MODEL, "champion", tracking_uri=live["uri"])
    # No answer takes under a microsecond: the canary fails its p99 gate once it has 20 requests.
    gates = RetrainSettings(
        epochs=5, shadow_requests=20, canary_weight=0.5, canary_min_requests=20, canary_max_p99_ms=0.001
    )
    result = retrain_on_server(live, live["config"], new, "retrain-slow", gates)
    record = result.record
    assert record.live["shadow"]["error_rate"] == 0.0  # shadow passed
    canary = record.live["canary"]
    assert canary["decision"] == "fail" and canary["requests"] >= 20 and canary["failures"] == 0
    assert record.outcome == "rejected"
    assert record.reason.startswith("canary gate: p99 ") and record.reason.endswith(
        "ms > canary_max_p99_ms 0.001 on " + f"{canary['requests']} requests; rolled back"
    )
    assert record.live["rollback_reload"]["workers"] == {"total": 2, "serving": 2}
    assert "traffic_restored" not in record.live  # the rejected canary restored the rule itself
    assert traffic(live) == IDLE
    assert registry.current_version(MODEL, "challenger", tracking_uri=live["uri"]) == champion
    assert served(live) == {"champion": champion, "challenger": champion}


def test_a_better_challenger_goes_through_shadow_and_every_worker_serves_it(
    live: dict, make_image_folder: Any
) -> None:
    new = inverted(live["root"] / "new", make_image_folder)
    gates = RetrainSettings(epochs=5, shadow_requests=30, canary_weight=0.5)
    result = retrain_on_server(live, live["config"], new, "retrain", gates)
    record = result.record
    assert record.outcome == "promoted", record.reason
    version = result.challenger_version
    shadow = record.live["shadow"]
    assert shadow["requests"] == shadow["shadow_answers"] == 30 and shadow["error_rate"] == 0.0
    assert shadow["agreement"] < 1  # it answers the inverted images the champion gets wrong
    canary = record.live["canary"]
    # No failure in 59 requests: the sequential test calls a 0.1 % failure rate likelier than 5 %.
    assert canary["decision"] == "pass" and canary["failures"] == 0 and canary["requests"] >= 59
    assert canary["reason"].startswith(f"0 of {canary['requests']} canary requests failed (0.000): healthy")
    assert record.live["promotion"]["workers"] == {"total": 2, "serving": 2}
    assert record.live["traffic_restored"] == IDLE and traffic(live) == IDLE
    assert registry.current_version(MODEL, "champion", tracking_uri=live["uri"]) == version
    assert served(live)["champion"] == version
    # Fresh connections reach both workers; each answers with the new champion.
    fresh = httpx.Limits(max_keepalive_connections=0)
    image = base64.b64encode(next((live["root"] / "new").rglob("*.png")).read_bytes()).decode()
    with httpx.Client(base_url=live["url"], timeout=30, limits=fresh) as client:
        answers = [client.post(f"/v1/models/{MODEL}/predict", json={"images": [image]}) for _ in range(10)]
    assert {r.json()["version"] for r in answers} == {version}
