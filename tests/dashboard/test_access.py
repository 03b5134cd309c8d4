"""Who may see the dashboard: loopback by default; beyond it only with the token; changes from its pages."""

from __future__ import annotations

from typing import Any

import pytest

from torchkiln.core.errors import ServeError
from torchkiln.dashboard.settings import load_dashboard_settings

TOKEN = "dashboard-token-0123456789abcdef"


def test_beyond_loopback_the_dashboard_needs_a_token() -> None:
    with pytest.raises(ServeError) as err:
        load_dashboard_settings(log_url="sqlite:///p.db", host="0.0.0.0")
    assert (
        "the dashboard binds 0.0.0.0, beyond loopback, so it needs a token: set KILN_DASHBOARD_TOKEN (16 "
        "characters or more), or bind 127.0.0.1" in str(err.value)
    )
    with pytest.raises(ServeError, match="the dashboard token must have at least 16 characters"):
        load_dashboard_settings(log_url="sqlite:///p.db", token="short")
    assert load_dashboard_settings(log_url="sqlite:///p.db", host="0.0.0.0", token=TOKEN).host == "0.0.0.0"


def test_a_missing_or_wrong_token_is_refused(dashboard: Any) -> None:
    with dashboard(token=TOKEN) as client:
        r = client.get("/live")
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        assert "This dashboard needs its token." in r.text and "row-" not in r.text
        assert client.get("/live", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/live", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get("/static/vendor/htmx.min.js").status_code == 200  # no data in the static files
        wrong = client.post("/login", data={"token": "nope", "next": "/live"}, follow_redirects=False)
        assert wrong.status_code == 403 and "The token is wrong." in wrong.text
        ok = client.post("/login", data={"token": TOKEN, "next": "/live"}, follow_redirects=False)
        assert (ok.status_code, ok.headers["location"]) == (303, "/live")
        assert (
            "httponly" in ok.headers["set-cookie"].lower()
            and "samesite=strict" in ok.headers["set-cookie"].lower()
        )
        assert client.get("/live").status_code == 200  # the cookie
        away = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
        assert away.headers["location"] == "/"


def test_a_change_must_come_from_the_dashboards_own_pages(client: Any) -> None:
    """A form another site posts has no HX-Request header, or a foreign Origin: refused before any page."""
    r = client.post("/live", data={"x": "1"})
    assert r.status_code == 403 and "Changes are made from the dashboard&#39;s own pages only." in r.text
    r = client.post("/live", headers={"HX-Request": "true", "Origin": "http://evil.example"})
    assert r.status_code == 403
