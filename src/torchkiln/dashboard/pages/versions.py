"""Versions: each registered model's versions, where each came from, what the server serves, the evidence of
each ``kiln retrain`` decision, and a rollback button. :mod:`torchkiln.dashboard.lineage` reads it all and
rolls back; :mod:`torchkiln.dashboard.evidence` writes the figures.

The rollback is the page's one change: ``kiln registry rollback NAME`` (the champion alias back to the
version it replaced), then ``POST /admin/reload?model=NAME`` on the server with its admin token, so every
worker serves the old champion. The browser asks for confirmation first; the answer replaces the model's
section with its new state and the outcome, or the error that stopped it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from torchkiln.dashboard.app import DashboardDep, Nav
from torchkiln.dashboard.evidence import decision_groups, version_metrics
from torchkiln.dashboard.lineage import read_registry, roll_back
from torchkiln.dashboard.server import Server

router = APIRouter()
NAV = Nav("Versions", "/versions", 40)
HELPERS = {"decision_groups": decision_groups, "version_metrics": version_metrics}


@router.get("/versions", include_in_schema=False)
async def versions(request: Request, dash: DashboardDep) -> Response:
    registry = await run_in_threadpool(read_registry, dash.settings, Server(dash.settings))
    return dash.render(request, "versions.html.j2", registry=registry, outcome=None, **HELPERS)


@router.post("/versions/{name}/rollback", include_in_schema=False)
async def rollback(name: str, request: Request, dash: DashboardDep) -> Response:
    """Roll back and reload; answers the model's section (200 even on an error, so htmx shows it)."""
    server = Server(dash.settings)
    outcome = await run_in_threadpool(roll_back, dash.settings, server, name)
    registry = await run_in_threadpool(read_registry, dash.settings, server, name=name)
    return dash.render(
        request,
        "versions_model.html.j2",
        registry=registry,
        model=registry.models[0] if registry.models else None,
        model_name=name,
        outcome=outcome,
        **HELPERS,
    )
