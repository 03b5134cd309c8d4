"""The admin endpoints (``/admin/models``, ``/admin/reload``) and the bearer-token check they share with
the feedback endpoint. With no admin token configured they answer 404."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from torchkiln.serve.deployments import Deployment
from torchkiln.serve.routes import StateDep, detail, error_responses, shown_name
from torchkiln.serve.schemas import ModelDetailList, ReloadFailed, ReloadResult, Workers
from torchkiln.serve.state import ApiError

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
    if model is not None and model not in deps:
        raise ApiError(
            404, "unknown_model", f"No model named '{shown_name(model)}'. Served: {', '.join(sorted(deps))}."
        )
    chosen = [deps[model]] if model else list(deps.values())
    results, agreement = await state.manager.reload_all(chosen, force=force)
    workers = (
        Workers(total=agreement.workers, serving=agreement.agreeing)
        if agreement
        else Workers(total=1, serving=1)
    )
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


def _reload_failure(dep: Deployment, arm: str, outcome: str) -> str:
    """One failed arm of a reload, for the 409 message: what failed, and what serves instead."""
    reason = outcome.removeprefix("failed: ").rstrip(".")
    kept = dep.models.get(arm)
    serving = f"Version {kept.version} keeps serving." if kept else "No version of it serves yet."
    return f"Reloading {dep.name}/{arm} failed: {reason}. {serving}"
