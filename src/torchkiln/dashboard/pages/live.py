"""Live: the newest predictions, with their inputs, answers, versions and latency, updated as they come.

The page holds one page of rows (``page_size``). Every ``poll_s`` htmx asks ``/live/rows?after=ID`` for
the rows newer than the newest shown; the answer is at most a page of table rows (or 204 when there are
none) and a new poller that asks after the newest of them. The browser then drops rows beyond a page, so
an open tab stays small however long it runs. "Older" pages backwards with ``before=ID``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from torchkiln.dashboard.app import DashboardDep, Nav, PageError
from torchkiln.dashboard.heatmaps import Heatmap
from torchkiln.dashboard.inputs import takes_images, thumbnail
from torchkiln.dashboard.log import Filters

router = APIRouter()
NAV = Nav("Live", "/live", 10)


def filters(
    model: str = "",
    version: str = "",
    label: str = "",
    min_confidence: Annotated[str, Query()] = "",
    max_confidence: Annotated[str, Query()] = "",
    disagrees: str = "",
    shadow: str = "1",
) -> Filters:
    """The filters of a query string; a confidence that is not a number from 0 to 1 is a 422 page."""
    return Filters(
        model=model.strip(),
        version=version.strip(),
        label=label.strip(),
        min_confidence=_confidence(min_confidence, "min_confidence"),
        max_confidence=_confidence(max_confidence, "max_confidence"),
        disagrees=disagrees in ("1", "true", "on"),
        shadow=shadow not in ("0", "false", "off"),
    )


def _confidence(value: str, name: str) -> float | None:
    if not value.strip():
        return None
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        message = f"{name} must be a number from 0 to 1, like 0.5; got '{value[:40]}'. Fix the filter."
        raise PageError(422, "Invalid filter", message)
    return v


@router.get("/live", include_in_schema=False)
async def live(request: Request, dash: DashboardDep, before: int | None = None) -> Response:
    f = filters(**{k: v for k, v in request.query_params.items() if k in Filters.__dataclass_fields__})
    size = dash.settings.page_size
    rows = await run_in_threadpool(dash.log.rows, f, limit=size, before=before)
    views = await run_in_threadpool(dash.input_views, rows)
    versions = await run_in_threadpool(dash.log.versions)
    newest = rows[0].id if rows and before is None else await run_in_threadpool(dash.log.latest_id)
    return dash.render(
        request,
        "live.html.j2",
        rows=rows,
        views=views,
        filters=f,
        query=f.query(),
        versions=versions,
        newest=newest,
        older=rows[-1].id if len(rows) == size else None,
        paused=before is not None,
    )


@router.get("/live/rows", include_in_schema=False)
async def new_rows(request: Request, dash: DashboardDep, after: int = 0) -> Response:
    f = filters(**{k: v for k, v in request.query_params.items() if k in Filters.__dataclass_fields__})
    rows = await run_in_threadpool(dash.log.rows, f, limit=dash.settings.page_size, after=after)
    if not rows:
        return Response(status_code=204)  # htmx swaps nothing: the poller keeps asking after the same id
    views = await run_in_threadpool(dash.input_views, rows)
    return dash.render(
        request, "live_rows.html.j2", rows=rows, views=views, query=f.query(), newest=rows[0].id, poll=True
    )


@router.get("/inputs/{row_id}/{item}.png", include_in_schema=False)
async def input_image(row_id: int, item: int, dash: DashboardDep) -> Response:
    """A thumbnail of input ``item`` of logged request ``row_id`` (kept bodies of image models only)."""

    def make() -> bytes | None:
        kept = dash.log.payload(row_id)
        if kept is None:
            return None
        body, media, model = kept
        raw = dash.decoder.decode(model, body, media)
        task = dash.decoder.task(model)
        if raw is None or task is None or not takes_images(task) or not 0 <= item < len(raw):
            return None
        answer = dash.log.answer(row_id, item)
        try:
            return thumbnail(raw[item], answer.boxes if answer is not None else ())
        except (ValueError, OSError):
            return None

    png = await run_in_threadpool(make)
    if png is None:
        raise PageError(404, "No image", f"Request row {row_id} has no kept image input {item}.")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@router.get("/inputs/{row_id}/{item}/heatmap", include_in_schema=False)
async def input_heatmap(
    request: Request, row_id: int, item: int, dash: DashboardDep, px: int = 48
) -> Response:
    """The Grad-CAM heatmap of input ``item`` of logged request ``row_id``, drawn by the server with the
    version that answered it: an HTML fragment that htmx puts in place of the heatmap button, holding the
    heatmap or why there is none (the page works either way)."""

    def make() -> Heatmap:
        kept = dash.log.payload(row_id)
        version = dash.log.version(row_id)
        if kept is None or version is None:
            return Heatmap(reason=f"request row {row_id} kept no request body")
        body, media, model = kept
        raw = dash.decoder.decode(model, body, media)
        task = dash.decoder.task(model)
        if raw is None or media is None or task is None or not takes_images(task) or not 0 <= item < len(raw):
            return Heatmap(reason=f"request row {row_id} has no kept image input {item}")
        return dash.heatmaps.get(row_id, item, body=body, media=media, model=model, version=version)

    heat = await run_in_threadpool(make)
    return dash.render(request, "_heatmap.html.j2", heat=heat, item=item, px=min(max(px, 16), 256))
