"""``create_app(settings)``: the FastAPI model server. Nothing happens at import time.

The lifespan opens the prediction log, then loads the models in the background (``/livez`` answers
at once, ``/readyz`` once every model is loaded). On shutdown (SIGTERM) uvicorn stops accepting,
finishes the requests in flight, and then the lifespan drains the batchers and flushes the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchkiln.core._version import __version__
from torchkiln.serve.action_routes import router as action_router
from torchkiln.serve.admin_routes import router as admin_router
from torchkiln.serve.deployments import ModelManager
from torchkiln.serve.explaining import documented_params
from torchkiln.serve.feedback import OTHER_WORKERS_WAIT_S, FeedbackStore
from torchkiln.serve.feedback_routes import router as feedback_router
from torchkiln.serve.metrics import ServeMetrics
from torchkiln.serve.predlog import PredictionLog
from torchkiln.serve.routes import PREDICT_ROUTE, router
from torchkiln.serve.schemas import predict_request_body, request_schemas
from torchkiln.serve.settings import ServeSettings
from torchkiln.serve.state import ApiError, ServerState
from torchkiln.serve.workers import WorkerSync

log = logging.getLogger("torchkiln.serve")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]


def error_response(
    status: int, kind: str, detail: str, request_id: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"detail": detail, "type": kind, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers=headers)


class LimitsAndMetrics:
    """ASGI middleware: the body-size cap (413) and the request counter and latency histogram.

    The body is read here once (at most ``max_body_bytes``), so chunked uploads are capped too. Latency
    stops when the response has been sent: shadow calls that run after it are not counted.
    """

    def __init__(
        self, app: ASGIApp, *, max_body: int, body_timeout_s: float, metrics: ServeMetrics | None
    ) -> None:
        self.app, self.max_body, self.body_timeout_s, self.metrics = app, max_body, body_timeout_s, metrics

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, done = time.perf_counter(), [500], [0.0]

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done[0] = time.perf_counter()
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        body = await self._read_capped(scope, receive)
                except TimeoutError:
                    await self._refuse(send_and_watch, 408, "body_timeout", self._timeout_detail(scope))
                    return
                if body is None:
                    await self._refuse(send_and_watch, 413, "body_too_large", self._too_large_detail())
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_and_watch)
        finally:
            if self.metrics is not None:
                route = getattr(scope.get("route"), "path", "unmatched")
                state = scope.get("state") or {}
                model, version = state.get("kiln_model", ""), state.get("kiln_version", "")
                self.metrics.requests.labels(model, version, route, str(status[0])).inc()
                self.metrics.latency.labels(model, route).observe((done[0] or time.perf_counter()) - start)

    async def _read_capped(self, scope: Scope, receive: Callable[[], Awaitable[Message]]) -> bytes | None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the route sees an empty body
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_body:
                return None
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    def _too_large_detail(self) -> str:
        return (
            f"The request body is larger than this server's limit of {self.max_body:,} bytes. Send fewer or "
            f"smaller inputs per request (downscale images), or raise max_body_bytes."
        )

    def _timeout_detail(self, scope: Scope) -> str:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"?").decode("latin-1")
        return (
            f"The request body did not arrive whole within {self.body_timeout_s:g} s (Content-Length: "
            f"{declared[:20]}). Send the whole body without pauses, or raise body_timeout_s for slow links."
        )

    async def _refuse(
        self, send: Callable[[Message], Awaitable[None]], status: int, kind: str, detail: str
    ) -> None:
        """An error answer before the app ran; the connection closes, as the body was not read whole."""
        body = json.dumps({"detail": detail, "type": kind, "request_id": None}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return replay


def create_app(settings: ServeSettings, sync: WorkerSync | None = None) -> FastAPI:
    """Build the server app for ``settings``; models load when it starts, not here.

    ``sync`` is the folder shared with the other workers of the same server (``kiln serve --workers N``),
    through which a reload reaches all of them.

    Example:
        >>> app = create_app(load_settings(models=[{"uri": "runs/fashion/latest/bundle"}]))
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    metrics = ServeMetrics() if settings.metrics else None
    predlog = PredictionLog(settings.log_url) if settings.log_url else None
    feedback = None
    if settings.log_url:  # another worker's prediction may reach the database a flush interval late
        wait_s = OTHER_WORKERS_WAIT_S if settings.workers > 1 else 0.0
        feedback = FeedbackStore(settings.log_url, wait_for_others_s=wait_s)
    state = ServerState(settings, ModelManager(settings, metrics, sync), metrics, predlog, feedback)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if predlog is not None:
            await asyncio.to_thread(predlog.start)
        tasks = [asyncio.create_task(state.manager.load_all())]
        if settings.registry_poll_s > 0:
            tasks.append(asyncio.create_task(state.manager.poll()))
        if sync is not None:
            tasks.append(asyncio.create_task(state.manager.watch()))
        try:
            yield
        finally:
            state.draining = True
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await state.manager.stop()
            if predlog is not None:
                await asyncio.to_thread(predlog.close, settings.shutdown_timeout_s)
            if feedback is not None:
                await asyncio.to_thread(feedback.close)

    app = FastAPI(
        title="torchkiln model server",
        version=__version__,
        description="Predictions from torchkiln bundles, with dynamic batching. See docs/serving.md.",
        lifespan=lifespan,
    )
    app.state.kiln = state
    app.include_router(router)
    app.include_router(admin_router)
    app.include_router(feedback_router)
    app.include_router(action_router)  # last: its /v1/models/{name}/{action} must not shadow the others
    _add_error_handlers(app)
    app.add_middleware(
        LimitsAndMetrics,
        max_body=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        metrics=metrics,
    )
    app.openapi = lambda: _openapi(app, state.manager)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        rid = getattr(request.state, "kiln_request_id", None)
        return error_response(exc.status, exc.kind, exc.detail, rid, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(422, "invalid_input", f"The request is invalid: {problems}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No route {request.method} {request.url.path}. See /docs for the API."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}. See /docs for the API."
        return error_response(exc.status_code, "http_error", detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("Unexpected error on %s %s", request.method, request.url.path)
        rid = getattr(request.state, "kiln_request_id", None)
        return error_response(
            500, "internal_error", f"Internal error ({type(exc).__name__}); see the server log.", rid
        )


def _openapi(app: FastAPI, manager: ModelManager) -> dict[str, Any]:
    """The generated schema, with one predict path per served model that documents its own task's body.

    A model that has not loaded yet (its task is not known) stays under the route template, whose body
    is any task's. The document is rebuilt when a model's task changes, e.g. once it has loaded.
    """
    served = {
        name: d.models["champion"].task if "champion" in d.models else None
        for name, d in manager.deployments.items()
    }
    runtimes = {name: d.models["champion"].runtime for name, d in manager.deployments.items() if served[name]}
    key = tuple((name, task.kind if task else None, runtimes.get(name)) for name, task in served.items())
    if app.openapi_schema and getattr(app.state, "kiln_openapi_key", None) == key:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, body in request_schemas().items():
        components[name] = body
    template = schema["paths"].pop(PREDICT_ROUTE)["post"]
    waiting = [name for name, task in served.items() if task is None]
    if waiting:  # the template, for the models still loading
        for param in template.get("parameters", []):
            if param["name"] == "name":
                param["schema"] = {"type": "string", "enum": waiting, "title": "Name"}
        schema["paths"][PREDICT_ROUTE] = {"post": template}
    for name, task in served.items():
        if task is None:
            continue
        op = copy.deepcopy(template)
        params = [p for p in op.get("parameters", []) if p["name"] != "name"]
        op["parameters"] = documented_params(params, manager.deployments[name].models["champion"])
        op["operationId"] = f"predict_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        op["summary"] = f"Predict with {name} ({task.kind})"
        op["requestBody"] = predict_request_body([task])
        schema["paths"][PREDICT_ROUTE.replace("{name}", name)] = {"post": op}
    app.openapi_schema, app.state.kiln_openapi_key = schema, key
    return schema
