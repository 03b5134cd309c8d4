"""The Label page over a real log: the queue (unlabelled inputs, least confident first), and labels sent
through a real server app (run in this process on a loopback port), with the server's refusals and the
cases where there is no server to send them to. Last, in a real browser (Debian's chromium) against a real
``kiln serve`` and a real ``kiln dashboard --server`` (test_browser.py's fixtures): a label sent from the
keyboard leaves the queue, the focus moves to the next input, and the live accuracy on the page changes."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings

from .browsing import needs_browser, new_page, overflows
from .conftest import MARKUP, png
from .test_browser import WAIT_MS, browser, page, predict, stack

__all__ = ["browser", "page", "stack"]  # test_browser.py's fixtures, used here by name

HX = {"HX-Request": "true"}
NO_SERVER = (
    "This needs the running server: start the dashboard with --server http://HOST:PORT (the kiln serve that "
    "writes this log)."
)


def queued(html: str) -> list[str]:
    """The request ids of the queue's inputs, in page order."""
    return re.findall(r'name="request_id" value="([0-9a-f]+)"', html)


def least_confident_first(answers: list[dict[str, Any]]) -> list[str]:
    """The request ids of ``answers`` ordered as the queue orders them (ties: the newer first)."""
    order = sorted(enumerate(answers), key=lambda ia: (ia[1]["predictions"][0]["score"], -ia[0]))
    return [a["request_id"] for _, a in order]


@pytest.fixture(scope="module")
def server(logged: dict[str, Any], tiny_bundle: Path, tiny_text_bundle: Path) -> Iterator[str]:
    """The real server app over ``logged``'s log, served by uvicorn in a thread: its base URL."""
    settings = load_settings(
        models=[
            {"uri": str(tiny_bundle), "name": "shapes"},
            {"uri": str(tiny_text_bundle), "name": "reviews"},
        ],
        log_url=logged["url"],
        log_payload_sample_rate=1.0,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=app.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 60
    while not app.started or httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert thread.is_alive() and time.monotonic() < deadline, "the server app did not become ready"
        time.sleep(0.05)
    yield url
    app.should_exit = True
    thread.join(30)
    sock.close()


def test_the_queue_holds_the_unlabelled_inputs_least_confident_first(
    client: Any, logged: dict[str, Any]
) -> None:
    shapes = logged["answers"][:30]  # the first ten have labels (conftest)
    r = client.get("/label?model=shapes")
    assert r.status_code == 200
    assert queued(r.text) == least_confident_first(shapes[10:])
    assert "Waiting: 20 inputs" in r.text
    assert "Among the last 30 answered predictions of shapes, 30 kept their request body." in r.text
    assert "The inputs of the last 5,000 answered predictions of shapes (newest by id)" in r.text
    assert r.text.count('src="/inputs/') == 20
    # No server: the labels cannot be sent, and the page says how to fix that.
    assert r.text.count("<fieldset disabled>") == 20
    assert (
        "this dashboard has no server: start it with --server http://HOST:PORT (the kiln serve that writes "
        "this log) to send them." in r.text
    )
    assert "The server reports it: start the dashboard with --server http://HOST:PORT to see it." in r.text


def test_text_inputs_are_shown_escaped_and_the_first_model_is_the_default(
    client: Any, logged: dict[str, Any]
) -> None:
    r = client.get("/label")
    assert r.status_code == 200 and "<option selected>reviews</option>" in r.text
    assert queued(r.text) == least_confident_first(logged["answers"][30:])
    assert MARKUP not in r.text and "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in r.text


def test_an_unknown_model_is_a_404_that_names_the_models(client: Any) -> None:
    r = client.get("/label?model=shape")
    assert r.status_code == 404
    assert (
        "The prediction log has no answered prediction of model &#39;shape&#39;. Did you mean "
        "&#39;shapes&#39;? Models in its newest 10,000 rows: reviews, shapes. Pick one of them." in r.text
    )


def test_without_a_server_a_label_is_not_stored_and_the_page_says_why(
    client: Any, logged: dict[str, Any]
) -> None:
    rid = logged["answers"][20]["request_id"]
    form = {"model": "shapes", "request_id": rid, "item": "0", "position": "3", "label": "dot"}
    r = client.post("/label", data=form, headers=HX)
    assert r.status_code == 200
    assert f"Not stored. {NO_SERVER}" in r.text
    assert rid in queued(r.text)
    assert client.post("/label", data=form).status_code == 403  # not from htmx: the guard refuses it
    r = client.post("/label", data=form | {"item": "x"}, headers=HX)
    assert r.status_code == 422 and "A label needs model, request_id, item, position and label" in r.text


def test_an_unreachable_server_is_said_in_the_page(dashboard: Any, logged: dict[str, Any]) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}"
    reason = (
        re.escape(f"Cannot reach the server at {gone} (")
        + r"ConnectError: [^)]*\)\. Is it running\? Check --server\."
    )
    with dashboard(server=gone) as client:
        page = client.get("/label?model=shapes")
        assert page.status_code == 200 and re.search(reason, page.text)
        form = {"model": "shapes", "request_id": logged["answers"][20]["request_id"], "item": "0"}
        r = client.post("/label", data=form | {"position": "0", "label": "dot"}, headers=HX)
        assert r.status_code == 200 and re.search("Not stored. " + reason, r.text)


def test_a_label_goes_through_the_server_and_leaves_the_queue(
    dashboard: Any, server: str, logged: dict[str, Any]
) -> None:
    with dashboard(server=server) as client:
        page = client.get("/label?model=shapes").text
        assert "10 labelled" in page and "50.0 %" in page and "5 of 10 right" in page  # conftest's labels
        assert "<fieldset>" in page and "<fieldset disabled>" not in page
        assert re.findall(r'name="label" value="(\w+)"', page)[:3] == ["dot", "hbar", "vbar"]  # the server's
        before = queued(page)
        rid = before[0]
        said = next(a for a in logged["answers"] if a["request_id"] == rid)["predictions"][0]["label"]
        form = {"model": "shapes", "request_id": rid, "item": "0", "position": "0", "label": said}

        r = client.post("/label", data=form, headers=HX)
        assert r.status_code == 200
        assert queued(r.text) == before[1:]
        stored = f"Stored: input 0 of request {rid[:8]} is &#39;{said}&#39;; the model said &#39;{said}&#39;"
        assert f"{stored} (right)." in r.text
        assert "11 labelled" in r.text and "6 of 11 right" in r.text and "54.5 %" in r.text
        assert 'hx-swap-oob="true"' in r.text and 'id="label-status" hx-swap-oob="innerHTML"' in r.text
        # The focus goes to the input that took the labelled one's place: its first label button.
        first = re.search(r'<li id="label-[^"]+".*?</li>', r.text, re.S)
        assert first and before[1] in first.group(0) and "autofocus" in first.group(0)
        assert r.text.count("autofocus") == 1

        r = client.post("/label", data=form, headers=HX)  # again: the server keeps the first label
        assert (
            f"Not stored. The server answered 409: Request &#39;{rid}&#39; already has feedback (input 0: "
            f"&#39;{said}&#39; at " in r.text
        )
        assert "Each input takes one label, the first, so nothing of this request was stored." in r.text

        other = before[2]
        r = client.post("/label", data=form | {"request_id": other, "label": "circle"}, headers=HX)
        refused = (
            "Not stored. The server answered 422: label &#39;circle&#39; is not a class of model "
            "&#39;shapes&#39;. Valid classes: dot, hbar, vbar. Send one of them, spelled exactly."
        )
        item = re.search(rf'<li id="label-[^"]+"(?:(?!</li>).)*value="{other}".*?</li>', r.text, re.S)
        assert item and refused in item.group(0)  # shown at the input it was for, which is still there
        assert "autofocus" in item.group(0)


def test_a_request_of_several_inputs_waits_input_by_input(dashboard: Any, server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as http, dashboard(server=server) as client:
        r = http.post("/v1/models/shapes/predict", json={"images": [png(60), png(61), png(62)]})
        rid = r.json()["request_id"]
        stored = http.post("/v1/feedback", json={"request_id": rid, "label": "dot", "index": 1})
        assert stored.status_code == 201, stored.text
        deadline = time.monotonic() + 30
        while rid not in (page := client.get("/label?model=shapes").text):  # the log writer flushes
            assert time.monotonic() < deadline, "the request did not reach the log"
            time.sleep(0.05)
        blocks = {
            m.group(1, 2): m.group(0) for m in re.finditer(r'<li id="label-(\d+)-(\d)".*?</li>', page, re.S)
        }
        theirs = {key: block for key, block in blocks.items() if rid in block}
        assert sorted(item for _, item in theirs) == ["0", "2"]  # input 1 has its label
        assert all(f'src="/inputs/{row}/{item}.png"' in block for (row, item), block in theirs.items())
        assert f"request {rid[:8]}, input 1 of 3" in page and f"request {rid[:8]}, input 3 of 3" in page


def wait_queue(url: str, n: int) -> None:
    """Until the queue at ``url`` holds ``n`` inputs (the server's log writer flushes on its own time)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while httpx.get(url, timeout=10).text.count('class="label-item"') < n:
        assert time.monotonic() < deadline, f"the log did not get {n} predictions"
        time.sleep(0.1)


@needs_browser
def test_a_label_sent_from_the_keyboard_updates_the_live_accuracy(stack: dict[str, Any], page: Any) -> None:
    from playwright.sync_api import expect

    answers = predict(stack["server"], range(40, 44))
    url = f"{stack['url']}/label?model=shapes"
    wait_queue(url, 4)
    page.goto(url)
    accuracy, items = page.locator("#label-accuracy"), page.locator("#label-queue li.label-item")
    expect(items).to_have_count(4)
    expect(accuracy.locator(".labelled")).to_contain_text("0 labelled")
    rid = items.first.locator("input[name=request_id]").get_attribute("value")
    said = next(a for a in answers if a["request_id"] == rid)["predictions"][0]["label"]
    second = items.nth(1).get_attribute("id")

    items.first.get_by_role("button", name=said).focus()
    page.keyboard.press("Enter")
    expect(items).to_have_count(3, timeout=WAIT_MS)
    expect(accuracy.locator(".labelled")).to_contain_text("1 labelled")
    expect(accuracy.locator(".big")).to_have_text("100.0 %")
    expect(page.locator("#label-status")).to_have_text(
        f"Stored: input 0 of request {rid[:8]} is '{said}'; the model said '{said}' (right)."
    )
    # The focus is on the first label button of the input that took the labelled one's place.
    focused = page.evaluate("[document.activeElement.tagName, document.activeElement.closest('li')?.id]")
    assert focused == ["BUTTON", second]
    assert page.console_errors == []

    phone = new_page(page.context.browser, width=390)
    phone.goto(url)
    expect(phone.locator("#label-queue li.label-item")).to_have_count(3)
    assert not overflows(phone) and phone.console_errors == []
    phone.context.close()
