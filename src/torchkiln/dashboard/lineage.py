"""What the Versions page shows of each registered model, and its one change: the rollback.

Per model: every version with its aliases, where it came from (the run folder it was registered from, the
``torchkiln.retrain.*`` tags a ``kiln retrain`` left: parent version, data and test-set hashes, outcome)
and which arm of the running server serves it; and the decision record of each ``kiln retrain`` of it
(the fresh-test McNemar figures, the replay, the shadow and canary phases on the live server).

The rollback moves the ``champion`` alias and asks the server to reload; everything else is only read:
the registry through :mod:`torchkiln.serve.registry`, the records from the local files their artifact URIs
name, the server through its public API. A SQLite registry that does not exist is reported, not created.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from torchkiln.artifacts.runs import RunSummary, read_run
from torchkiln.core.errors import KilnError
from torchkiln.dashboard.server import Server
from torchkiln.dashboard.settings import DashboardSettings
from torchkiln.engine.tracking import sqlite_path
from torchkiln.monitor.decision import DecisionRecord
from torchkiln.serve import registry
from torchkiln.serve.registry import TAG_PREVIOUS, TAG_ROLLED_BACK, ModelVersionInfo

MAX_DECISIONS = 20  # the newest records shown per model
MAX_RECORD_BYTES = 2_000_000


@dataclass(frozen=True)
class Decision:
    """One ``kiln retrain`` decision record, or why it could not be read (``problem``)."""

    uri: str
    record: DecisionRecord | None
    problem: str = ""


@dataclass
class VersionView:
    info: ModelVersionInfo
    arms: list[str]  # the server's arms that serve this version now
    run: RunSummary | None  # the run folder it was registered from, when that folder is here
    run_ref: str | None  # that folder relative to runs_dir (a link to the Runs page)
    decision: Decision | None  # the retrain that produced it

    def tag(self, key: str) -> str | None:
        return self.info.tags.get(key)

    @property
    def parent(self) -> str | None:
        return self.tag("torchkiln.retrain.parent_version")

    @property
    def previous(self) -> str | None:
        return self.tag(TAG_PREVIOUS)

    @property
    def rolled_back(self) -> bool:
        return self.tag(TAG_ROLLED_BACK) == "true"


@dataclass
class ModelView:
    name: str
    versions: list[VersionView]  # newest first
    served: dict[str, Any] | None  # the server's GET /v1/models entry; None when it does not serve it
    decisions: list[Decision] = field(default_factory=list)
    rollback_blocked: str = ""  # why the rollback button is off; empty when it is on

    @property
    def slug(self) -> str:
        """The name as an HTML id (a registered name may hold spaces and other characters)."""
        return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", self.name)

    @property
    def champion(self) -> VersionView | None:
        return next((v for v in self.versions if "champion" in v.info.aliases), None)


@dataclass
class Registry:
    """The whole page: the registry's URI, its models, and what could not be read (shown, not raised)."""

    uri: str
    models: list[ModelView]
    problem: str = ""  # the registry could not be read
    server_problem: str = ""  # the server could not be asked what it serves


@dataclass(frozen=True)
class RollbackOutcome:
    """What a rollback did, or the error that stopped it; ``message`` says it in words."""

    ok: bool
    message: str
    before: str | None = None
    after: str | None = None
    reload: dict[str, Any] | None = None  # the server's answer to POST /admin/reload


def registry_uri(settings: DashboardSettings) -> str:
    return registry.registry_uri(settings.tracking_uri, runs_dir=settings.runs_dir)


def read_registry(settings: DashboardSettings, server: Server, *, name: str | None = None) -> Registry:
    """Every registered model (or only ``name``) with its versions, lineage, served arms and decisions."""
    uri = registry_uri(settings)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return Registry(uri, [], problem=f"There is no registry at {db} yet. {_REGISTER_HINT}")
    served, server_problem = _served(server)
    try:
        infos = registry.list_versions(name, tracking_uri=uri)
        by_model: dict[str, list[ModelVersionInfo]] = {}
        for info in infos:
            by_model.setdefault(info.name, []).append(info)
        models = [
            _model(settings, server, uri, name, infos, served, server_problem)
            for name, infos in sorted(by_model.items())
        ]
    except KilnError as exc:
        return Registry(uri, [], problem=str(exc), server_problem=server_problem)
    return Registry(uri, models, server_problem=server_problem)


_REGISTER_HINT = "Register a bundle with: kiln registry register BUNDLE --name NAME --alias champion"


def _served(server: Server) -> tuple[dict[str, dict[str, Any]] | None, str]:
    if not server.configured:
        return None, ""
    try:
        return {m["name"]: m for m in server.models()}, ""
    except KilnError as exc:
        return None, str(exc)


def _model(
    settings: DashboardSettings,
    server: Server,
    uri: str,
    name: str,
    infos: list[ModelVersionInfo],
    served: dict[str, dict[str, Any]] | None,
    server_problem: str,
) -> ModelView:
    entry = (served or {}).get(name)
    records = {u: read_record(u) for u in registry.list_decisions(name, tracking_uri=uri)[:MAX_DECISIONS]}
    versions = []
    for info in sorted(infos, key=lambda v: int(v.version), reverse=True):
        arms = [s["arm"] for s in (entry or {}).get("versions", []) if str(s.get("version")) == info.version]
        run, ref = _source_run(settings.runs_dir, info.tags.get(registry.TAG_SOURCE))
        linked = info.tags.get("torchkiln.decision")
        decision = None
        if linked:
            decision = records.get(linked) or read_record(linked)
        versions.append(VersionView(info, arms, run, ref, decision))
    # Newest first by the record's own time (runs logged within one millisecond tie on start time).
    decisions = sorted(records.values(), key=lambda d: d.record.created if d.record else "", reverse=True)
    view = ModelView(name, versions, entry, decisions)
    view.rollback_blocked = _blocked(settings, server, view, served, server_problem)
    return view


def _blocked(
    settings: DashboardSettings,
    server: Server,
    view: ModelView,
    served: dict[str, Any] | None,
    server_problem: str,
) -> str:
    """Why a rollback cannot work now (the button is off and says so); empty when it can."""
    if not server.configured:
        return "Rollback needs the running server: start the dashboard with --server http://HOST:PORT."
    if settings.admin_token is None:
        return (
            "Rollback needs the server's admin token: set KILN_ADMIN_TOKEN for the dashboard (the "
            "server's KILN_SERVE_ADMIN_TOKEN)."
        )
    if server_problem:
        return server_problem
    if served is not None and view.served is None:
        return f"The server at {settings.server} does not serve '{view.name}'."
    champion = view.champion
    if champion is None:
        return f"'{view.name}' has no champion to roll back."
    if not champion.previous:
        return (
            f"Its champion, version {champion.info.version}, records no previous champion (it was set by "
            f"hand or is the first): point the alias yourself with kiln registry alias {view.name} VERSION "
            "champion."
        )
    return ""


def _source_run(runs_dir: Path, source: str | None) -> tuple[RunSummary | None, str | None]:
    """The run folder a version's bundle came from (``RUN/bundle``) when it lies under ``runs_dir``."""
    if not source or source == "?":
        return None, None
    run_dir = Path(source).parent
    try:
        ref = run_dir.resolve().relative_to(runs_dir.resolve()).as_posix()
    except (ValueError, OSError):
        ref = None
    return read_run(run_dir), ref


def read_record(uri: str) -> Decision:
    """The decision record an artifact URI names, when it is a file on this machine."""
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        return Decision(uri, None, "the record is not on this machine; open it in MLflow")
    path = Path(unquote(parts.path))
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            return Decision(uri, None, "the record is too large to show")
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(DecisionRecord)}
        return Decision(uri, DecisionRecord(**{k: v for k, v in data.items() if k in known}))
    except (OSError, ValueError, TypeError) as exc:
        return Decision(uri, None, f"the record cannot be read ({type(exc).__name__}: {exc})")


def roll_back(settings: DashboardSettings, server: Server, name: str) -> RollbackOutcome:
    """``kiln registry rollback NAME``, then ``POST /admin/reload?model=NAME`` so that every worker of the
    server serves the old champion. Every failure is an outcome with the error's own words, never raised.
    """
    if not server.configured or settings.admin_token is None:
        blocked = _blocked(settings, server, ModelView(name, [], None), None, "")
        return RollbackOutcome(False, f"Nothing was changed. {blocked}")
    try:
        served = {m["name"] for m in server.models()}
    except KilnError as exc:
        return RollbackOutcome(False, f"Nothing was changed: {exc}")
    if name not in served:
        return RollbackOutcome(
            False,
            f"Nothing was changed: the server at {settings.server} does not serve '{name}' (it serves "
            f"{', '.join(sorted(served)) or 'nothing'}), so it could not load the old champion.",
        )
    try:
        done = registry.rollback(name, tracking_uri=registry_uri(settings))
    except KilnError as exc:
        return RollbackOutcome(False, f"Nothing was changed: {exc}")
    before, after = done.from_version, done.to_version
    try:
        reload = server.reload(name)
    except KilnError as exc:
        return RollbackOutcome(
            False,
            f"The registry's champion of '{name}' moved from version {before} back to {after}, but the "
            f"server did not reload: {exc} It may still serve version {before}: retry the reload (POST "
            f"/admin/reload?model={name}), or undo with kiln registry alias {name} {before} champion.",
            before,
            after,
        )
    workers = reload.get("workers") or {}
    arms = ", ".join(
        f"{arm} {outcome}" for arm, outcome in (reload.get("results") or {}).get(name, {}).items()
    )
    message = (
        f"Rolled back '{name}': champion version {before} -> {after}. The server reloaded ({arms}); "
        f"{workers.get('serving', '?')} of {workers.get('total', '?')} workers serve it."
    )
    serving = _served_champion(server, name)
    if serving is not None and serving != after:  # it serves a path, or another registry's version
        return RollbackOutcome(
            False,
            f"The registry's champion of '{name}' moved from version {before} back to {after} and the server "
            f"reloaded ({arms}), but its champion is version {serving}: it does not serve "
            f"models:/{name}@champion from the registry at {registry_uri(settings)}. Serve that URI, or undo "
            f"with kiln registry alias {name} {before} champion.",
            before,
            after,
            reload,
        )
    return RollbackOutcome(True, message, before, after, reload)


def _served_champion(server: Server, name: str) -> str | None:
    """The version the server's champion arm of ``name`` serves now (after a reload)."""
    try:
        entry = next((m for m in server.models() if m["name"] == name), {})
    except KilnError:
        return None
    return next((str(v["version"]) for v in entry.get("versions", []) if v.get("arm") == "champion"), None)
