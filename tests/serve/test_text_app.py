"""A text bundle behind the same server: {"texts": [...]} in, the same answers as the predictor out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from torchkiln import load_predictor
from torchkiln.serve.predlog import read_predictions

URL = "/v1/models/reviews/predict"


def test_texts_are_answered_like_the_predictor_and_logged(
    tmp_path: Path, serve_one, tiny_text_bundle: Path
) -> None:
    texts = ["A wonderful, moving film.", "Dull and tedious, a messy plot with bland acting.", "The cast"]
    expected = load_predictor(tiny_text_bundle).predict(texts, top_k=1)

    async def go() -> list[Any]:
        async with serve_one(tmp_path, tiny_text_bundle, "reviews") as client:
            # Three requests at once: the batcher pads them into one model call.
            answers = await asyncio.gather(
                *(client.post(URL, json={"text": t, "top_k": 1}) for t in texts),
                client.post(URL, json={"texts": texts, "top_k": 1}),
            )
            listed = (await client.get("/v1/models")).json()["models"][0]
            assert listed["task"] == "text-classification"
            assert listed["input_schema"]["title"] == "TextPredictRequest"
            return [r.json() for r in answers]

    *singles, batch = asyncio.run(go())
    assert [s["predictions"][0] for s in singles] == expected
    assert batch["predictions"] == expected
    rows = read_predictions(f"sqlite:///{tmp_path}/p.db")
    assert len(rows) == 4
    summaries = [s for r in rows for s in r.input_summary]
    assert {s["chars"] for s in summaries} == {len(t) for t in texts}
    assert all(s["tokens"] >= 1 and len(s["sha256"]) == 64 for s in summaries)


def test_bad_text_requests_get_their_own_422(tmp_path: Path, serve_one, tiny_text_bundle: Path) -> None:
    cases = [
        ({"texts": []}, "The request has no inputs."),
        ({"texts": ["fine", "  "]}, "texts[1] is empty. Expected some text to classify."),
        ({"text": "x" * 100_001}, "texts[0] has 100,001 characters, more than the limit of 100,000."),
        (
            {"text": "a", "texts": ["b"]},
            "give exactly one of 'text' (a string) or 'texts' (a list of strings)",
        ),
        ({"texts": [3]}, "'texts.0': Input should be a valid string."),
        ({"image": "aGVsbG8="}, "unknown key 'image'."),
    ]

    async def go() -> list[tuple[int, str]]:
        async with serve_one(tmp_path, tiny_text_bundle, "reviews") as client:
            out = []
            for body, _ in cases:
                r = await client.post(URL, json=body)
                out.append((r.status_code, r.json()["detail"]))
            upload = await client.post(URL, files={"images": ("a.png", b"x", "image/png")})
            out.append((upload.status_code, upload.json()["detail"]))
            return out

    got = asyncio.run(go())
    for (status, detail), (_, message) in zip(got, cases, strict=False):
        assert status == 422 and message in detail, (status, detail, message)
    assert got[-1][0] == 415 and "Send application/json" in got[-1][1]
