"""`kiln registry`: thin wrappers over :mod:`torchkiln.serve.registry` (the MLflow Model Registry)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from torchkiln.core.console import err, fail
from torchkiln.core.errors import KilnError

registry_app = typer.Typer(
    help="Register bundles as model versions and point the champion/challenger aliases `kiln serve` loads.",
    no_args_is_help=True,
)

out = Console()

TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="The MLflow registry (default: $MLFLOW_TRACKING_URI, else RUNS_DIR/mlflow.db, the store "
        "kiln train logs to).",
    ),
]
RunsDirOpt = Annotated[
    Path,
    typer.Option(
        "--runs-dir",
        help="The runs_dir whose mlflow.db is the registry when neither --tracking-uri nor "
        "$MLFLOW_TRACKING_URI is set.",
    ),
]


def _uri(tracking_uri: str | None, runs_dir: Path) -> str:
    from torchkiln.serve.registry import registry_uri

    return registry_uri(tracking_uri, runs_dir=runs_dir)


class Alias(StrEnum):
    champion = "champion"
    challenger = "challenger"


@registry_app.command()
def register(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder or a run directory.")],
    name: Annotated[str, typer.Option("--name", help="The registered model (created on first use).")],
    alias: Annotated[Alias | None, typer.Option(help="Also point this alias at the new version.")] = None,
    tracking_uri: TrackingUriOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Log a bundle to MLflow and register it as a new version. The last line is models:/NAME/VERSION."""
    from torchkiln.serve.registry import register_bundle

    uri = _uri(tracking_uri, runs_dir)
    try:
        info = register_bundle(bundle, name=name, alias=alias.value if alias else None, tracking_uri=uri)
    except KilnError as exc:
        fail(exc)
    aliases = f" ({', '.join(info.aliases)})" if info.aliases else ""
    err.print(f"registered {info.source} as {info.name} version {info.version}{aliases}", soft_wrap=True)
    print(f"models:/{info.name}/{info.version}")


@registry_app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    tracking_uri: TrackingUriOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Show the registered versions with their aliases."""
    from torchkiln.serve.registry import list_versions

    uri = _uri(tracking_uri, runs_dir)
    try:
        versions = list_versions(name, tracking_uri=uri)
    except KilnError as exc:
        fail(exc)
    if not versions:
        err.print(
            f"no registered models in {uri}. Register one with: kiln registry register BUNDLE --name NAME",
            soft_wrap=True,
        )
        return
    table = Table(title=f"registry: {uri}")
    for col in ("name", "version", "aliases", "task", "runtime", "created (UTC)", "source"):
        table.add_column(col, justify="right" if col == "version" else "left", overflow="fold")
    for v in versions:
        created = v.created.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(v.name, v.version, ", ".join(v.aliases), v.task, v.runtime, created, v.source)
    Console(width=max(out.width, 140)).print(table)  # wide enough that paths stay readable


@registry_app.command("alias")
def alias_(
    name: Annotated[str, typer.Argument(help="The registered model.")],
    version: Annotated[int, typer.Argument(min=1, help="The version to point the alias at.")],
    alias: Annotated[Alias, typer.Argument(help="champion or challenger.")],
    tracking_uri: TrackingUriOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Point champion or challenger at a version; a running `kiln serve` picks the change up."""
    from torchkiln.serve.registry import set_alias

    try:
        set_alias(name, version, alias.value, tracking_uri=_uri(tracking_uri, runs_dir))
    except KilnError as exc:
        fail(exc)
    print(f"models:/{name}@{alias.value} -> version {version}")


@registry_app.command("rollback")
def rollback_(
    name: Annotated[str, typer.Argument(help="The registered model.")],
    tracking_uri: TrackingUriOpt = None,
    runs_dir: RunsDirOpt = Path("runs"),
) -> None:
    """Point champion back at the version it replaced (recorded when kiln retrain promoted it)."""
    from torchkiln.serve.registry import rollback

    try:
        back = rollback(name, tracking_uri=_uri(tracking_uri, runs_dir))
    except KilnError as exc:
        fail(exc)
    err.print(f"{name}: champion version {back.from_version} rolled back; POST /admin/reload to serve it")
    print(f"models:/{name}@champion -> version {back.to_version}")
