"""``POST /v1/models/{name}/{action}``: a task's own requests beside predict (an image generator's stylize).

An action is unbatched and slow (style transfer optimizes an image for seconds), so it runs in the thread
pool, one at a time per server process: a second request meanwhile gets 429 with Retry-After instead of
taking the cores the first one is using. A request that outlives ``action_timeout_s`` gets 504; its work
gets the same deadline (``RequestLimits.deadline``) and stops at it, holding the slot until then, so a
timeout never lets two run at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from torchkiln.core.errors import KilnError
from torchkiln.serve.routes import (
    StateDep,
    deployment,
    error_responses,
    example_shape,
    json_body,
    request_id,
    shown_name,
)
from torchkiln.serve.state import ApiError
from torchkiln.tasks.base import TASKS, RequestLimits, TaskAction, task_actions

router = APIRouter()
ACTION_ROUTE = "/v1/models/{name}/{action}"


def action_request_body() -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of the action route: one of the registered tasks' action schemas."""
    actions = [a for entry in TASKS for a in task_actions(entry.obj)]
    refs = [{"$ref": f"#/components/schemas/{a.request_schema.__name__}"} for a in actions]
    examples = {a.name: {"summary": a.summary, "value": a.example_request()} for a in actions}
    schema: dict[str, Any] = {"oneOf": refs} if refs else {"type": "object"}
    return {"required": True, "content": {"application/json": {"schema": schema, "examples": examples}}}


@router.post(
    ACTION_ROUTE,
    responses=error_responses(404, 413, 415, 422, 429, 503, 504),
    openapi_extra={"requestBody": action_request_body()},
    tags=["actions"],
)
async def task_action(name: str, action: str, request: Request, state: StateDep) -> Response:
    """A request the served model's task answers beside predict: ``stylize`` for an image-generation model.

    Unbatched, one at a time per server process (429 while one runs), within ``action_timeout_s``.
    """
    rid = request_id(request)
    dep = deployment(state, name)
    model = dep.models["champion"]
    request.state.kiln_model, request.state.kiln_version = dep.name, model.version
    actions = {a.name: a for a in task_actions(model.task)}
    spec = actions.get(action)
    if spec is None:
        answers = ", ".join(["predict", *actions])
        raise ApiError(
            404,
            "unknown_action",
            f"Model '{shown_name(name)}' ({model.task.kind}) answers no '{shown_name(action)}' requests. It "
            f"answers: {answers} (POST /v1/models/{shown_name(name)}/ACTION).",
        )
    example = spec.example_request()
    parsed = json_body(
        request,
        await request.body(),
        spec.request_schema,
        example,
        fix=f"Expected a JSON object like {json.dumps(example_shape(example))}.",
        what="The request body is invalid",
    )
    answer = await _run(
        state.action_slot, spec, parsed, state.manager.limits, state.settings.action_timeout_s
    )
    headers = {"X-Request-ID": rid, "X-Model-Version": model.version}
    content = {"model": dep.name, "version": model.version, "request_id": rid, "action": action}
    return JSONResponse(content | {"answer": answer}, headers=headers)


async def _run(
    slot: asyncio.Semaphore, spec: TaskAction, parsed: Any, limits: RequestLimits, timeout_s: float
) -> dict[str, Any]:
    if slot.locked():
        raise ApiError(
            429,
            "busy",
            f"This server is answering another '{spec.name}' request, which runs one at a time. Retry after "
            f"the Retry-After seconds, or add replicas.",
            {"Retry-After": "5"},
        )
    await slot.acquire()
    limits = dataclasses.replace(limits, deadline=time.monotonic() + timeout_s)  # the work stops there too
    work = asyncio.ensure_future(run_in_threadpool(_call, spec, parsed, limits))
    work.add_done_callback(lambda done: (slot.release(), done.cancelled() or done.exception()))
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(work)
    except TimeoutError:
        raise ApiError(
            504,
            "timeout",
            f"The '{spec.name}' request took longer than this server's action_timeout_s of {timeout_s:g} s. "
            f"Ask for fewer steps or a smaller size, or raise action_timeout_s.",
        ) from None


def _call(spec: TaskAction, parsed: Any, limits: RequestLimits) -> dict[str, Any]:
    try:
        return spec.run(parsed, limits)
    except KilnError as exc:  # the input cannot be used: the task's message says why
        raise ApiError(422, "invalid_input", str(exc)) from None
