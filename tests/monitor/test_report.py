"""kiln monitor report's library: drift per version on really served traffic, live accuracy, the files."""

from __future__ import annotations

import json
from pathlib import Path

from torchkiln.monitor.drift import DriftSettings
from torchkiln.monitor.html import write_report
from torchkiln.monitor.report import check
from torchkiln.serve.predlog_db import FIELDS

from ..conftest import running
from .conftest import CLEAN, DARK, ServedLog, images, png

EMBEDDED = "signals" in FIELDS  # the server logs live signals (embeddings) once serve/live_signals.py lands


def test_clean_traffic_does_not_drift(served_log: ServedLog) -> None:
    report = check("shapes", log_url=served_log.clean_url, window=str(CLEAN), bundles=[served_log.bundle])
    (v,) = report.versions
    assert (v.model, v.version, v.shadow, v.items, v.verdict) == ("shapes", served_log.version, False, CLEAN,
                                                                  "no drift")  # fmt: skip
    signals = {"input/mean", "input/std", "input/channel_means[0]", "input/bytes", "prediction", "confidence"}
    assert set(v.scores) == signals | ({"embedding"} if EMBEDDED else set())
    assert all(score < 1 for score in v.scores.values())
    assert len(v.timeline) == 2 and all(s.items == 60 for s in v.timeline)


def test_darker_traffic_drifts_and_the_report_says_where(served_log: ServedLog, tmp_path: Path) -> None:
    report = check(served_log.bundle.as_posix(), log_url=served_log.url, window=str(DARK))
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.json", "report.html"]
    data = json.loads(files[0].read_text())
    (v,) = data["versions"]
    assert (v["model"], v["version"], v["shadow"], v["items"], v["verdict"]) == (
        "shapes", served_log.version, False, DARK, "drift")  # fmt: skip
    drifted = {r["key"] for r in v["drift"]["rows"] if r["drifted"]}
    assert {"input/mean/ks", "input/mean/psi"} <= drifted
    assert v["scores"]["input/mean"] > 1
    assert v["drift"]["n_cur"] == DARK and v["drift"]["min_window"] == 50
    assert set(data) == {
        "target",
        "log_url",
        "window",
        "created",
        "thresholds",
        "settings",
        "versions",
        "notes",
    }
    # Live accuracy: the window of the last 120 labelled inputs is the clean traffic (the dark had none).
    perf = v["performance"]
    assert perf["labelled"] == CLEAN and 0 <= perf["accuracy"]["low"] <= perf["accuracy"]["value"]
    html = files[1].read_text()
    assert (
        "shapes version" in html
        and "data:image/png;base64," in html
        and "http" not in html.split("<body>")[1]
    )


def test_the_whole_window_mixes_clean_and_dark_and_the_timeline_shows_the_change(
    served_log: ServedLog,
) -> None:
    (v,) = check(
        "shapes", log_url=served_log.url, window=str(CLEAN + DARK), bundles=[served_log.bundle]
    ).versions
    assert v.items == CLEAN + DARK and v.verdict == "drift"
    first, last = v.timeline[0], v.timeline[-1]
    assert last.verdict == "drift" and len(v.timeline) == 4
    # The brightness moves from the reference's to three times darker: the mean's score crosses 1.
    assert last.scores["input/mean"] > 1 > first.scores["input/mean"]


def test_a_small_window_is_not_enough_data(served_log: ServedLog, tmp_path: Path) -> None:
    report = check("shapes", log_url=served_log.url, window="30", bundles=[served_log.bundle])
    (v,) = report.versions
    assert (v.items, v.verdict, v.drift.rows, v.scores, v.timeline) == (30, "not enough data", (), {}, [])
    files = write_report(report, tmp_path)
    assert json.loads(files[0].read_text())["versions"][0]["verdict"] == "not enough data"
    assert "Not enough data" in files[1].read_text()


def test_a_model_with_no_traffic_gives_a_note(served_log: ServedLog) -> None:
    report = check("nobody", log_url=served_log.url, window="1h")
    assert report.versions == []
    assert report.notes == [
        "The prediction log holds no traffic of model 'nobody' in the window 1h: nothing to check."
    ]


def test_min_window_setting_is_used(served_log: ServedLog) -> None:
    (v,) = check(
        "shapes",
        log_url=served_log.url,
        window="30",
        bundles=[served_log.bundle],
        settings=DriftSettings(min_window=20),
    ).versions
    assert v.verdict == "drift"  # the last 30 inputs are all dark


def test_a_shadow_arm_serving_the_champions_own_version_is_not_a_second_group(
    served_log: ServedLog, tmp_path: Path
) -> None:
    """Between retrains the challenger alias points at the champion's version: its mirrored answers must
    not form a second group (a second alert per incident)."""
    import asyncio

    from torchkiln.monitor.traffic import read_traffic
    from torchkiln.serve.app import create_app
    from torchkiln.serve.predlog import read_predictions
    from torchkiln.serve.settings import load_settings

    bundle = str(served_log.bundle)
    model = {"uri": bundle, "name": "shapes", "challenger": bundle, "shadow": True}
    url = f"sqlite:///{tmp_path}/p.db"

    async def go() -> None:
        app = create_app(load_settings(models=[model], log_url=url))
        async with running(app) as client:
            for _label, image in images(60, seed=4):
                r = await client.post("/v1/models/shapes/predict", json={"images": [png(image)]})
                assert r.status_code == 200, r.text

    asyncio.run(go())
    rows = read_predictions(url)
    assert {r.shadow for r in rows} == {False, True}  # the shadow arm did answer, with the same version
    groups = read_traffic(url, window="1000")
    assert [(g.version, g.shadow, len(g.summaries)) for g in groups] == [(served_log.version, False, 60)]
