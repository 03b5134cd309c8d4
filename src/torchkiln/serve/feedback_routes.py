"""``POST /v1/feedback`` (true labels for logged predictions) and ``GET /v1/models/{name}/performance``.

Every refusal has its own status and ``type``, and names what to send instead; nothing of a refused
request is stored, and an accepted one is stored whole (one transaction). The database work runs in the
thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, NoReturn

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from torchkiln.core.errors import did_you_mean
from torchkiln.serve.admin_routes import check_bearer
from torchkiln.serve.feedback import Answered, DuplicateFeedback, FeedbackStore, FeedbackUnavailable, Label
from torchkiln.serve.performance import DEFAULT_WINDOW, WINDOW_PATTERN, parse_window
from torchkiln.serve.routes import StateDep, error_responses, json_body, shown_name
from torchkiln.serve.schemas import FeedbackAccepted, FeedbackItem, FeedbackRequest, PerformanceReport
from torchkiln.serve.state import ApiError, ServerState

log = logging.getLogger("torchkiln.serve")
router = APIRouter()
FEEDBACK_ROUTE = "/v1/feedback"
PERFORMANCE_ROUTE = "/v1/models/{name}/performance"
SHOWN_CLASSES = 50  # an error message lists at most this many valid classes
RETRY = {"Retry-After": "1"}


def require_feedback_token(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """With ``feedback_token`` set, a bearer token in constant time; without it, anyone may send labels."""
    token = state.settings.feedback_token
    if token is not None:
        check_bearer(authorization, token, "feedback")


EXAMPLE = {"request_id": "d1effbebb1dd4070867ef4270efef780", "label": "Sneaker"}
_BODY = {"$ref": "#/components/schemas/FeedbackRequest"}
_EXAMPLES = {
    "one": {"summary": "A request of one input", "value": EXAMPLE},
    "index": {"summary": "Input 2 of a request of several", "value": EXAMPLE | {"index": 2}},
    "labels": {
        "summary": "One label per input (null: none)",
        "value": {"request_id": EXAMPLE["request_id"], "labels": ["Bag", None, "Coat"]},
    },
}


@router.post(
    FEEDBACK_ROUTE,
    status_code=201,
    response_model=FeedbackAccepted,
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 503),
    dependencies=[Depends(require_feedback_token)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _BODY, "examples": _EXAMPLES}},
        }
    },
    tags=["feedback"],
)
async def post_feedback(request: Request, state: StateDep) -> FeedbackAccepted:
    """Store the true label of a logged prediction's input(s), joined to what the model predicted.

    ``{"request_id": ..., "label": ...}`` for a request of one input; add ``"index": i`` for input i of
    several, or send ``"labels": [...]`` with one label (or null) per input. Each input takes one label.
    """
    store = _store(state)
    body = _parse(request, await request.body())
    rid = body.request_id
    try:
        answers = await run_in_threadpool(_find, state, store, rid)
    except FeedbackUnavailable as exc:
        _unavailable(state, "", "", exc)
    if not answers:
        _refuse(state, None, "unknown_request", 404, _unknown(rid))
    if len(answers) > 1:
        models = ", ".join(sorted({f"{a.model} {a.version} at {a.time:%H:%M:%S}" for a in answers}))
        detail = (
            f"Request id '{rid}' names {len(answers)} answered predictions ({models}), so the label "
            "cannot be joined to one. Expected each request id once; let the server make the ids (leave "
            "X-Request-ID out) or send unique ones."
        )
        _refuse(state, None, "ambiguous_request", 409, detail, kind="ambiguous_request")
    answer = answers[0]
    request.state.kiln_model, request.state.kiln_version = answer.model, answer.version
    classes = _classes(state, rid, answer)
    labels = _labels(state, body, answer, classes)
    try:
        await run_in_threadpool(store.add, rid, answer, labels, datetime.now(UTC))
    except DuplicateFeedback as exc:
        _refuse(state, answer, "duplicate", 409, _duplicate(rid, exc), kind="duplicate_feedback")
    except FeedbackUnavailable as exc:
        _unavailable(state, answer.model, answer.version, exc)
    if state.metrics is not None:
        state.metrics.feedback.labels(answer.model, answer.version, "accepted").inc()
        for x in labels:
            correct = str(x.label == x.predicted).lower()
            state.metrics.feedback_labels.labels(answer.model, answer.version, correct).inc()
    items = [
        FeedbackItem(index=x.item, label=x.label, predicted=x.predicted, correct=x.label == x.predicted)
        for x in labels
    ]
    arm = "challenger" if answer.arm == "challenger" else "champion"
    return FeedbackAccepted(request_id=rid, model=answer.model, version=answer.version, arm=arm, items=items)


@router.get(
    PERFORMANCE_ROUTE,
    response_model=PerformanceReport,
    responses=error_responses(404, 422, 503),
    tags=["feedback"],
)
async def get_performance(
    name: str,
    state: StateDep,
    window: Annotated[
        str,
        Query(
            pattern=WINDOW_PATTERN,
            description="N: the last N labelled inputs; 90s, 30m, 1h, 7d: the inputs predicted since then.",
        ),
    ] = DEFAULT_WINDOW,
) -> PerformanceReport:
    """Live accuracy, per-class precision and recall of each version of ``name``, with 95 % Wilson score
    intervals, from the feedback labels in the window. Anyone may call it: it shows only counts and rates."""
    deps = state.manager.deployments
    if name not in deps:
        detail = f"No model named '{shown_name(name)}' is served here. Served: {', '.join(sorted(deps))}."
        raise ApiError(404, "unknown_model", detail)
    store = _store(state)
    try:
        report = await run_in_threadpool(store.performance, name, parse_window(window))
    except FeedbackUnavailable as exc:
        log.error("Live performance of %s: the prediction log database is unavailable (%s)", name, exc)
        raise ApiError(503, "log_unavailable", _UNAVAILABLE.format(what="read"), RETRY) from None
    return PerformanceReport.model_validate(report, from_attributes=True)


def _parse(request: Request, raw: bytes) -> FeedbackRequest:
    """The body as a :class:`FeedbackRequest`, or a 415/422 that says what to send (small: on the loop)."""
    fix = f"Expected a JSON object like {json.dumps(EXAMPLE)}, with 'index' for one input of several."
    return json_body(request, raw, FeedbackRequest, EXAMPLE, fix=fix, what="The feedback body is invalid")


_UNAVAILABLE = (
    "The prediction log's database cannot be reached right now, so the feedback could not be {what}; nothing "
    "was changed. Retry after the Retry-After seconds; the server log says why."
)


def _store(state: ServerState) -> FeedbackStore:
    if state.feedback is None:
        raise ApiError(
            404,
            "feedback_off",
            "Feedback is off: it is stored beside the prediction log, and this server's log_url is off. "
            "Set log_url to a database to take feedback labels.",
        )
    return state.feedback


def _find(state: ServerState, store: FeedbackStore, rid: str) -> list[Answered]:
    # This process's unwritten records first, then the database: a record leaves memory only once its row
    # is committed, so it is seen in one place or the other.
    pending = state.predlog.pending(rid) if state.predlog is not None else []
    return store.find(rid, pending)


def _unknown(rid: str) -> str:
    return (
        f"No prediction with request id '{rid}' is in the prediction log. Expected the request_id (or "
        "X-Request-ID header) of a prediction this server answered; check the id, and send feedback only "
        "after the prediction's answer came back."
    )


def _classes(state: ServerState, rid: str, answer: Answered) -> list[str]:
    dep = state.manager.deployments.get(answer.model)
    if dep is None:
        detail = (
            f"Request '{rid}' was answered by model '{answer.model}', which this server no longer serves, so "
            f"its classes are unknown. Send the feedback to a server that serves '{answer.model}'."
        )
        _refuse(state, answer, "unknown_model", 404, detail, kind="unknown_model")
    champion = dep.models.get("champion")
    if champion is None:
        detail = (
            f"Model '{answer.model}' is not loaded yet, so its classes are unknown. Poll /readyz and retry."
        )
        _refuse(state, answer, "not_ready", 503, detail, kind="not_ready", headers=RETRY)
    classes = list(champion.predictor.labels)
    if not classes:
        detail = (
            f"Model '{answer.model}' ({champion.task.kind}) has no classes: feedback labels are for "
            "classifiers. Expected a request answered by a classification model."
        )
        _refuse(state, answer, "not_a_classifier", 422, detail, kind="not_a_classifier")
    return classes


def _labels(state: ServerState, body: FeedbackRequest, answer: Answered, classes: list[str]) -> list[Label]:
    """The body's labels as (input, label) pairs, checked against the request's inputs and the classes."""
    rid, n = body.request_id, answer.items
    given: list[tuple[int, str, str]] = []  # (input, label, where the body has it)
    if body.labels is not None:
        if len(body.labels) != n:
            _invalid(
                state,
                answer,
                f"'labels' has {len(body.labels)} label(s), but request '{rid}' had {n} input(s). Send one "
                "label per input, in input order (null for an input without a label).",
            )
        given = [(i, x, f"labels[{i}]") for i, x in enumerate(body.labels) if x is not None]
        if not given:
            _invalid(state, answer, "'labels' holds only nulls, so there is nothing to store. Send a label.")
    else:
        assert body.label is not None  # FeedbackRequest holds one of the two
        if body.index is None and n != 1:
            _invalid(
                state,
                answer,
                f"Request '{rid}' had {n} inputs, so 'label' needs an 'index' (0 to {n - 1}) saying which "
                "input it is for. Or send 'labels', one per input.",
            )
        i = body.index or 0
        if i >= n:
            _invalid(
                state,
                answer,
                f"'index' {i} is out of range: request '{rid}' had {n} input(s), index 0 to {n - 1}.",
            )
        given = [(i, body.label, "label")]
    wrong = [(where, x) for _, x, where in given if x not in classes]
    if wrong:
        _refuse(state, answer, "unknown_label", 422, _wrong_labels(answer.model, wrong, classes))
    return [Label(i, x, answer.predicted(i)) for i, x, _ in given]


def _wrong_labels(model: str, wrong: list[tuple[str, str]], classes: list[str]) -> str:
    problems = " ".join(
        f"{where} '{shown_name(x)}' is not a class of model '{model}'.{did_you_mean(x, classes)}"
        for where, x in wrong[:5]
    )
    more = f" And {len(wrong) - 5} more." if len(wrong) > 5 else ""
    listed = ", ".join(classes[:SHOWN_CLASSES])
    if len(classes) > SHOWN_CLASSES:
        listed += f", ... ({len(classes)} in all; GET /v1/models lists them)"
    return f"{problems}{more} Valid classes: {listed}. Send one of them, spelled exactly."


def _duplicate(rid: str, exc: DuplicateFeedback) -> str:
    if not exc.existing:  # taken by a concurrent request, then gone: cannot happen, as rows are not deleted
        return f"Request '{rid}' already has feedback for these inputs; nothing was stored."
    had = ", ".join(f"input {s.item}: '{s.label}' at {s.time:%Y-%m-%d %H:%M:%S} UTC" for s in exc.existing)
    return (
        f"Request '{rid}' already has feedback ({had}). Each input takes one label, the first, so nothing "
        "of this request was stored. Send labels only for inputs without one."
    )


def _invalid(state: ServerState, answer: Answered, detail: str) -> NoReturn:
    _refuse(state, answer, "invalid_feedback", 422, detail, kind="invalid_feedback")


def _unavailable(state: ServerState, model: str, version: str, exc: FeedbackUnavailable) -> NoReturn:
    log.error("Feedback: the prediction log database is unavailable (%s)", exc)
    if state.metrics is not None:
        state.metrics.feedback.labels(model, version, "unavailable").inc()
    raise ApiError(503, "log_unavailable", _UNAVAILABLE.format(what="stored"), RETRY) from None


def _refuse(
    state: ServerState,
    answer: Answered | None,
    outcome: str,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    headers: dict[str, str] | None = None,
) -> NoReturn:
    """Count the refusal by outcome (with the prediction's model and version, when found) and raise it."""
    if state.metrics is not None:
        model, version = (answer.model, answer.version) if answer else ("", "")
        state.metrics.feedback.labels(model, version, outcome).inc()
    raise ApiError(status, kind or outcome, detail, headers)
