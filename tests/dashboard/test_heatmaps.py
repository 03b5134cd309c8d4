"""Heatmaps beside logged image inputs: a button per image (with a server), the fragment it loads (the
heatmap the real server draws for the version that answered, kept after the first time), and the page's
answer when there is none: no server, an unreachable one, a version it no longer serves, a text input."""

from __future__ import annotations

import base64
import io
import re
import socket
from typing import Any

from PIL import Image

from torchkiln.dashboard.heatmaps import Heatmaps
from torchkiln.dashboard.log import Filters, LogReader
from torchkiln.dashboard.server import Server
from torchkiln.dashboard.settings import load_dashboard_settings

from .test_label import server

__all__ = ["server"]  # test_label.py's real server app over the same log, used here by name
BUTTON = re.compile(r'<button type="button" class="heat-button" hx-get="/inputs/(\d+)/(\d+)/heatmap\?px=48"')
NO_SERVER = (
    "This needs the running server: start the dashboard with --server http://HOST:PORT (the kiln serve that "
    "writes this log)."
)


def first_row(logged: dict[str, Any], model: str) -> int:
    return LogReader(logged["url"]).rows(Filters(model=model), limit=1)[0].id


def test_an_image_input_gets_the_servers_heatmap_once(
    dashboard: Any, server: str, logged: dict[str, Any]
) -> None:
    with dashboard(server=server) as client:
        page = client.get("/live").text
        buttons = BUTTON.findall(page)
        assert len(buttons) == 30  # the image rows; the two text rows have none
        row = int(buttons[0][0])
        r = client.get(f"/inputs/{row}/0/heatmap?px=48")
        assert r.status_code == 200
        found = re.search(
            r'<img class="heat" src="data:image/png;base64,([^"]+)" width="48" height="48"', r.text
        )
        assert found, r.text
        with Image.open(io.BytesIO(base64.b64decode(found.group(1)))) as img:
            assert img.size == (16, 16) and img.mode == "RGB"  # the model's input, as it saw it
        label = LogReader(logged["url"]).answer(row, 0).label
        assert f'alt="Grad-CAM heatmap of input 0: where the model found {label}"' in r.text
        heatmaps = client.app.state.dashboard.heatmaps
        assert len(heatmaps) == 1
        assert client.get(f"/inputs/{row}/0/heatmap?px=48").text == r.text and len(heatmaps) == 1  # kept
        text_row = first_row(logged, "reviews")
        r = client.get(f"/inputs/{text_row}/0/heatmap")
        assert f"No heatmap: request row {text_row} has no kept image input 0" in r.text
        assert (
            "No heatmap: request row 999999 kept no request body"
            in client.get("/inputs/999999/0/heatmap").text
        )


def test_without_a_server_there_is_no_button_and_the_fragment_says_why(
    client: Any, logged: dict[str, Any]
) -> None:
    assert not BUTTON.search(client.get("/live").text)
    r = client.get(f"/inputs/{first_row(logged, 'shapes')}/0/heatmap")
    assert r.status_code == 200 and f"No heatmap: {NO_SERVER}" in r.text
    assert len(client.app.state.dashboard.heatmaps) == 0  # asked again once there is a server


def test_an_unreachable_server_is_said_and_asked_again(dashboard: Any, logged: dict[str, Any]) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}"
    with dashboard(server=gone) as client:
        r = client.get(f"/inputs/{first_row(logged, 'shapes')}/0/heatmap")
        assert f"No heatmap: Cannot reach the server at {gone} (ConnectError" in r.text
        assert len(client.app.state.dashboard.heatmaps) == 0


def test_a_version_the_server_no_longer_serves_is_a_kept_refusal(server: str, logged: dict[str, Any]) -> None:
    log = LogReader(logged["url"])
    row = first_row(logged, "shapes")
    body, media, model = log.payload(row)
    heatmaps = Heatmaps(Server(load_dashboard_settings(log_url=logged["url"], server=server)))
    served = log.version(row)
    heat = heatmaps.get(row, 0, body=body, media=media or "", model=model, version="0ld")
    assert heat.png is None and heat.reason == (
        f"The server answered 404: Model 'shapes' does not serve version '0ld'; it serves {served} "
        "(champion). Ask for one of them, or leave version out for the champion's."
    )
    assert len(heatmaps) == 1  # a refusal for good: not asked again
    assert heatmaps.get(row, 0, body=body, media=media or "", model=model, version=served).png is not None
