"""The server's endpoints. Request bodies are validated against the serving task's own schema."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import torch
from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from torchkiln.core.config_io import format_errors
from torchkiln.core.errors import KilnError
from torchkiln.serve.batching import ModelUnloadedError, QueueFullError
from torchkiln.serve.deployments import Answer, Deployment, ServedModel, Work
from torchkiln.serve.explaining import (
    ExplainQuery,
    MethodQuery,
    VersionQuery,
    explaining_model,
    explanations,
    refuse_unexplainable,
)
from torchkiln.serve.predlog import PredictionRecord
from torchkiln.serve.schemas import (
    REQUEST_ID_PATTERN,
    ErrorResponse,
    Health,
    ModelDetail,
    ModelInfo,
    ModelList,
    ServedVersion,
    ServedVersionDetail,
    explain_response_model,
    predict_request_body,
    predict_response_model,
)
from torchkiln.serve.state import ApiError, ServerState
from torchkiln.tasks.base import TASKS, InputWarning, RequestLimits, TooManyItemsError

router = APIRouter()
log = logging.getLogger("torchkiln.serve")
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)
PREDICT_ROUTE = "/v1/models/{name}/predict"
EXPLAIN_ROUTE = "/v1/models/{name}/explain"
REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
# JSON bodies up to this size are decoded on the event loop (measured: bench/), except for image tasks: a
# 4 KB PNG can decode to millions of pixels, so images are always decoded in the thread pool.
INLINE_BYTES = 32 * 1024


async def get_state(request: Request) -> ServerState:
    # async on purpose: FastAPI runs a sync dependency in its thread pool, a thread hop per request.
    return request.app.state.kiln


StateDep = Annotated[ServerState, Depends(get_state)]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


@router.get("/livez", response_model=Health, tags=["health"])
async def livez() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["health"])
async def readyz(state: StateDep) -> Any:
    """Ready when every model is loaded; 503 while loading, after a failed first load, or when draining."""
    manager = state.manager
    if state.draining:
        return JSONResponse(Health(status="draining").model_dump(), status_code=503)
    if manager.ready:
        return Health(status="ready")
    # Anyone may call it: it names the arms that failed, never the error text (it holds file paths).
    failed = [f"{d.name}/{arm}" for d in manager.deployments.values() for arm in d.errors]
    detail = f"{', '.join(failed)} failed to load; GET /admin/models shows why." if failed else None
    status = "failed" if manager.loading_done else "loading"
    return JSONResponse(Health(status=status, detail=detail).model_dump(), status_code=503)


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(state: StateDep) -> ModelList:
    """The served models: versions per arm, task, labels, input schema and traffic split.

    Anyone may call it, so it shows no file-system paths and no load errors: those are in /admin/models.
    """
    return ModelList(models=[_info(d) for d in state.manager.deployments.values()])


def _info(dep: Deployment) -> ModelInfo:
    champion = dep.models.get("champion")
    task = champion.task if champion else None
    return ModelInfo(
        name=dep.name,
        task=task.kind if task else None,
        ready=dep.ready,
        versions=[
            ServedVersion(arm=m.arm, version=m.version, runtime=m.runtime, loaded_at=m.loaded_at)  # type: ignore[arg-type]
            for m in dep.models.values()
        ],
        traffic=dep.traffic(),
        labels=champion.predictor.labels or None if champion else None,
        input_schema=task.request_schema.model_json_schema() if task else None,
    )


def detail(dep: Deployment) -> ModelDetail:
    """``_info`` plus what only an admin sees: where each version came from, and the last load failures."""
    versions = [
        ServedVersionDetail(arm=m.arm, version=m.version, uri=m.uri, runtime=m.runtime, loaded_at=m.loaded_at)  # type: ignore[arg-type]
        for m in dep.models.values()
    ]
    public = _info(dep).model_dump(exclude={"versions"})
    return ModelDetail(**public, versions=versions, errors=dict(dep.errors))


SHOWN_NAME_CHARS = 60


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when it is well formed, else a new one; kept on the request's state for
    the access log and the error answers."""
    rid = request.headers.get("x-request-id") or ""
    rid = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
    request.state.kiln_request_id = rid
    return rid


def shown_name(name: str) -> str:
    """A caller's model name as an error message quotes it: at most SHOWN_NAME_CHARS characters."""
    return name if len(name) <= SHOWN_NAME_CHARS else f"{name[:SHOWN_NAME_CHARS]}..."


@router.post(
    PREDICT_ROUTE,
    response_model=predict_response_model(),
    responses=error_responses(404, 413, 415, 422, 429, 503, 504),
    openapi_extra={"requestBody": predict_request_body(list(TASKS))},
    tags=["predict"],
)
async def predict(
    name: str,
    request: Request,
    state: StateDep,
    x_request_key: Annotated[str | None, Header(max_length=256, description="Sticky A/B key")] = None,
    explain: ExplainQuery = False,
    method: MethodQuery = "gradcam",
) -> Response:
    """Predict for one or more inputs. JSON (the task's schema) or multipart uploads.

    The answer says which model version answered. With an A/B split, the same ``X-Request-Key`` always
    goes to the same arm. With ``explain=true`` it also holds a Grad-CAM heatmap of each input.
    """
    rid = request_id(request)
    dep = deployment(state, name)
    if explain:
        refuse_unexplainable(dep.models["champion"])  # before any model call
    start = time.perf_counter()
    body = await request.body()
    model, inputs, answer = await _answer(request, state, dep, x_request_key or rid, body)
    latency_ms = (time.perf_counter() - start) * 1000  # the prediction's, without the heatmaps
    answers = answer.predictions
    headers = {"X-Request-ID": rid, "X-Model-Version": model.version, "X-Model-Arm": model.arm}
    content = {"model": dep.name, "version": model.version, "arm": model.arm, "request_id": rid}
    content["predictions"] = answers
    flagged = _flagged(state, dep, model, inputs.warnings)
    if flagged:  # only then: a response for in-distribution inputs is exactly what it was before
        content["warnings"] = flagged
    if explain:
        refuse_unexplainable(model)  # a challenger that cannot explain answered
        content["explanations"] = (await explanations(state, model, inputs.x, inputs.raw, method, start))[1]
    response = JSONResponse(content, headers=headers)
    _record(state, dep, model, rid, request.scope["path"], body, inputs, answer, latency_ms, shadow=False)
    shadow = dep.shadow
    if shadow is not None and not state.draining:
        response.background = BackgroundTask(
            _mirror, state, dep, shadow, rid, request.scope["path"], inputs, answer.summaries
        )
    return response


@router.post(
    EXPLAIN_ROUTE,
    response_model=explain_response_model(),
    responses=error_responses(404, 413, 415, 422, 503, 504),
    openapi_extra={"requestBody": predict_request_body(list(TASKS))},
    tags=["predict"],
)
async def explain_inputs(
    name: str,
    request: Request,
    state: StateDep,
    method: MethodQuery = "gradcam",
    version: VersionQuery = None,
) -> Response:
    """Grad-CAM heatmaps of the model's answers to the inputs (the predict body), drawn by the champion or
    by the served ``version``. Not a prediction: it is not logged, counted or mirrored (the dashboard
    draws logged requests' heatmaps with it)."""
    rid = request_id(request)
    dep = deployment(state, name)
    model = explaining_model(dep, version)
    request.state.kiln_model, request.state.kiln_version = dep.name, model.version
    refuse_unexplainable(model)
    start = time.perf_counter()
    inputs = await _parse(request, await request.body(), model, state)
    answers, items = await explanations(state, model, inputs.x, inputs.raw, method, start)
    headers = {"X-Request-ID": rid, "X-Model-Version": model.version, "X-Model-Arm": model.arm}
    content = {"model": dep.name, "version": model.version, "arm": model.arm, "request_id": rid}
    return JSONResponse(content | {"predictions": answers, "explanations": items}, headers=headers)


async def _answer(
    request: Request, state: ServerState, dep: Deployment, key: str, body: bytes
) -> tuple[ServedModel, Inputs, Answer]:
    """Pick the arm's model, parse the body with its preprocessing and call it. A reload that swaps the
    model out between the pick and the call (the old one stops taking work) sends the request to the
    version now serving, parsed again with that version's preprocessing: each request sees the old
    version or the new one, never an error. A request the challenger fails (it raised, or its queue is
    full) is counted as a canary failure and answered by the champion."""
    for _ in range(3):  # a request that meets more than two swaps in a row is told to retry
        model = dep.pick(key)
        request.state.kiln_model, request.state.kiln_version = dep.name, model.version
        inputs = await _parse(request, body, model, state)
        try:
            return model, inputs, await _call(state, dep, model, inputs)
        except ModelUnloadedError:
            dep = deployment(state, dep.name)
        except Exception as exc:
            if model.arm != "challenger":
                raise
            _canary_failed(state, dep, model, exc)  # re-raises a timeout: the request's time is spent
            champion = dep.models["champion"]
            request.state.kiln_version = champion.version
            inputs = await _parse(request, body, champion, state)
            try:
                return champion, inputs, await _call(state, dep, champion, inputs)
            except ModelUnloadedError:
                dep = deployment(state, dep.name)
    raise ApiError(
        503,
        "reloading",
        f"Model '{dep.name}' was replaced by reloads while this request waited. Retry after the Retry-After "
        f"seconds.",
        {"Retry-After": "1"},
    )


def _canary_failed(state: ServerState, dep: Deployment, model: ServedModel, exc: Exception) -> None:
    """Count a request the challenger failed; a timeout goes on to the caller as a 504."""
    reason = exc.kind if isinstance(exc, ApiError) else "error"  # queue_full or timeout, from _call
    if state.metrics is not None:
        state.metrics.canary_failures.labels(dep.name, model.version, reason).inc()
    if not isinstance(exc, ApiError):
        log.warning(
            "The challenger of '%s' (version %s) failed a request, which the champion answers: %s: %s",
            dep.name,
            model.version,
            type(exc).__name__,
            exc,
        )
    if reason == "timeout":
        raise exc


def deployment(state: ServerState, name: str) -> Deployment:
    dep = state.manager.deployments.get(name)
    if dep is None:
        known = ", ".join(sorted(state.manager.deployments))
        raise ApiError(
            404, "unknown_model", f"No model named '{shown_name(name)}' is served here. Served: {known}."
        )
    if state.draining:
        raise ApiError(
            503, "draining", "The server is shutting down. Retry on another replica.", {"Retry-After": "1"}
        )
    if "champion" not in dep.models:
        raise ApiError(
            503,
            "not_ready",
            f"Model '{name}' is not loaded yet. Poll /readyz and retry.",
            {"Retry-After": "1"},
        )
    return dep


@dataclass
class Inputs:
    raw: list[Any]
    x: torch.Tensor  # (n, ...) preprocessed, exactly as in training
    top_k: int | None
    media: str
    warnings: list[list[InputWarning]] = field(default_factory=list)  # per input: far from training's


def _flagged(
    state: ServerState, dep: Deployment, model: ServedModel, warnings: list[list[InputWarning]]
) -> list[dict[str, Any]]:
    """Count the inputs far from the training inputs, by kind; the response's ``warnings`` items."""
    out = []
    for i, reasons in enumerate(warnings):
        for r in reasons:
            if state.metrics is not None:
                state.metrics.out_of_distribution.labels(dep.name, model.version, r.kind).inc()
            out.append({"input": i, "kind": r.kind, "message": r.message})
    return out


async def _parse(request: Request, body: bytes, model: ServedModel, state: ServerState) -> Inputs:
    task, limits = model.task, state.manager.limits
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        if len(body) <= INLINE_BYTES and not task.image_input:  # small text: faster than a thread hop
            return _json_inputs(body, model, limits, media)
        return await run_in_threadpool(_json_inputs, body, model, limits, media)
    if media == "multipart/form-data" and task.upload_media:
        files, top_k = await _from_form(request, limits)
        raw = await run_in_threadpool(_checked, task.decode_uploads, files, limits)
        return await run_in_threadpool(_preprocess, model, raw, top_k, media)
    accepted = "application/json" + (" or multipart/form-data" if task.upload_media else "")
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type '{media or '(none)'}' is not accepted. Send {accepted}; see the example in /docs.",
    )


def _json_inputs(body: bytes, model: ServedModel, limits: RequestLimits, media: str) -> Inputs:
    task = model.task
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            422, "invalid_json", f"The body is not valid JSON ({exc}). Example: see /docs."
        ) from None
    except RecursionError:
        raise _too_deep() from None
    except ValueError:  # the only other ValueError: an integer longer than int() converts from a string
        raise ApiError(
            422,
            "invalid_json",
            f"The body holds an integer of more than {sys.get_int_max_str_digits():,} digits, which this "
            f"server does not parse; expected numbers of ordinary size (top_k is 1 to 1000). Send the "
            f"number with fewer digits.",
        ) from None
    try:
        parsed = task.request_schema.model_validate(data)
    except RecursionError:
        raise _too_deep() from None
    except ValidationError as exc:
        fix = f"Expected a JSON object like {json.dumps(example_shape(task.example_request()))}."
        detail = format_errors(
            exc, task.request_schema, what="The request body is invalid", fix=fix, source="the request"
        )
        raise ApiError(422, "invalid_input", detail) from None
    raw = _checked(task.decode_request, parsed, limits)
    return _preprocess(model, raw, getattr(parsed, "top_k", None), media)


def json_body(
    request: Request, raw: bytes, schema: type[BaseModelT], example: dict[str, Any], *, fix: str, what: str
) -> BaseModelT:
    """A small JSON body (a route's own, parsed on the loop) as ``schema``, or a 415/422 that says what
    to send: ``fix`` ends every message, ``what`` starts the list of invalid fields."""
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if not (media == "application/json" or media.endswith("+json")):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type '{shown_name(media) or '(none)'}' is not accepted. Send application/json, e.g. "
            f"{json.dumps(example)}.",
        )
    try:
        return schema.model_validate(json.loads(raw))
    except RecursionError:
        raise ApiError(422, "invalid_json", f"The body's JSON is nested too deeply to parse. {fix}") from None
    except ValidationError as exc:
        detail = format_errors(exc, schema, what=what, fix=fix, source="the body")
        raise ApiError(422, "invalid_input", detail) from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer too long to read
        raise ApiError(422, "invalid_json", f"The body is not valid JSON ({exc}). {fix}") from None


def _too_deep() -> ApiError:
    return ApiError(
        422,
        "invalid_json",
        "The body's JSON is nested too deeply to parse (arrays or objects inside each other about 1,000 "
        "levels deep); expected a flat object like the example in /docs. Send the inputs as one list.",
    )


def example_shape(example: dict[str, Any]) -> dict[str, Any]:
    """The example with long strings cut, for error messages."""
    return {
        k: ([f"{v[0][:12]}..."] if isinstance(v, list) and v and isinstance(v[0], str) else v)
        for k, v in example.items()
    }


async def _from_form(request: Request, limits: RequestLimits) -> tuple[list[bytes], int | None]:
    try:
        form = await request.form(max_files=limits.max_items + 1, max_fields=16)
    except (MultiPartException, StarletteHTTPException) as exc:  # Starlette turns parser errors into 400s
        reason = str(getattr(exc, "detail", exc)).rstrip(".")
        if reason.startswith("Too many files"):
            raise ApiError(
                422,
                "too_many_items",
                f"The request has more than {limits.max_items} inputs; this server takes at most "
                f"{limits.max_items} per request. Split it into several requests.",
            ) from None
        raise ApiError(422, "invalid_multipart", f"The multipart body cannot be read: {reason}.") from None
    files = [await v.read() for _, v in form.multi_items() if isinstance(v, UploadFile)]
    _check_count(len(files), limits)
    top_k = form.get("top_k")
    try:
        k = int(top_k) if isinstance(top_k, str) else None
    except ValueError:
        k = 0
    if k is not None and not 1 <= k <= 1000:
        raise ApiError(422, "invalid_input", f"top_k must be an integer from 1 to 1000, got {top_k!r}.")
    return files, k


def _check_count(n: int, limits: RequestLimits) -> None:
    if n == 0:
        raise ApiError(
            422,
            "empty_input",
            "The request has no inputs. Send at least one (JSON: a non-empty list; multipart: a file part).",
        )
    try:
        limits.check_count(n)
    except TooManyItemsError as exc:
        raise ApiError(422, "too_many_items", str(exc)) from None


def _checked(decode: Any, data: Any, limits: RequestLimits) -> list[Any]:
    try:
        raw = decode(data, limits=limits)  # a task counts the items before decoding any of them
    except TooManyItemsError as exc:
        raise ApiError(422, "too_many_items", str(exc)) from None
    except KilnError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
    _check_count(len(raw), limits)
    return raw


def _preprocess(model: ServedModel, raw: list[Any], top_k: int | None, media: str) -> Inputs:
    items = []
    for i, item in enumerate(raw):
        try:
            items.append(model.predictor.preprocess([item]))
        except KilnError as exc:
            # Both the JSON list and the multipart field of a task that takes images are named "images".
            where = f"images[{i}]" if model.task.upload_media == "image/*" else f"Input {i}"
            raise ApiError(422, "invalid_input", f"{where}: {exc}") from None
    # After preprocessing, so only inputs it took are checked; the check reads headers, never raises.
    return Inputs(raw, model.predictor.collate(items), top_k, media, model.predictor.input_warnings(raw))


async def _call(state: ServerState, dep: Deployment, model: ServedModel, inputs: Inputs) -> Answer:
    metrics, timeout = state.metrics, state.settings.request_timeout_s
    # The model thread summarizes the inputs (and their drift signals) for the prediction log, per batch.
    logged = state.predlog is not None
    work = Work(inputs.top_k, inputs.raw, summarize=logged, signals=logged)
    try:
        async with asyncio.timeout(timeout):
            answer: Answer = await model.batcher.submit(inputs.x, work)
    except QueueFullError as exc:
        if metrics is not None:
            metrics.rejected.labels(dep.name, "queue_full").inc()
        raise ApiError(
            429,
            "queue_full",
            f"Model '{dep.name}' has {model.batcher.max_queue} requests waiting, its limit. Retry after the "
            f"Retry-After seconds, or add replicas.",
            {"Retry-After": str(math.ceil(exc.retry_after_s))},
        ) from None
    except TimeoutError:
        if metrics is not None:
            metrics.rejected.labels(dep.name, "timeout").inc()
        raise ApiError(
            504,
            "timeout",
            f"The prediction took longer than this server's request_timeout_s of {timeout:g} s. Retry, send "
            f"fewer inputs, or add replicas.",
        ) from None
    if metrics is not None:
        for prediction in answer.predictions:
            if prediction.get("label") is not None:  # an unconditional generator's images have none
                metrics.predicted.labels(dep.name, model.version, str(prediction["label"])).inc()
    return answer


def _record(
    state: ServerState,
    dep: Deployment,
    model: ServedModel,
    rid: str,
    path: str,
    body: bytes | None,
    inputs: Inputs,
    answer: Answer,
    latency_ms: float,
    *,
    shadow: bool,
) -> None:
    if state.predlog is None or answer.summaries is None:
        return
    sampled = body is not None and random.random() < state.settings.log_payload_sample_rate
    state.predlog.log(
        PredictionRecord(
            request_id=rid,
            time=datetime.now(UTC),
            model=dep.name,
            version=model.version,
            arm=model.arm,
            shadow=shadow,
            latency_ms=latency_ms,
            route=path,
            items=len(answer.predictions),
            outputs=answer.predictions,
            input_summary=answer.summaries if shadow else _with_warnings(answer.summaries, inputs.warnings),
            payload=body if sampled else None,
            payload_type=inputs.media if sampled else None,
            signals=answer.signals,
        )
    )


def _with_warnings(
    summaries: list[dict[str, Any]], warnings: list[list[InputWarning]]
) -> list[dict[str, Any]]:
    """The input summaries, a flagged input's with its reasons under ``"warnings"``."""
    if not any(warnings):
        return summaries
    return [
        {**s, "warnings": [r.message for r in reasons]} if reasons else s
        for s, reasons in zip(summaries, warnings, strict=True)
    ]


async def _mirror(
    state: ServerState,
    dep: Deployment,
    shadow: ServedModel,
    rid: str,
    path: str,
    inputs: Inputs,
    summaries: list[dict[str, Any]] | None,
) -> None:
    """Send a copy to the challenger after the response went out; log its answer, never return it."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(state.settings.request_timeout_s):
            work = Work(inputs.top_k, inputs.raw, signals=state.predlog is not None)
            answer: Answer = await shadow.batcher.submit(inputs.x, work)
    except (QueueFullError, TimeoutError, RuntimeError):
        if state.metrics is not None:
            state.metrics.shadow_dropped.labels(dep.name).inc()
        return
    latency_ms = (time.perf_counter() - start) * 1000
    # The same inputs as the champion's: its summaries stand. The signals are the shadow model's own.
    answer = Answer(answer.predictions, summaries, answer.signals)
    _record(state, dep, shadow, rid, path, None, inputs, answer, latency_ms, shadow=True)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    if state.metrics is None:
        raise ApiError(404, "metrics_off", "Metrics are off (metrics: false in the serve settings).")
    for dep in state.manager.deployments.values():
        for arm, model in dep.models.items():
            state.metrics.queue_depth.labels(dep.name, arm).set(model.batcher.depth)
    if state.predlog is not None:
        state.metrics.log_pending.set(state.predlog.stats.pending)
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
