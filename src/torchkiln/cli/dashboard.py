"""``kiln dashboard``: the web pages over a prediction log, the registry and the run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import err, fail
from torchkiln.core.errors import KilnError


def dashboard_command(
    log_url: Annotated[
        str, typer.Option(help="The prediction log kiln serve writes (SQLAlchemy URL).")
    ] = "sqlite:///runs/serve/predictions.db",
    tracking_uri: Annotated[
        str | None, typer.Option(help="The MLflow registry (default: RUNS_DIR/mlflow.db).")
    ] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="The run folders (default: runs).")] = None,
    server: Annotated[
        str | None, typer.Option(help="The running kiln serve, for labels and rollback (http://HOST:PORT).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default 127.0.0.1; beyond it a token is needed).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8050).")] = None,
) -> None:
    """Serve the dashboard: live predictions, per-model overview, drift, versions, runs and labelling.

    Tokens come from the environment: KILN_DASHBOARD_TOKEN (this dashboard's own, needed beyond
    loopback), KILN_ADMIN_TOKEN (the server's admin token, for rollback) and KILN_DASHBOARD_FEEDBACK_TOKEN.
    """
    import uvicorn

    from torchkiln.dashboard.app import create_dashboard
    from torchkiln.dashboard.settings import load_dashboard_settings

    try:
        settings = load_dashboard_settings(
            log_url=log_url, tracking_uri=tracking_uri, runs_dir=runs_dir, server=server, host=host, port=port
        )
        app = create_dashboard(settings)
    except KilnError as exc:
        fail(exc)
    err.print(f"dashboard on http://{settings.host}:{settings.port} (log {log_url})", soft_wrap=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
