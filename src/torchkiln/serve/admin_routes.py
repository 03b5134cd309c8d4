"""The admin endpoints (``/admin/models``, ``/admin/reload``, ``/admin/models/NAME/traffic``) and the
bearer-token check they share with the feedback endpoint. With no admin token configured they answer 404."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from torchkiln.serve.deployments import Deployment
from torchkiln.serve.routes import StateDep, detail, error_responses, json_body, shown_name
from torchkiln.serve.schemas import (
    ModelDetailList,
    ReloadFailed,
    ReloadResult,
    TrafficFailed,
    TrafficResult,
    TrafficUpdate,
    Workers,
)
from torchkiln.serve.state import ApiError, ServerState
from torchkiln.serve.workers import Agreement, Traffic

router = APIRouter()


def require_admin(state: StateDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer-token check in constant time; with no token configured the admin endpoints are off."""
    token = state.settings.admin_token
    if token is None:
        raise ApiError(
            404,
            "admin_off",
            "Admin endpoints are off: no admin token is configured. Set KILN_SERVE_ADMIN_TOKEN.",
        )
    check_bearer(authorization, token, "admin")


def check_bearer(authorization: str | None, token: SecretStr, what: str) -> None:
    """401 without a bearer token, 403 with a wrong one; compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "unauthorized",
            f"This endpoint needs 'Authorization: Bearer <{what} token>'.",
            {"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise ApiError(403, "forbidden", f"The {what} token is wrong.")


@router.get(
    "/admin/models",
    response_model=ModelDetailList,
    responses=error_responses(401, 403, 404),
    dependencies=[Depends(require_admin)],
    tags=["admin"],
)
async def admin_models(state: StateDep) -> ModelDetailList:
    """/v1/models plus what only an admin sees: each version's URI and the last failed load per arm."""
    return ModelDetailList(models=[detail(d) for d in state.manager.deployments.values()])


@router.post(
    "/admin/reload",
    response_model=ReloadResult,
    responses={409: {"model": ReloadFailed}} | error_responses(401, 403, 404, 422),
    dependencies=[Depends(require_admin)],
    tags=["admin"],
)
async def reload(
    state: StateDep,
    model: Annotated[str | None, Query(description="Reload only this model; default: all.")] = None,
    force: Annotated[bool, Query(description="Reload even if the registry version did not change.")] = True,
) -> Any:
    """Load each model's current version beside the old one, then swap; a failed load keeps the old one.

    With several workers, every worker loads the same versions, and the answer waits for all of them.
    200 when every arm loaded (or was unchanged) in every worker; 409 when an arm failed to load (with
    every outcome), or when a worker does not serve the new versions.
    """
    deps = state.manager.deployments
    chosen = [_named(state, model)] if model is not None else list(deps.values())
    results, agreement = await state.manager.reload_all(chosen, force=force)
    workers = _workers(agreement)
    failed = [
        _reload_failure(deps[name], arm, outcome)
        for name, arms in results.items()
        for arm, outcome in arms.items()
        if outcome.startswith("failed")
    ]
    problems = agreement.problems if agreement else []
    if not failed and not problems:
        return ReloadResult(results=results, workers=workers)
    if failed:
        kind = "reload_failed"
        detail = f"{' '.join(failed)} Fix the bundle or the registry version and POST /admin/reload again; "
        detail += "GET /admin/models shows the last error per arm."
    else:
        kind = "reload_incomplete"
        detail = (
            f"The reload reached {workers.serving} of {workers.total} workers: {'; '.join(problems)}. Until "
            "every worker serves the same versions, requests may get either. See the server log for why, "
            "then POST /admin/reload again."
        )
    body = ReloadFailed(detail=detail, type=kind, results=results, workers=workers)
    return JSONResponse(body.model_dump(), status_code=409)


TRAFFIC_EXAMPLE = {"challenger_weight": 0.1, "shadow": False}


@router.put(
    "/admin/models/{name}/traffic",
    response_model=TrafficResult,
    responses={409: {"model": TrafficFailed}} | error_responses(401, 403, 404, 415, 422),
    dependencies=[Depends(require_admin)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/TrafficUpdate"},
                    "example": TRAFFIC_EXAMPLE,
                }
            },
        }
    },
    tags=["admin"],
)
async def set_traffic(name: str, request: Request, state: StateDep) -> Any:
    """Change how a model's requests reach its challenger, at runtime: a canary share
    (``challenger_weight``, sticky per request key) or shadow mirroring.

    With several workers every worker applies the rule, and the answer waits for all of them: 200 when
    each does, 409 when one did not in time. The rule lasts until the next change or a restart, which
    goes back to the settings.
    """
    dep = _named(state, name)
    fix = f"Expected a JSON object like {json.dumps(TRAFFIC_EXAMPLE)}."
    update = json_body(
        request,
        await request.body(),
        TrafficUpdate,
        TRAFFIC_EXAMPLE,
        fix=fix,
        what="The traffic rule is invalid",
    )
    if dep.spec.challenger is None:
        raise ApiError(
            409,
            "no_challenger",
            f"Model '{name}' is served without a challenger, so it has no traffic to split or mirror. Serve "
            f"it with a challenger URI (challenger: models:/{name}@challenger in the serve settings).",
        )
    if update.challenger_weight is None and update.shadow is None:
        raise ApiError(
            422,
            "invalid_traffic",
            "The body changes nothing; expected challenger_weight (0 to 1) and/or shadow (true or false). "
            + fix,
        )
    rule = Traffic(
        dep.rule.challenger_weight if update.challenger_weight is None else update.challenger_weight,
        dep.rule.shadow if update.shadow is None else update.shadow,
    )
    if rule.shadow and rule.challenger_weight > 0:
        raise ApiError(
            422,
            "invalid_traffic",
            f"Shadow mirroring and a challenger share exclude each other (this would be challenger_weight "
            f"{rule.challenger_weight:g} with shadow true). Send shadow false with a share, or "
            "challenger_weight 0 with shadow true.",
        )
    agreement = await state.manager.set_traffic(dep, rule)
    workers = _workers(agreement)
    if agreement and agreement.problems:
        detail = (
            f"The traffic change reached {workers.serving} of {workers.total} workers: "
            f"{'; '.join(agreement.problems)}. Until every worker applies it, requests may be routed either "
            "way. See the server log for why, then PUT the rule again."
        )
        body = TrafficFailed(detail=detail, type="traffic_incomplete", workers=workers)
        return JSONResponse(body.model_dump(), status_code=409)
    return TrafficResult(model=name, traffic=dep.traffic(), workers=workers)


def _named(state: ServerState, name: str) -> Deployment:
    deps = state.manager.deployments
    if name not in deps:
        raise ApiError(
            404, "unknown_model", f"No model named '{shown_name(name)}'. Served: {', '.join(sorted(deps))}."
        )
    return deps[name]


def _workers(agreement: Agreement | None) -> Workers:
    """How many workers took a change; a single-process server is one worker that did."""
    if agreement is None:
        return Workers(total=1, serving=1)
    return Workers(total=agreement.workers, serving=agreement.agreeing)


def _reload_failure(dep: Deployment, arm: str, outcome: str) -> str:
    """One failed arm of a reload, for the 409 message: what failed, and what serves instead."""
    reason = outcome.removeprefix("failed: ").rstrip(".")
    kept = dep.models.get(arm)
    serving = f"Version {kept.version} keeps serving." if kept else "No version of it serves yet."
    return f"Reloading {dep.name}/{arm} failed: {reason}. {serving}"
