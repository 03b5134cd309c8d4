"""The live page over a real log: rows, inputs, filters, paging, what is new, and bad filters."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from torchkiln.dashboard.app import create_dashboard
from torchkiln.dashboard.settings import load_dashboard_settings

from .conftest import MARKUP


def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="row-(\d+)"', html)]


def test_the_page_shows_the_newest_rows_with_their_inputs(client: Any, logged: dict[str, Any]) -> None:
    r = client.get("/live")
    assert r.status_code == 200
    ids = row_ids(r.text)
    assert len(ids) == 32 and ids == sorted(ids, reverse=True)  # 30 images and 2 texts, newest first
    assert r.text.count('src="/inputs/') == 30
    assert "a wonderful film" in r.text
    first = logged["answers"][0]
    assert (
        f"input 0 of request {first['request_id'][:8]}, answered {first['predictions'][0]['label']}" in r.text
    )
    png = client.get(f"/inputs/{ids[-1]}/0.png")
    assert (png.status_code, png.headers["content-type"], png.content[:4]) == (200, "image/png", b"\x89PNG")
    assert r.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self';")


def test_markup_in_an_input_is_shown_as_text(client: Any) -> None:
    html = client.get("/live?model=reviews").text
    assert MARKUP not in html and "<script>document.title" not in html
    assert (
        "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
        in html
    )


def test_filters_narrow_the_rows(client: Any, logged: dict[str, Any]) -> None:
    answers = logged["answers"]
    assert len(row_ids(client.get("/live?model=reviews").text)) == 2
    label = answers[0]["predictions"][0]["label"]
    want = sum(a["predictions"][0]["label"] == label for a in answers[:30])
    assert len(row_ids(client.get(f"/live?model=shapes&label={label}").text)) == want
    scores = [a["predictions"][0]["score"] for a in answers[:30]]
    assert len(row_ids(client.get("/live?model=shapes&min_confidence=0.9").text)) == sum(
        s >= 0.9 for s in scores
    )
    assert len(row_ids(client.get("/live?model=shapes&max_confidence=0.5").text)) == sum(
        s <= 0.5 for s in scores
    )
    wrong = client.get("/live?disagrees=1").text
    assert len(row_ids(wrong)) == 5 and wrong.count('class="feedback wrong"') == 5


def test_older_pages_and_new_rows(dashboard: Any) -> None:
    with dashboard(page_size=10) as client:
        page = client.get("/live").text
        ids = row_ids(page)
        assert len(ids) == 10
        older = re.search(r'href="/live\?before=(\d+)"', page)
        assert older and int(older.group(1)) == ids[-1]
        assert row_ids(client.get(f"/live?before={ids[-1]}").text) == [i - 10 for i in ids]
        assert client.get(f"/live/rows?after={ids[0]}").status_code == 204  # nothing newer
        newer = client.get(f"/live/rows?after={ids[3]}")
        assert row_ids(newer.text) == ids[:3]
        assert f'hx-swap-oob="true" hidden hx-get="/live/rows?after={ids[0]}"' in newer.text


def test_a_bad_filter_is_a_422_page_that_says_what_to_fix(client: Any) -> None:
    r = client.get("/live?min_confidence=lots")
    assert r.status_code == 422
    assert (
        "min_confidence must be a number from 0 to 1, like 0.5; got &#39;lots&#39;. Fix the filter." in r.text
    )
    assert client.get("/inputs/999999/0.png").status_code == 404
    assert client.get("/nope").status_code == 404


def test_a_log_no_server_has_migrated_is_filtered_from_its_json(
    logged: dict[str, Any], tmp_path: Path
) -> None:
    """A log written before the top_label/top_score columns: the filters read the answers' JSON instead."""
    old = tmp_path / "old.db"
    shutil.copy(logged["root"] / "p.db", old)
    with sqlite3.connect(old) as conn:
        for column in ("top_label", "top_score"):
            conn.execute(f"DROP INDEX ix_predictions_{column}")
            conn.execute(f"ALTER TABLE predictions DROP COLUMN {column}")
    label = logged["answers"][0]["predictions"][0]["label"]
    want = sum(a["predictions"][0]["label"] == label for a in logged["answers"][:30])
    settings = load_dashboard_settings(log_url=f"sqlite:///{old}")
    with TestClient(create_dashboard(settings)) as client:
        assert len(row_ids(client.get(f"/live?model=shapes&label={label}").text)) == want
        assert len(row_ids(client.get("/live?min_confidence=0&max_confidence=1").text)) == 32  # all scored
