"""The running ``kiln serve`` the dashboard talks to (``--server``): what it serves, its live accuracy and
metrics, and the two changes the dashboard makes through it, a feedback label and a reload.

Every call is the server's public HTTP API with the server's own tokens (the admin token for a reload,
the feedback token when the server has one); the dashboard never writes to the log or the registry's
database itself, except for moving an alias on rollback (:mod:`torchkiln.serve.registry`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from torchkiln.core.errors import ServeError
from torchkiln.dashboard.settings import DashboardSettings

TIMEOUT_S = 30.0


class ServerAnswer(ServeError):
    """The server answered a call with an error: its status and its own message (what to fix)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Server:
    """Calls to the server in ``settings.server``.

    Raises (every method):
        ServeError: no server is configured, or it cannot be reached.
        ServerAnswer: it answered with an error.

    Example:
        >>> Server(settings).models()[0]["name"]
        'fashion'
    """

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return self.settings.server is not None

    def _call(
        self, method: str, path: str, *, token: Any = None, content_type: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        if self.settings.server is None:
            raise ServeError(
                "This needs the running server: start the dashboard with --server http://HOST:PORT (the "
                "kiln serve that writes this log)."
            )
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            r = httpx.request(
                method, f"{self.settings.server}{path}", headers=headers, timeout=TIMEOUT_S, **kwargs
            )
        except httpx.HTTPError as exc:
            raise ServeError(
                f"Cannot reach the server at {self.settings.server} ({type(exc).__name__}: {exc}). Is it "
                "running? Check --server."
            ) from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text[:300]
            raise ServerAnswer(r.status_code, f"The server answered {r.status_code}: {detail}")
        return r

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: each model's versions, arms and traffic."""
        return list(self._call("GET", "/v1/models").json()["models"])

    def performance(self, model: str, window: str | int = "1000") -> dict[str, Any]:
        """``GET /v1/models/NAME/performance``: live accuracy per version from feedback labels."""
        return dict(self._call("GET", f"/v1/models/{model}/performance", params={"window": window}).json())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text, summed over the server's workers."""
        return self._call("GET", "/metrics").text

    def feedback(self, request_id: str, label: str, index: int | None = None) -> dict[str, Any]:
        """``POST /v1/feedback``: the true label of input ``index`` (or the only input) of a request."""
        body: dict[str, Any] = {"request_id": request_id, "label": label}
        if index is not None:
            body["index"] = index
        return dict(self._call("POST", "/v1/feedback", json=body, token=self.settings.feedback_token).json())

    def explain(self, model: str, body: bytes, media: str, *, version: str, method: str) -> dict[str, Any]:
        """``POST /v1/models/NAME/explain``: Grad-CAM heatmaps of a logged request's kept ``body``, drawn by
        the served ``version`` that answered it (not logged by the server as a prediction)."""
        path = f"/v1/models/{quote(model, safe='')}/explain"
        params = {"version": version, "method": method}
        return dict(self._call("POST", path, params=params, content=body, content_type=media).json())

    def reload(self, model: str) -> dict[str, Any]:
        """``POST /admin/reload?model=NAME``: every worker loads the versions the aliases now name."""
        if self.settings.admin_token is None:
            raise ServeError(
                "A reload needs the server's admin token: set KILN_ADMIN_TOKEN for the dashboard (the "
                "server's KILN_SERVE_ADMIN_TOKEN)."
            )
        r = self._call(
            "POST",
            "/admin/reload",
            params={"model": model, "force": "false"},
            token=self.settings.admin_token,
        )
        return dict(r.json())
