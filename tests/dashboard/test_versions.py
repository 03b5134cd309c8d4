"""The Versions page against a real registry and a real ``kiln serve --workers 2`` serving
``models:/NAME@champion``: versions, lineage, what is served, the retrain decisions, and the rollback,
which moves the champion back and reloads every worker, or says exactly why it did nothing.

Each model has one purpose, so the tests do not depend on their order: ``tiles`` is only looked at,
``dials`` is rolled back over HTTP, ``shapes`` in the browser, and ``solo`` has no previous champion.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from fastapi.testclient import TestClient

from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.lineage import Decision, read_record
from torchkiln.dashboard.settings import load_dashboard_settings
from torchkiln.monitor.decision import DecisionRecord
from torchkiln.serve import registry
from torchkiln.serve.predlog_db import metadata

from ..conftest import KILN
from .browsing import (
    answers,
    chromium,
    free_port,
    needs_browser,
    new_page,
    overflows,
    processes,
    start,
    wait_until,
)
from .conftest import png

pytest.importorskip("mlflow")
pytest.importorskip("gunicorn")

TOKEN = "versions-admin-token-0123456789"
HX = {"HX-Request": "true", "Origin": "http://127.0.0.1:8050"}
MODELS = ("tiles", "dials", "shapes", "solo")
SHA = "ab" * 32


def decision(root: Path, outcome: str, version: str | None, created: str) -> Path:
    """A decision record as kiln retrain writes it (figures chosen here), logged and linked like one."""
    record = DecisionRecord(
        model="tiles",
        outcome=outcome,  # type: ignore[arg-type]
        reason="passed every gate; champion 1 -> 2" if version else "not better: p 0.37 >= alpha 0.05",
        settings={"alpha": 0.05},
        champion={"version": "1", "uri": "models:/tiles/1", "metrics": {"accuracy": 0.8, "items": 40}},
        challenger={"version": version, "metrics": {"accuracy": 0.9 if version else 0.825, "items": 40}},
        data={"sources": ["new-images/"], "data_sha256": SHA, "test_sha256": "cd" * 32, "test_items": 40},
        test={
            "b": 1,
            "c": 5,
            "p_value": 0.03515625,
            "gated_on": "mid-p",
            "alpha": 0.05,
            "accuracy_gain": 0.1,
        },
        replay={"inputs": 200, "agreement": 0.915, "labelled": 120, "accuracy_on_labelled": {}},
        live={
            "shadow": {
                "requests": 50,
                "shadow_answers": 50,
                "error_rate": 0.0,
                "p99_ms": 8.25,
                "agreement": 0.92,
            },
            "canary": {"weight": 0.25, "requests": 77, "failures": 0, "p99_ms": 11.5, "decision": "pass"},
            "promotion": {"workers": {"serving": 2, "total": 2}},
        }
        if version
        else None,
        created=created,
    )
    path = record.write(root / "retrain" / "tiles" / created[:10] / "decision.json")
    tags = {"torchkiln.retrain.outcome": outcome, "torchkiln.retrain.data_sha256": SHA}
    tags |= {"torchkiln.retrain.parent_version": "1", "torchkiln.retrain.test_sha256": "cd" * 32}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registry.log_decision("tiles", path, params={}, tags=tags, version=version, tracking_uri=uri)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Iterator[dict[str, Any]]:
    """The registry, then ``kiln serve --workers 2`` serving each model's champion (tiles with its
    challenger in shadow)."""
    root = tmp_path_factory.mktemp("versions")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name in MODELS:
        registry.register_bundle(tiny_bundle, name=name, alias="champion", tracking_uri=uri)
        if name != "solo":
            registry.register_bundle(tiny_bundle, name=name, tracking_uri=uri)
    for name in ("tiles", "dials"):
        assert registry.promote(name, 2, tracking_uri=uri) == "1"
    registry.set_alias("tiles", 1, "challenger", tracking_uri=uri)
    decision(root, "rejected", None, "2026-12-01T09:00:00+00:00")
    decision(root, "promoted", "2", "2026-12-02T09:00:00+00:00")
    models = [{"name": n, "uri": f"models:/{n}@champion"} for n in MODELS]
    models[0] |= {"challenger": "models:/tiles@challenger", "shadow": True}
    (root / "serve.yaml").write_text(
        yaml.safe_dump({"models": models, "registry_uri": uri, "admin_token": TOKEN})
    )
    (root / "tmp").mkdir()
    port, log = free_port(), f"sqlite:///{root / 'p.db'}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(root / "tmp"),
        "KILN_CACHE_DIR": str(root / "cache"),
    }
    cmd = [KILN, "serve", "--config", str(root / "serve.yaml"), "--workers", "2", "--port", str(port)]
    with processes() as procs:
        errors = root / "serve.txt"
        procs.append(start([*cmd, "--log-url", log], cwd=root, env=env, errors=errors))

        def all_loaded() -> bool:  # each worker says so for each model
            text = errors.read_text(errors="replace")
            return all(text.count(f"'{n}' champion now serves") >= 2 for n in MODELS)

        wait_until(all_loaded, procs[0], errors)
        metadata.create_all(sa.create_engine(log))  # the log exists before the dashboard opens it
        yield {
            "root": root,
            "uri": uri,
            "url": f"http://127.0.0.1:{port}",
            "log": log,
            "env": env,
            "procs": procs,
        }


@pytest.fixture
def dashboard(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Callable[..., TestClient]:
    """``dashboard(**settings)``: the dashboard over the stack's registry, in process."""
    for name in ("KILN_ADMIN_TOKEN", "KILN_DASHBOARD_ADMIN_TOKEN", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)

    def make(**values: Any) -> TestClient:
        values = {"tracking_uri": stack["uri"], "runs_dir": stack["root"] / "runs"} | values
        settings = load_dashboard_settings(log_url=stack["log"], **values)
        return TestClient(create_dashboard(settings), base_url="http://127.0.0.1:8050")

    return make


def section(page: str, name: str) -> str:
    """The part of a page about model ``name``."""
    start = page.index(f'<section class="model" aria-label="{name}">')
    return page[start : page.index("</section>", start)]


def versions_served(url: str, model: str, n: int = 8) -> set[str]:
    """The versions that answer ``n`` predictions, each on a new connection (any worker may take it)."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=url, timeout=30, limits=fresh) as client:
        found = set()
        for i in range(n):
            r = client.post(f"/v1/models/{model}/predict", json={"images": [png(i)]})
            assert r.status_code == 200, r.text
            found.add(r.json()["version"])
        return found


def champion(stack: dict[str, Any], name: str) -> str:
    return registry.current_version(name, "champion", tracking_uri=stack["uri"])


def test_each_version_with_its_lineage_what_is_served_and_the_decisions(
    stack: dict[str, Any], dashboard: Callable[..., TestClient]
) -> None:
    with dashboard(server=stack["url"], admin_token=TOKEN) as client:
        page = client.get("/versions").text
    assert re.findall(r'<section class="model" aria-label="([^"]+)">', page) == sorted(MODELS)
    tiles = section(page, "tiles")
    assert re.findall(r'<tr data-version="(\d+)">', tiles) == ["2", "1"]
    assert "Served now: champion version <strong>2</strong>, challenger version <strong>1</strong>." in tiles
    assert "Traffic: champion 100.0 %, challenger 0.0 %, shadow on." in tiles
    v2, v1 = tiles.split('<tr data-version="')[1:3]
    served = '<td data-label="Served as">{}</td>'
    assert '<span class="alias champion">champion</span>' in v2 and served.format("champion") in v2
    assert '<span class="alias challenger">challenger</span>' in v1 and served.format("challenger") in v1
    assert "kiln retrain from version 1 (promoted)" in v2 and f'<code title="{SHA}">{SHA[:12]}</code>' in v2
    assert "replaced champion 1" in v2 and "registered by hand" in v1
    assert "fresh test accuracy 0.900 (champion 1: 0.800) on 40 items" in v2
    assert "val/accuracy" in v1  # the run folder the version came from: its best epoch
    headings = re.findall(r"<h4>(.*?)</h4>", tiles)
    assert headings == [
        "2026-12-02 09:00 · promoted · champion 1 vs challenger 2",
        "2026-12-01 09:00 · rejected · champion 1 vs challenger not registered",
    ]
    promoted = tiles.split("<article")[1]
    for label, value in [
        ("accuracy", "0.800 -&gt; 0.900"),
        ("b (champion right only)", "1"),
        ("c (challenger right only)", "5"),
        ("p (mid-p)", "0.0352"),
        ("gain (points)", "10.00"),
        ("agreement", "0.915"),
        ("shadow answers", "50"),
        ("p99 ms", "8.250"),
        ("weight", "0.250"),
        ("decision", "pass"),
        ("promotion", "2 of 2 workers"),
    ]:
        assert f'<th scope="row">{label}</th><td class="wrap">{value}</td>' in promoted, label
    assert "<h5>Shadow</h5>" not in tiles.split("<article")[2]  # the rejected one never went live
    confirm = (
        'hx-confirm="Roll back tiles: point champion from version 2 back to version 1, and reload the server '
        f'at {stack["url"]}?"'
    )
    assert confirm in tiles and '<button type="submit">Roll back champion to version 1</button>' in tiles
    solo = section(page, "solo")
    assert "disabled" in solo and "Its champion, version 1, records no previous champion" in solo


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({}, "Rollback needs the running server: start the dashboard with --server http://HOST:PORT."),
        ({"server": "SERVER"}, "Rollback needs the server&#39;s admin token: set KILN_ADMIN_TOKEN"),
    ],
)
def test_without_the_server_or_its_token_the_button_is_off_and_says_why(
    stack: dict[str, Any], dashboard: Callable[..., TestClient], settings: dict[str, str], why: str
) -> None:
    settings = {k: stack["url"] if v == "SERVER" else v for k, v in settings.items()}
    with dashboard(**settings) as client:
        dials = section(client.get("/versions").text, "dials")
        assert '<button type="submit" disabled aria-describedby="why-model-dials">' in dials and why in dials
        assert "hx-confirm" not in dials
        r = client.post("/versions/dials/rollback", headers=HX)
    assert r.status_code == 200
    assert f'<p class="error outcome" role="alert">Nothing was changed. {why}' in r.text
    assert champion(stack, "dials") == "2"


def test_an_unreachable_server_changes_nothing(
    stack: dict[str, Any], dashboard: Callable[..., TestClient]
) -> None:
    gone = f"http://127.0.0.1:{free_port()}"
    with dashboard(server=gone, admin_token=TOKEN) as client:
        page = client.get("/versions")
        r = client.post("/versions/dials/rollback", headers=HX)
    assert page.status_code == 200 and f"Cannot reach the server at {gone} (ConnectError:" in page.text
    assert 'disabled aria-describedby="why-model-dials"' in section(page.text, "dials")
    assert r.status_code == 200
    assert f"Nothing was changed: Cannot reach the server at {gone} (ConnectError:" in r.text
    assert champion(stack, "dials") == "2"


def test_no_previous_champion_or_an_unserved_model_is_reported(
    stack: dict[str, Any], dashboard: Callable[..., TestClient]
) -> None:
    with dashboard(server=stack["url"], admin_token=TOKEN) as client:
        solo = client.post("/versions/solo/rollback", headers=HX)
        nope = client.post("/versions/nope/rollback", headers=HX)
    assert solo.status_code == 200
    assert (
        "Nothing was changed: Cannot roll back &#39;solo&#39;: its champion, version 1, records no previous "
        "champion (it was not promoted by kiln retrain or kiln registry promote). Point the alias by hand: "
        "kiln registry alias solo VERSION champion"
    ) in solo.text
    assert champion(stack, "solo") == "1"
    assert nope.status_code == 200
    assert (
        f"Nothing was changed: the server at {stack['url']} does not serve &#39;nope&#39; (it serves dials, "
        "shapes, solo, tiles), so it could not load the old champion."
    ) in nope.text


def test_a_rollback_from_anywhere_but_the_page_is_refused(
    stack: dict[str, Any], dashboard: Callable[..., TestClient]
) -> None:
    with dashboard(server=stack["url"], admin_token=TOKEN) as client:
        plain = client.post("/versions/dials/rollback")
        other = client.post("/versions/dials/rollback", headers={**HX, "Origin": "https://evil.example"})
    assert plain.status_code == other.status_code == 403
    assert champion(stack, "dials") == "2"


def test_the_rollback_moves_the_champion_back_and_every_worker_serves_it(
    stack: dict[str, Any], dashboard: Callable[..., TestClient]
) -> None:
    assert versions_served(stack["url"], "dials") == {"2"}
    with dashboard(server=stack["url"], admin_token=TOKEN) as client:
        r = client.post("/versions/dials/rollback", headers=HX)
    assert r.status_code == 200 and "<html" not in r.text  # the model's section alone, for htmx to swap
    assert (
        '<p class="done outcome" role="status">Rolled back &#39;dials&#39;: champion version 2 -&gt; 1. '
        "The server reloaded (champion loaded 1); 2 of 2 workers serve it.</p>"
    ) in r.text
    assert champion(stack, "dials") == "1"
    assert "Served now: champion version <strong>1</strong>." in r.text
    v2 = r.text.split('<tr data-version="2">')[1].split("</tr>")[0]
    assert '<span class="muted">rolled back</span>' in v2
    assert 'disabled aria-describedby="why-model-dials"' in r.text  # version 1 records no previous champion
    assert versions_served(stack["url"], "dials") == {"1"}


def test_a_registry_that_does_not_exist_is_reported_not_created(
    dashboard: Callable[..., TestClient], tmp_path: Path
) -> None:
    missing = tmp_path / "none" / "mlflow.db"
    with dashboard(tracking_uri=f"sqlite:///{missing}") as client:
        r = client.get("/versions")
    assert r.status_code == 200
    assert f"There is no registry at {missing} yet. Register a bundle with: kiln registry register" in r.text
    assert not missing.parent.exists()


def test_a_record_on_another_machine_is_named_not_fetched() -> None:
    uri = "s3://bucket/mlartifacts/1/abc/artifacts/decision.json"
    assert read_record(uri) == Decision(uri, None, "the record is not on this machine; open it in MLflow")


@pytest.fixture(scope="module")
def dashboard_url(stack: dict[str, Any]) -> str:
    """A real ``kiln dashboard`` process on the stack, with the admin token from the environment."""
    port = free_port()
    env = {**stack["env"], "KILN_ADMIN_TOKEN": TOKEN}
    cmd = [KILN, "dashboard", "--log-url", stack["log"], "--port", str(port), "--server", stack["url"]]
    cmd += ["--tracking-uri", stack["uri"], "--runs-dir", str(stack["root"] / "runs")]
    errors = stack["root"] / "dashboard.txt"
    proc = start(cmd, cwd=stack["root"], env=env, errors=errors)
    stack["procs"].append(proc)  # stopped with the server
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/versions"), proc, errors)
    return url


@needs_browser
def test_rollback_in_the_browser_after_a_promotion(stack: dict[str, Any], dashboard_url: str) -> None:
    from playwright.sync_api import expect

    assert registry.promote("shapes", 2, tracking_uri=stack["uri"]) == "1"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reload = httpx.post(
        f"{stack['url']}/admin/reload", params={"model": "shapes"}, headers=headers, timeout=60
    )
    assert reload.json()["results"]["shapes"] == {"champion": "loaded 2"}
    assert versions_served(stack["url"], "shapes") == {"2"}
    with chromium() as browser:
        page = new_page(browser)
        page.goto(f"{dashboard_url}/versions")
        shapes = page.get_by_role("region", name="shapes")
        expect(shapes.locator("tr[data-version='2'] .alias")).to_have_text("champion")
        asked = []
        page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
        shapes.get_by_role("button", name="Roll back champion to version 1").click()
        outcome = page.get_by_role("region", name="shapes").get_by_role("status")
        expect(outcome).to_have_text(  # the rollback and every worker's reload: seconds on a busy machine
            "Rolled back 'shapes': champion version 2 -> 1. The server reloaded (champion loaded 1); 2 of 2 "
            "workers serve it.",
            timeout=60_000,
        )
        assert asked == [
            f"Roll back shapes: point champion from version 2 back to version 1, and reload the server at "
            f"{stack['url']}?"
        ]
        expect(page.get_by_role("region", name="shapes").locator("tr[data-version='1'] .alias")).to_have_text(
            "champion"
        )
        assert page.console_errors == []
        narrow = new_page(browser, 390)
        narrow.goto(f"{dashboard_url}/versions")
        assert not overflows(narrow) and narrow.console_errors == []
    assert versions_served(stack["url"], "shapes") == {"1"}
    assert champion(stack, "shapes") == "1"
