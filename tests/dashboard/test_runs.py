"""The Runs page over real run folders: the list with its metrics and report links, the curves of the
ticked runs, the reports served read-only, and every path that is not a listed report refused."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from torchkiln import api
from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.pages.runs import REPORT_CSP
from torchkiln.dashboard.settings import load_dashboard_settings
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

OLD, NEW = "shapes/20261201-090000", "shapes/20261202-090000"
# The older run's history, written here: two epochs, a NaN loss in the second (shown as a gap).
OLD_HISTORY = [
    {"train/loss": 1.5, "val/loss": 1.25, "val/accuracy": 0.5, "epoch": 0},
    {"train/loss": float("nan"), "val/loss": 1.0, "val/accuracy": 0.75, "epoch": 1},
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> dict[str, Any]:
    """Two runs of the tiny model (the newer evaluated on test, with an export report), a monitor report,
    and files beside and outside the runs folder that must never be served."""
    root = tmp_path_factory.mktemp("dashboard-runs")
    runs_dir = root / "runs"
    new, old = runs_dir / NEW, runs_dir / OLD
    for run in (new, old):
        shutil.copytree(tiny_bundle.parent, run, ignore=shutil.ignore_patterns("checkpoints"))
    (old / "history.json").write_text(json.dumps(OLD_HISTORY))
    evaluation = api.evaluate(new, split="test", device="cpu", mlflow=False)
    export = new / "exports" / "onnx-fp32" / "export_report.html"
    export.parent.mkdir(parents=True)
    export.write_text("<!doctype html><title>export</title><p>export report of the newer run</p>")
    monitor = runs_dir / "monitor" / "shapes"
    monitor.mkdir(parents=True)
    (monitor / "report.json").write_text(
        json.dumps(
            {
                "target": "shapes",
                "created": "2026-12-03T10:00:00+00:00",
                "window": 300,
                "versions": [{"version": "1", "shadow": False}, {"version": "2", "shadow": True}],
            }
        )
    )
    (monitor / "report.html").write_text("<!doctype html><title>monitor</title><p>drift of shapes</p>")
    secret = root / "secret.html"  # outside runs_dir
    secret.write_text("SECRET outside the runs folder")
    evil = runs_dir / "evil" / "20261203-000000"  # a run whose "evaluation report" links outside
    shutil.copytree(tiny_bundle.parent, evil, ignore=shutil.ignore_patterns("checkpoints"))
    (evil / "eval" / "test").mkdir(parents=True)
    (evil / "eval" / "test" / "report.html").symlink_to(secret)
    log = f"sqlite:///{root / 'p.db'}"
    metadata.create_all(sa.create_engine(log))  # an empty prediction log: the page does not read it
    metrics = json.loads(evaluation.metrics_file.read_text())
    return {"runs_dir": runs_dir, "log": log, "root": root, "secret": secret, "metrics": metrics}


@pytest.fixture(scope="module")
def client(runs: dict[str, Any]) -> Iterator[TestClient]:
    settings = load_dashboard_settings(log_url=runs["log"], runs_dir=runs["runs_dir"])
    with TestClient(create_dashboard(settings), base_url="http://127.0.0.1:8050") as c:
        yield c


def listed(page: str) -> list[str]:
    return re.findall(r'<tr data-run="([^"]+)">', page)


def charts(page: str) -> list[dict[str, Any]]:
    return [json.loads(html.unescape(s)) for s in re.findall(r"data-series='([^']*)'", page)]


def test_the_page_lists_each_run_with_its_metrics_and_reports(
    client: TestClient, runs: dict[str, Any]
) -> None:
    r = client.get("/runs")
    assert r.status_code == 200
    page = r.text
    assert listed(page) == ["evil/20261203-000000", NEW, OLD]  # newest first
    assert '<a href="/runs" aria-current="page">Runs</a>' in page
    accuracy = runs["metrics"]["accuracy"]
    assert f'test: accuracy <span class="value">{accuracy:.3f}</span>' in page
    report = f"/runs/report?path={NEW}/eval/test/report.html"
    assert f'<a href="{report}" target="_blank" rel="noopener">evaluation test</a>' in page
    export = f"/runs/report?path={NEW}/exports/onnx-fp32/export_report.html"
    assert f'<a href="{export}" target="_blank" rel="noopener">export onnx-fp32</a>' in page
    monitor = "/runs/report?path=monitor/shapes/report.html"
    assert f'<a href="{monitor}" target="_blank" rel="noopener">monitor/shapes/report.html</a>' in page
    assert "<td>1, 2 (shadow)</td>" in page
    assert page.count("evaluation test") == 2  # the evil run lists its (linked) report too; opening it fails


def test_the_curves_of_the_ticked_runs_side_by_side(client: TestClient, runs: dict[str, Any]) -> None:
    history = json.loads((runs["runs_dir"] / NEW / "history.json").read_text())
    page = client.get(f"/runs?run={OLD}&run={NEW}").text
    drawn = charts(page)
    assert [c["title"] for c in drawn] == ["train/loss", "val/loss", "train/accuracy", "val/accuracy"]
    val_loss = drawn[1]
    assert val_loss["x"] == [1, 2, 3] and val_loss["time"] is False and val_loss["ylabel"] == "loss"
    assert [s["label"] for s in val_loss["series"]] == [OLD, NEW]
    assert val_loss["series"][0]["values"] == [1.25, 1.0, None]  # two epochs of three
    assert val_loss["series"][1]["values"] == [e["val/loss"] for e in history]
    assert drawn[0]["series"][0]["values"] == [1.5, None, None]  # the NaN loss is a gap, not invalid JSON
    assert drawn[2]["series"][0]["values"] == [None, None, None]  # the old run has no train/accuracy
    assert re.findall(r'value="([^"]+)" id="run-\d+" checked', page) == [NEW, OLD]
    assert f'<th scope="col" class="num">{OLD}</th><th scope="col" class="num">{NEW}</th>' in page


def test_the_newest_run_is_drawn_until_runs_are_ticked(client: TestClient) -> None:
    assert [s["label"] for s in charts(client.get("/runs").text)[0]["series"]] == ["evil/20261203-000000"]
    none = client.get("/runs?picked=1").text
    assert charts(none) == [] and "Tick one or more runs to see their curves." in none
    unknown = client.get("/runs?run=../../etc&run=shapes/nope").text
    assert "Not a run under" in unknown and "../../etc, shapes/nope" in unknown and charts(unknown) == []


def test_ticking_a_box_swaps_the_curves_and_pushes_the_url(client: TestClient) -> None:
    r = client.get(f"/runs/curves?picked=1&run={NEW}", headers={"HX-Request": "true"})
    assert r.status_code == 200
    assert r.headers["hx-push-url"] == "/runs?picked=1&run=shapes%2F20261202-090000"
    assert "<html" not in r.text and [s["label"] for s in charts(r.text)[0]["series"]] == [NEW]


@pytest.mark.parametrize(
    "ref",
    [
        f"{NEW}/eval/test/report.html",
        f"{NEW}/exports/onnx-fp32/export_report.html",
        "monitor/shapes/report.html",
    ],
)
def test_a_listed_report_opens_read_only(client: TestClient, runs: dict[str, Any], ref: str) -> None:
    r = client.get("/runs/report", params={"path": ref})
    assert r.status_code == 200
    assert r.content == (runs["runs_dir"] / ref).read_bytes()
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == REPORT_CSP
    assert client.post("/runs/report", params={"path": ref}).status_code in (403, 405)


@pytest.mark.parametrize(
    "ref",
    [
        "../secret.html",
        f"{NEW}/../../../secret.html",
        "shapes/../../secret.html",
        "/etc/passwd",
        "secret.html",
        "",
        f"{NEW}/config.yaml",
        f"{NEW}/history.json",
        f"{NEW}/eval/test/metrics.json",
        f"{NEW}/bundle/model.safetensors",
        f"{NEW}/eval/test/../../eval/test/report.html",
        f"./{NEW}/eval/test/report.html",
        "monitor/shapes/report.json",
        "evil/20261203-000000/eval/test/report.html",  # listed, but a link to a file outside runs_dir
    ],
)
def test_anything_but_a_listed_report_inside_the_runs_folder_is_refused(
    client: TestClient, runs: dict[str, Any], ref: str
) -> None:
    if ref == "/etc/passwd":
        ref = str(runs["secret"])  # an absolute path to a file that exists
    r = client.get("/runs/report", params={"path": ref})
    assert r.status_code == 404
    assert "SECRET" not in r.text and "No such report" in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


def test_a_path_in_the_url_itself_is_not_a_report_either(client: TestClient) -> None:
    for url in (
        "/runs/report/../../secret.html",
        "/runs/%2e%2e/secret.html",
        "/runs/report%2F..%2Fsecret.html",
    ):
        r = client.get(url)
        assert r.status_code == 404 and "SECRET" not in r.text, url


@needs_browser
def test_ticking_runs_in_the_browser_draws_their_curves_side_by_side(runs: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    port, errors = free_port(), runs["root"] / "dashboard.txt"
    cmd = [
        KILN,
        "dashboard",
        "--log-url",
        runs["log"],
        "--runs-dir",
        str(runs["runs_dir"]),
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with processes() as procs, chromium() as browser:
        procs.append(start(cmd, cwd=runs["root"], env={**os.environ, "OMP_NUM_THREADS": "1"}, errors=errors))
        wait_until(lambda: answers(f"{url}/runs"), procs[0], errors)
        page = new_page(browser)
        page.goto(f"{url}/runs")
        legend = page.locator("#curves .u-legend .u-series")
        expect(page.locator("#curves .chart canvas")).to_have_count(4)
        expect(legend).to_have_count(4 * 2)  # x and one run per chart
        page.get_by_label(NEW).check()
        expect(legend).to_have_count(4 * 3, timeout=30_000)  # redrawn in place with both runs
        expect(page).to_have_url(
            f"{url}/runs?picked=1&run=evil%2F20261203-000000&run=shapes%2F20261202-090000"
        )
        assert page.console_errors == []
        narrow = new_page(browser, 390)
        narrow.goto(page.url)
        expect(narrow.locator("#curves .chart canvas")).to_have_count(4)
        assert not overflows(narrow) and narrow.console_errors == []
