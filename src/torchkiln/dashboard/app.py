"""The dashboard app: server-rendered Jinja2 pages, HTMX for the parts that update, uPlot for the charts.

Both front-end libraries are vendored from npm (``static/vendor``, scripts/vendor-dashboard-assets.sh):
the pages load nothing from anywhere else, so the dashboard works offline.

Each module of :mod:`torchkiln.dashboard.pages` is one page: its ``router`` and its ``NAV`` entry, found
when the app is made. Access: with a ``token`` set, every page needs it (a cookie set by ``/login``, or
``Authorization: Bearer``); the static files need nothing. Every request that changes something must come
from htmx on this dashboard (the ``HX-Request`` header, and a same-origin ``Origin`` when the browser
sends one), so another site cannot make a visitor's browser send it.
"""

from __future__ import annotations

import gc
import importlib
import pkgutil
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchkiln.core.errors import KilnError
from torchkiln.dashboard import pages
from torchkiln.dashboard.heatmaps import Heatmaps
from torchkiln.dashboard.inputs import Decoder, InputView, image_view, takes_images
from torchkiln.dashboard.log import LogReader, Row
from torchkiln.dashboard.server import Server
from torchkiln.dashboard.settings import DashboardSettings

HERE = Path(__file__).parent
COOKIE = "kiln_dashboard"
OPEN_PATHS = ("/static/", "/login", "/favicon.ico")
# Scripts only from this dashboard's own files: an input that holds markup is escaped by the templates,
# and even if it were not, no inline script would run. uPlot and htmx set inline styles.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Nav:
    """A page's entry in the navigation bar: its title, path and place (lower first)."""

    title: str
    path: str
    order: int


@dataclass
class Dashboard:
    """What the pages share. One per app; reached through :func:`get_dashboard`."""

    settings: DashboardSettings
    log: LogReader
    decoder: Decoder
    templates: jinja2.Environment
    nav: list[Nav]
    heatmaps: Heatmaps  # Grad-CAM heatmaps of logged image inputs, drawn by the server and kept here

    def input_views(self, rows: list[Row]) -> dict[int, list[InputView]]:
        """The inputs of a page's rows, by row id (blocking: call in a thread). Text and series are drawn
        in the page; an image model's inputs are thumbnails that the browser loads on its own."""
        out = {}
        for r in rows:
            task = self.decoder.task(r.model)
            if task is not None and takes_images(task) and r.has_payload:  # the thumbnail route decodes it
                out[r.id] = [image_view(task)] * r.items
                continue
            kept = self.log.payload(r.id) if r.has_payload or r.shadow else None
            body, media = (kept[0], kept[1]) if kept else (None, r.payload_type)
            out[r.id] = self.decoder.views(r.model, body, media, r.items)
        return out

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        """Render template ``name`` with the shared context (navigation, current path)."""
        html = self.templates.get_template(name).render(
            request=request, nav=self.nav, path=request.url.path, settings=self.settings, **context
        )
        return HTMLResponse(html, status_code=status)


class PageError(Exception):
    """An answer that is an error page: status, title and a message that says what to do."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def get_dashboard(request: Request) -> Dashboard:
    return request.app.state.dashboard  # type: ignore[no-any-return]


DashboardDep = Annotated[Dashboard, Depends(get_dashboard)]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless a template says otherwise: inputs are untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda v: "" if v is None else f"{v:,.1f}"
    env.filters["pct"] = lambda v: "" if v is None else f"{v * 100:.1f} %"
    return env


def _pages() -> list[Any]:
    return [
        importlib.import_module(f"{pages.__name__}.{m.name}") for m in pkgutil.iter_modules(pages.__path__)
    ]


def create_dashboard(settings: DashboardSettings) -> FastAPI:
    """The dashboard app for ``settings`` (``kiln dashboard`` serves it with uvicorn).

    Raises:
        ServeError: the prediction log cannot be opened.

    Example:
        >>> app = create_dashboard(load_dashboard_settings(log_url="sqlite:///runs/serve/predictions.db"))
    """
    log = LogReader(settings.log_url)
    modules = _pages()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The start-up objects (torch, the task registry) out of the collector's generations: a full
        # collection walked them for 170-260 ms, the spikes over 300 ms in bench/dashboard_pages.py.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            log.close()

    app = FastAPI(title="kiln dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    nav = sorted((m.NAV for m in modules), key=lambda n: n.order)
    app.state.dashboard = Dashboard(settings, log, Decoder(), _environment(), nav, Heatmaps(Server(settings)))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for m in modules:
        app.include_router(m.router)

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(nav[0].path, status_code=307)

    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> HTMLResponse:
        return app.state.dashboard.render(request, "login.html.j2", error="")

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        given = str(form.get("token", ""))
        token = settings.token
        if token is None:
            return RedirectResponse("/", status_code=303)
        if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
            error = "The token is wrong. It is the dashboard's KILN_DASHBOARD_TOKEN."
            return app.state.dashboard.render(request, "login.html.j2", status=403, error=error)
        response = RedirectResponse(_safe_next(str(form.get("next", "/"))), status_code=303)
        response.set_cookie(
            COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        path = request.url.path
        token = settings.token
        if token is not None and not path.startswith(OPEN_PATHS) and not _authorized(request, token):
            page = app.state.dashboard.render(
                request, "login.html.j2", status=401, error="This dashboard needs its token.", next=path
            )
            page.headers["WWW-Authenticate"] = "Bearer"
            return page
        if request.method not in ("GET", "HEAD") and path != "/login" and not _same_origin(request):
            return app.state.dashboard.render(
                request,
                "error.html.j2",
                status=403,
                title="Refused",
                message="Changes are made from the dashboard's own pages only. Reload the page and retry.",
            )
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> HTMLResponse:
        return app.state.dashboard.render(
            request, "error.html.j2", status=exc.status, title=exc.title, message=exc.message
        )

    @app.exception_handler(KilnError)
    async def kiln_error(request: Request, exc: KilnError) -> HTMLResponse:
        return app.state.dashboard.render(
            request, "error.html.j2", status=503, title="Not available", message=str(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        title = "Not found" if exc.status_code == 404 else "Refused"
        message = "There is no such page here." if exc.status_code == 404 else str(exc.detail)
        return app.state.dashboard.render(
            request, "error.html.j2", status=exc.status_code, title=title, message=message
        )

    return app


def _authorized(request: Request, token: SecretStr) -> bool:
    scheme, _, bearer = (request.headers.get("authorization") or "").partition(" ")
    given = bearer if scheme.lower() == "bearer" and bearer else request.cookies.get(COOKIE, "")
    return bool(given) and secrets.compare_digest(given.encode(), token.get_secret_value().encode())


def _same_origin(request: Request) -> bool:
    if request.headers.get("hx-request") != "true":
        return False
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def _safe_next(target: str) -> str:
    """Only a path on this dashboard: never another site (``//evil`` or ``https://...``)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
