"""Label: the logged inputs that have no true label yet, the least confident first, and buttons to send one.

The queue is bounded: it looks at the model's last ``WINDOW`` answered predictions (by id), keeps those
whose request body the server kept (so the input can be shown) and whose input has no feedback, and
sorts them by the answer's top-1 score (:meth:`~torchkiln.dashboard.log.LogReader.unlabelled`). A label
goes to the running server's ``POST /v1/feedback`` (``--server``), never into the log directly; the
answer is the queue again, without the labelled input, the focus on the input that took its place, and
the model's live accuracy as the server now reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from torchkiln.core.errors import ServeError, did_you_mean
from torchkiln.dashboard.app import Dashboard, DashboardDep, Nav, PageError
from torchkiln.dashboard.inputs import InputView
from torchkiln.dashboard.log import RECENT_ROWS, Answer, Row
from torchkiln.dashboard.server import Server

router = APIRouter()
NAV = Nav("Label", "/label", 60)
WINDOW = 5_000  # rows of the model looked at, newest first: the queue costs the same with any log length
BUTTONS = 12  # up to this many classes are buttons; more are a list to pick from
NO_SERVER = (
    "Labels go to the running server's POST /v1/feedback, and this dashboard has no server: start it with "
    "--server http://HOST:PORT (the kiln serve that writes this log) to send them."
)


@dataclass(frozen=True)
class Waiting:
    """One logged input without a true label: input ``item`` of ``row``."""

    row: Row
    item: int

    @property
    def answer(self) -> Answer:
        return self.row.answers[self.item]

    @property
    def key(self) -> str:
        return f"{self.row.id}-{self.item}"


@dataclass(frozen=True)
class Queue:
    """The queue section of one model: what was looked at, what waits, and the first page of it."""

    model: str
    considered: int  # rows of the model looked at (at most WINDOW)
    kept: int  # those of them that kept their request body
    waiting: int  # inputs of those without a label
    shown: list[Waiting]  # the least confident page of them
    views: dict[int, list[InputView]]  # row id -> its inputs as the page shows them
    classes: list[str]
    can_send: bool  # a server to send labels to, which serves this model
    note: str = ""  # why labels cannot be sent now

    def position(self, request_id: str, item: int) -> int | None:
        """Where input ``item`` of ``request_id`` is in the shown page, if it is there."""
        keys = [(w.row.request_id, w.item) for w in self.shown]
        return keys.index((request_id, item)) if (request_id, item) in keys else None


def _classes(server: Server, model: str, seen: list[str]) -> tuple[list[str], str]:
    """The model's classes from the server's ``GET /v1/models``, else those its answers named, and why."""
    if not server.configured:
        return seen, NO_SERVER
    try:
        served = {m["name"]: m for m in server.models()}
    except ServeError as exc:
        return seen, str(exc)
    if model not in served:
        return seen, (
            f"The server does not serve '{model}' (it serves {', '.join(sorted(served)) or 'nothing'}), so "
            "it cannot take labels for it. Point --server at the kiln serve that answers this model."
        )
    return list(served[model].get("labels") or seen), ""


def _queue(dash: Dashboard, server: Server, model: str) -> Queue:
    found = dash.log.unlabelled(model, window=WINDOW, limit=dash.settings.page_size)
    rows = {r.id: r for r in found.rows}
    shown = [Waiting(rows[row_id], item) for row_id, item in found.inputs]
    classes, note = _classes(server, model, found.classes)
    views = dash.input_views(found.rows)
    can_send = server.configured and not note
    return Queue(model, found.considered, found.kept, found.waiting, shown, views, classes, can_send, note)


def _accuracy(server: Server, model: str) -> tuple[dict[str, Any] | None, str]:
    """The server's live accuracy report of ``model``, or the message that says why there is none."""
    if not server.configured:
        return None, ""
    try:
        return server.performance(model), ""
    except ServeError as exc:
        return None, str(exc)


@router.get("/label", include_in_schema=False)
async def label_page(request: Request, dash: DashboardDep, model: str = "") -> Response:
    models = await run_in_threadpool(dash.log.models)
    model = model.strip() or (models[0] if models else "")
    server = Server(dash.settings)
    queue = await run_in_threadpool(_queue, dash, server, model) if model else None
    if queue is not None and not queue.considered and model not in models:
        raise PageError(
            404,
            "Unknown model",
            f"The prediction log has no answered prediction of model '{model[:80]}'."
            f"{did_you_mean(model, models)} Models in its newest {RECENT_ROWS:,} rows: "
            f"{', '.join(models) or 'none'}. Pick one of them.",
        )
    report, accuracy_error = await run_in_threadpool(_accuracy, server, model) if model else (None, "")
    return dash.render(
        request,
        "label.html.j2",
        models=models,
        queue=queue,
        focus=None,
        error="",
        error_at=None,
        report=report,
        accuracy_error=accuracy_error,
        announce="",
        window=WINDOW,
        buttons=BUTTONS,
        oob=False,
    )


@router.post("/label", include_in_schema=False)
async def send_label(request: Request, dash: DashboardDep) -> Response:
    """Send one label through the server, then answer the queue again (the labelled input gone).

    The answer is 200 whether the server stored the label or refused it, since htmx swaps 2xx answers
    only: the fragment says which, with the server's own message (a duplicate's 409, an unknown class's
    422), or why the server could not be asked (no ``--server``, unreachable).
    """
    form = await request.form()
    model, request_id, label = (str(form.get(k, "")).strip() for k in ("model", "request_id", "label"))
    item, position = _count(form.get("item")), _count(form.get("position"))
    if not (model and request_id and label) or item is None or position is None:
        message = "A label needs model, request_id, item, position and label: send it from the Label page."
        raise PageError(422, "Invalid label", message)
    server = Server(dash.settings)
    error = ""
    try:
        stored = await run_in_threadpool(server.feedback, request_id, label, item)
        said = stored["items"][0]
        announce = (
            f"Stored: input {item} of request {request_id[:8]} is '{label}'; the model said "
            f"'{said['predicted']}' ({'right' if said['correct'] else 'wrong'})."
        )
    except ServeError as exc:  # ServerAnswer too: the server refused, and says why
        error = str(exc)
        announce = f"Not stored. {error}"
    queue = await run_in_threadpool(_queue, dash, server, model)
    # After a label the input that took its place gets the focus; after a refusal, the refused one.
    at = queue.position(request_id, item) if error else None
    report, accuracy_error = await run_in_threadpool(_accuracy, server, model)
    return dash.render(
        request,
        "label_queue.html.j2",
        queue=queue,
        focus=position if at is None else at,
        error=error,
        error_at=at,
        report=report,
        accuracy_error=accuracy_error,
        announce=announce,
        buttons=BUTTONS,
        oob=True,
    )


def _count(value: Any) -> int | None:
    """A form field that must be a whole number from 0; None when it is not."""
    text = str(value or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None
