"""`kiln containerize`: a thin wrapper over :func:`torchkiln.serve.containerize.containerize`.

Registered in ``cli/main.py`` with ``app.command("containerize")(containerize_command)``. Errors go through
``core.console.fail``, as every command's do: ``error: MESSAGE`` on stderr, no traceback, exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchkiln.core.console import fail as _fail
from torchkiln.core.errors import KilnError


def containerize_command(
    bundle: Annotated[Path, typer.Argument(help="A bundle or run directory.")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write the Docker build context to.")],
    name: Annotated[
        str | None, typer.Option(help="Model and image name (default: from the run name, e.g. digits-cnn).")
    ] = None,
    port: Annotated[int, typer.Option(help="The port the server listens on and publishes.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server worker processes (one model copy each).")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Write a Docker build context that serves BUNDLE: Dockerfile, compose.yaml (with PostgreSQL and
    Prometheus), the bundle and a torchkiln wheel. The image itself is built with `docker build`."""
    from torchkiln.serve.containerize import containerize

    try:
        ctx = containerize(bundle, out, name=name, port=port, workers=workers, overwrite=overwrite)
    except KilnError as exc:
        _fail(exc)
    model = next(p.name for p in (ctx / "models").iterdir())
    lines = [f"wrote the build context {ctx}:"]
    lines += [f"  {p.relative_to(ctx)}" for p in sorted(ctx.rglob("*")) if p.is_file()]
    lines += [
        "next:",
        f"  cd {ctx}",
        f"  docker build -t {model} .",
        f"  docker run --rm -p 127.0.0.1:{port}:{port} {model}",
        "  docker compose up --build   # + PostgreSQL and Prometheus; set POSTGRES_PASSWORD and "
        "KILN_SERVE_ADMIN_TOKEN first (README.md)",
    ]
    print("\n".join(lines))  # plain print: paths may hold [brackets], which rich would read as markup
