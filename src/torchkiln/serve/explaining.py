"""Grad-CAM heatmaps from the server: ``explain=true`` on predict, and ``POST /v1/models/{name}/explain``.

A heatmap needs a backward pass, which the batched model thread never runs: each is drawn in the thread
pool, on the predictor's own copy of the eager model (``Predictor.explain_batch``), one request at a time
per version, within the request's ``request_timeout_s``. A model that cannot explain (an ONNX variant, a
task without ``explain``, a network without convolutions) is refused with a 422 that says why, before
any model call; the message names no file.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any, Literal

import torch
from fastapi import Query
from starlette.concurrency import run_in_threadpool

from torchkiln.core.errors import KilnError
from torchkiln.serve.deployments import Deployment, ServedModel
from torchkiln.serve.state import ApiError, ServerState

Method = Literal["gradcam", "gradcam++"]
ExplainQuery = Annotated[
    bool,
    Query(
        description="Also return a Grad-CAM heatmap PNG of each input (image classifiers with eager "
        "weights; others get 422). The prediction is answered and logged as without it."
    ),
]
MethodQuery = Annotated[
    Method, Query(description="gradcam, or gradcam++ (spreads the heat over several objects).")
]
VersionQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="The served version to explain with (a prediction's X-Model-Version); default: the "
        "champion's.",
    ),
]


EXPLAIN_PARAMS = ("explain", "method")  # the predict route's query parameters of explain=true


def documented_params(params: list[dict[str, Any]], model: ServedModel) -> list[dict[str, Any]]:
    """A served model's predict parameters in the OpenAPI document: without explain's when it cannot
    explain, so a request valid against its document is one it answers."""
    if model.predictor.explain_refusal() is None:
        return params
    return [p for p in params if p["name"] not in EXPLAIN_PARAMS]


def refuse_unexplainable(model: ServedModel) -> None:
    """A 422 ``cannot_explain`` when ``model`` cannot draw heatmaps; nothing when it can."""
    refusal = model.predictor.explain_refusal(public=True)
    if refusal is not None:
        raise ApiError(422, "cannot_explain", refusal)


def explaining_model(dep: Deployment, version: str | None) -> ServedModel:
    """The champion, or the arm that serves ``version``; a 404 naming the served versions otherwise."""
    if version is None:
        return dep.models["champion"]
    for model in dep.models.values():
        if model.version == version:
            return model
    served = ", ".join(f"{m.version} ({m.arm})" for m in dep.models.values())
    raise ApiError(
        404,
        "unknown_version",
        f"Model '{dep.name}' does not serve version '{version}'; it serves {served}. Ask for one of them, "
        f"or leave version out for the champion's.",
    )


async def explanations(
    state: ServerState, model: ServedModel, x: torch.Tensor, raw: list[Any], method: str, start: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(answers, heatmap items)`` of the preprocessed inputs ``x``, drawn in the thread pool.

    ``start`` is the request's ``time.perf_counter()``: the heatmaps get what is left of its
    ``request_timeout_s``, and a 504 past it.
    """
    timeout = state.settings.request_timeout_s
    left = max(timeout - (time.perf_counter() - start), 0.0)
    try:
        async with asyncio.timeout(left):
            return await run_in_threadpool(_draw, model, x, raw, method)
    except TimeoutError:
        raise ApiError(
            504,
            "timeout",
            f"The heatmaps took longer than this server's request_timeout_s of {timeout:g} s. Retry, send "
            f"fewer inputs, or predict without explain=true.",
        ) from None


def _draw(
    model: ServedModel, x: torch.Tensor, raw: list[Any], method: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        found = model.predictor.explain_batch(x, raw, method=method)
    except KilnError as exc:  # a network without convolutions: the task's message says which can
        raise ApiError(422, "cannot_explain", str(exc)) from None
    items = [
        {
            "input": i,
            "label": e.explained,
            "method": method,
            "heatmap_png": base64.b64encode(e.png()).decode("ascii"),
        }
        for i, e in enumerate(found)
    ]
    return [e.answer for e in found], items
