"""A forecaster's output signals (the forecast's level and spread) drift-checked like the input statistics.

``forecast_log`` trains a tiny LSTM forecaster on a stationary monthly series (400 months, the last 12 for
test and the 200 before them for val: a reference of 195 windows), serves it in process and logs three
kinds of traffic, each in its own log: clean (the histories of 100 val windows drawn at random, so the
window is a sample of the reference's own items), the same histories three times larger, 10 units
higher, and with twice the history (the earlier months before each window, which the model never reads).

The forecaster normalizes each window before its network, so its embedding cannot see a change of scale or
level: only the input statistics and the output signals do.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchkiln import api
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.core.errors import ConfigError
from torchkiln.monitor.calibrate import calibrate
from torchkiln.monitor.drift import DriftSettings, Signals, detect, judge, measure
from torchkiln.monitor.html import write_report
from torchkiln.monitor.report import check
from torchkiln.monitor.watch import Gauges
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.forecasting.history import History

from ..conftest import running, tiny_forecast_config_dict, write_series_csv

OUTPUT_ROWS = [
    "output/forecast_level/ks",
    "output/forecast_level/psi",
    "output/forecast_spread/ks",
    "output/forecast_spread/psi",
]
# No input/points: the history length beyond the lookback is a request-only field (the model never reads it).
SCORES = {"input/mean", "input/std", "input/last[0]", "output/forecast_level", "output/forecast_spread",
          "embedding"}  # fmt: skip


@dataclass(frozen=True)
class ForecastLog:
    bundle: Path
    urls: dict[str, str]  # traffic kind -> its log's URL
    sample: np.ndarray  # the reference items each log holds, in order


def body(h: History, *, scale: float = 1.0, offset: float = 0.0) -> dict[str, Any]:
    """A request for ``h``'s history (one target), its values scaled then offset."""
    times = np.datetime_as_string(h.time, unit="D").tolist()
    return {"history": (h.values[:, 0] * scale + offset).tolist(), "timestamps": times}


async def serve(bundle: Path, url: str, requests: list[dict[str, Any]]) -> None:
    app = create_app(load_settings(models=[{"uri": str(bundle), "name": "series"}], log_url=url))
    async with running(app) as client:
        for r in requests:
            answer = await client.post("/v1/models/series/predict", json=r)
            assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def forecast_log(tmp_path_factory: pytest.TempPathFactory) -> ForecastLog:
    root = tmp_path_factory.mktemp("forecast-log")
    t = np.arange(400)
    values = 50 + 8 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(1).normal(0, 1.0, len(t))
    cfg = tiny_forecast_config_dict(write_series_csv(root / "series.csv", values), root / "runs")
    cfg["data"]["split"] = {"val": 200, "test": 12}
    bundle = api.train(api.load_config(cfg)) / "bundle"
    b = load_bundle(bundle)
    _, data = b.task.prepare(b.config, splits={"val"}, state=b.state)
    items = b.task.reference_inputs(b.config, data, "val")
    # A random sample: every other window would keep half the phases of the season and shift the level.
    sample = np.sort(np.random.default_rng(0).choice(len(items), 100, replace=False))
    histories = [items[int(i)] for i in sample]
    kinds = {"clean": {}, "x3": {"scale": 3.0}, "plus10": {"offset": 10.0}}
    urls = {kind: f"sqlite:///{root}/{kind}.db" for kind in [*kinds, "longer"]}
    for kind, change in kinds.items():
        asyncio.run(serve(bundle, urls[kind], [body(h, **change) for h in histories]))
    lookback = len(items[0].values)
    longer = [longer_body(items[int(i) - lookback], items[int(i)]) for i in sample if i >= lookback]
    asyncio.run(serve(bundle, urls["longer"], longer))
    return ForecastLog(bundle, urls, sample)


def longer_body(before: History, h: History) -> dict[str, Any]:
    """``h``'s request with the window just before it prepended: twice the history, the same last months."""
    assert before.time[-1] < h.time[0]
    first, second = body(before), body(h)
    return {k: first[k] + second[k] for k in ("history", "timestamps")}


def test_clean_traffic_has_the_references_output_signals_and_does_not_drift(
    forecast_log: ForecastLog, tmp_path: Path
) -> None:
    report = check(str(forecast_log.bundle), log_url=forecast_log.urls["clean"], window="1000")
    (v,) = report.versions
    assert (v.items, v.verdict) == (100, "no drift")
    assert [r.key for r in v.drift.rows if r.signal == "output"] == OUTPUT_ROWS
    assert set(v.scores) == SCORES and all(s < 1 for s in v.scores.values())
    # The server's live signals are the profiler's, in the same (scaled) units: the clean window holds
    # reference items, logged to 5 significant digits.
    for name in ("forecast_level", "forecast_spread"):
        want = v.reference.outputs[name][forecast_log.sample]
        np.testing.assert_allclose(v.window.outputs[name], want, rtol=1e-4)
    data = json.loads(write_report(report, tmp_path)[0].read_text())
    rows = {r["key"]: r for r in data["versions"][0]["drift"]["rows"]}
    assert [k for k in rows if k.startswith("output/")] == OUTPUT_ROWS
    assert not any(rows[k]["drifted"] for k in OUTPUT_ROWS)


def test_three_times_larger_series_drift_on_both_output_signals(
    forecast_log: ForecastLog, tmp_path: Path
) -> None:
    report = check(str(forecast_log.bundle), log_url=forecast_log.urls["x3"], window="1000")
    (v,) = report.versions
    assert v.verdict == "drift"
    assert [r.key for r in v.drift.rows if r.drifted and r.signal == "output"] == OUTPUT_ROWS
    assert v.scores["output/forecast_level"] > 1 and v.scores["output/forecast_spread"] > 1
    assert v.scores["embedding"] < 1  # the window normalization hides the scale from the network
    files = write_report(report, tmp_path)
    html = files[1].read_text()
    assert all(key in html for key in OUTPUT_ROWS)
    assert "output forecast_level" in html and "output forecast_spread" in html  # the two plots
    gauges = Gauges()
    gauges.update(report)
    for signal in ("output/forecast_level", "output/forecast_spread"):
        labels = {"model": "series", "version": v.version, "signal": signal}
        assert gauges.registry.get_sample_value("kiln_drift_score", labels) == v.scores[signal]


def test_an_offset_moves_the_level_and_not_the_spread(forecast_log: ForecastLog) -> None:
    (v,) = check(str(forecast_log.bundle), log_url=forecast_log.urls["plus10"], window="1000").versions
    drifted = {r.key for r in v.drift.rows if r.drifted}
    assert [k for k in OUTPUT_ROWS if k in drifted] == OUTPUT_ROWS[:2]  # the level's ks and psi
    assert v.scores["output/forecast_spread"] < 1 < v.scores["output/forecast_level"]


def test_a_small_window_is_not_enough_data(forecast_log: ForecastLog) -> None:
    (v,) = check(str(forecast_log.bundle), log_url=forecast_log.urls["x3"], window="30").versions
    assert (v.items, v.verdict, v.drift.rows, v.scores) == (30, "not enough data", (), {})


def test_calibrated_thresholds_cover_the_output_signals(forecast_log: ForecastLog) -> None:
    (clean,) = check(str(forecast_log.bundle), log_url=forecast_log.urls["clean"], window="1000").versions
    (x3,) = check(str(forecast_log.bundle), log_url=forecast_log.urls["x3"], window="1000").versions
    settings = DriftSettings(permutations=20)
    t = calibrate(clean.reference, 60, target_false_alarm=0.1, rounds=50, settings=settings)
    assert [k for k in t.calibrated if k.startswith("output/")] == OUTPUT_ROWS
    rows = judge(measure(clean.reference, x3.window, settings=settings), t).rows
    assert [r.key for r in rows if r.drifted and r.signal == "output"] == OUTPUT_ROWS


def test_output_signals_are_compared_by_name_with_their_own_methods() -> None:
    rng = np.random.default_rng(0)
    ref = Signals(outputs={"level": rng.normal(size=500), "spread": rng.normal(size=500)})
    window = Signals(outputs={"level": rng.normal(1.0, size=100)})  # a name the reference lacks is skipped
    report = detect(ref, window, settings=DriftSettings(output_methods=("ks",)))
    assert [(r.key, r.drifted) for r in report.rows] == [("output/level/ks", True)]
    assert len(ref.take(np.arange(10))) == 10 and set(ref.take(np.arange(10)).outputs) == {"level", "spread"}
    with pytest.raises(ConfigError, match=r"Unknown method 'kss' in DriftSettings.output_methods.*ks, psi"):
        DriftSettings(output_methods=("kss",))


def test_a_longer_history_than_the_lookback_is_no_drift(forecast_log: ForecastLog) -> None:
    """Clients may send more history than the model reads: the logged length is not compared."""
    assert "points" not in load_bundle(forecast_log.bundle).profile["reference"]["summary_columns"]
    (v,) = check(str(forecast_log.bundle), log_url=forecast_log.urls["longer"], window="1000").versions
    assert v.verdict == "no drift" and set(v.scores) == SCORES
