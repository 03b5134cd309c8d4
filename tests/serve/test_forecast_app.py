"""A forecasting bundle behind the same server: {"history", "timestamps"} in, dated quantile forecasts out,
the same as the predictor's; each bad request gets its own 422."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from torchkiln import load_predictor
from torchkiln.serve.predlog import read_predictions
from torchkiln.tasks.forecasting.history import History

URL = "/v1/models/series/predict"


def body(values: np.ndarray, start: str = "2000-01") -> dict[str, Any]:
    times = np.datetime64(start, "M") + np.arange(len(values))
    return {"history": [float(v) for v in values], "timestamps": [f"{t}-01" for t in times]}


def test_histories_are_answered_like_the_predictor_and_logged(
    tmp_path: Path, serve_one, tiny_forecast_bundle: Path, series_values
) -> None:
    values = series_values()
    requests = [body(values[:30]), body(values[10:60], start="2000-11")]
    histories = [
        History(np.asarray(r["history"])[:, None], np.array(r["timestamps"], dtype="datetime64[ns]"))
        for r in requests
    ]
    expected = load_predictor(tiny_forecast_bundle).predict(histories)

    async def go() -> list[Any]:
        async with serve_one(tmp_path, tiny_forecast_bundle, "series") as client:
            answers = await asyncio.gather(*(client.post(URL, json=r) for r in requests))  # batched together
            listed = (await client.get("/v1/models")).json()["models"][0]
            assert listed["task"] == "forecasting"
            assert listed["input_schema"]["title"] == "ForecastRequest"
            return [r.json() for r in answers]

    got = asyncio.run(go())
    for answer, want in zip(got, expected, strict=True):
        [prediction] = answer["predictions"]
        assert prediction["timestamps"] == want["timestamps"]
        np.testing.assert_allclose(prediction["forecast"]["value"], want["forecast"]["value"], rtol=1e-5)
    assert got[0]["predictions"][0]["timestamps"][0] == "2002-07-01"
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    assert len(rows) == 2
    assert sorted(s["points"] for r in rows for s in r.input_summary) == [30, 50]


def test_bad_histories_get_their_own_422(
    tmp_path: Path, serve_one, tiny_forecast_bundle: Path, series_values
) -> None:
    values = series_values()
    short = body(values[:5])
    mismatched = {**body(values[:20]), "timestamps": body(values[:19])["timestamps"]}
    cases = [
        (short, "The history has 5 points, but the model needs at least lookback = 12."),
        (mismatched, "history has 20 values but timestamps has 19. Send one timestamp per value."),
        ({**body(values[:20]), "history": [[1.0, 2.0]] * 20}, "The history has 2 value(s) per step"),
        ({**body(values[:20]), "timestamps": ["soon"] * 20}, "timestamps are not ISO 8601 times"),
        ({"history": [], "timestamps": []}, "history is empty."),
        ({"history": [1.0]}, "'timestamps' is required but missing. Add it to the request."),
    ]

    async def go() -> list[tuple[int, str]]:
        async with serve_one(tmp_path, tiny_forecast_bundle, "series") as client:
            out = []
            for request, _ in cases:
                r = await client.post(URL, json=request)
                out.append((r.status_code, r.json()["detail"]))
            return out

    for (status, detail), (_, message) in zip(asyncio.run(go()), cases, strict=True):
        assert status == 422 and message in detail, (status, detail, message)
