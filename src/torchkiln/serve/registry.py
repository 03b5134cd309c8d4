"""The model registry behind ``kiln serve``: bundles as versions in the MLflow Model Registry.

``register_bundle`` logs a bundle folder as the artifacts of a new run in the ``torchkiln-registry``
experiment and makes it a version of a registered model; ``set_alias`` points ``champion`` or
``challenger`` at a version; ``resolve_model_uri("models:/NAME@champion")`` downloads that version into a
local cache and returns the bundle folder to load.

Where the registry lives: the store that training logs to, named by
:func:`~torchkiln.engine.tracking.resolve_mlflow_uri`: ``tracking_uri=`` if given, else
``$MLFLOW_TRACKING_URI``, else ``runs/mlflow.db`` (``sqlite:////abs/path/runs/mlflow.db``, made absolute so a
server that changes directory still finds it). So ``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``
shows the runs and the registered models together. With a SQLite store the artifacts go to ``mlartifacts/``
beside the database file, as training's do. Any other URI (an MLflow server backed by PostgreSQL, say)
keeps that server's artifact root.
MLflow is used through ``MlflowClient(tracking_uri=..., registry_uri=...)`` only, never through the global
``mlflow.set_tracking_uri``, so calls with different registries never leak into each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from torchkiln.artifacts.bundle import RUNTIMES, _read_meta, load_bundle
from torchkiln.core.errors import BundleError, KilnError, ServeError
from torchkiln.core.io import sha256_file
from torchkiln.engine.tracking import mlflow_artifact_root, resolve_mlflow_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

EXPERIMENT = "torchkiln-registry"
TAG_VERSION, TAG_TASK, TAG_RUNTIME = "torchkiln.version", "torchkiln.task", "torchkiln.runtime"
TAG_SHA, TAG_SOURCE = "torchkiln.weights_sha256", "torchkiln.source"
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))")
_REGISTER = "kiln registry register BUNDLE --name {}"


@dataclass(frozen=True)
class ResolvedModel:
    """A registry URI resolved to one version, downloaded to a local bundle folder."""

    uri: str
    name: str
    version: str
    alias: str | None
    path: Path


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered version: ``source`` is the bundle folder it was registered from,
    ``artifact_uri`` where MLflow keeps its copy."""

    name: str
    version: str
    aliases: tuple[str, ...]
    task: str
    runtime: str
    created: datetime
    source: str
    artifact_uri: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict, compare=False)  # lineage: torchkiln.retrain.* ...


def registry_uri(tracking_uri: str | None = None, *, runs_dir: str | Path = "runs") -> str:
    """The registry to use: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``<runs_dir>/mlflow.db``
    (absolute): the store ``kiln train`` logs to with the same ``runs_dir``.

    Example:
        >>> registry_uri()
        'sqlite:////home/me/project/runs/mlflow.db'
    """
    return resolve_mlflow_uri(tracking_uri, runs_dir=runs_dir)


def default_cache_dir() -> Path:
    """``$KILN_CACHE_DIR/registry``, else ``~/.cache/torchkiln/registry``."""
    root = os.environ.get("KILN_CACHE_DIR")
    return Path(root) / "registry" if root else Path.home() / ".cache" / "torchkiln" / "registry"


def register_bundle(
    bundle: str | Path, *, name: str, alias: str | None = None, tracking_uri: str | None = None
) -> ModelVersionInfo:
    """Check a bundle, log its folder to a new MLflow run and register it as the next version of ``name``.

    Args:
        bundle: a bundle folder (or a run directory holding ``bundle/``).
        name: the registered model; created on first use. No ``/`` or ``@`` (they split a models:/ URI).
        alias: also point this alias (e.g. ``champion``) at the new version.
        tracking_uri: the registry (see :func:`registry_uri`).

    Returns:
        The new version, tagged with the bundle's torchkiln version, task, runtime, weights SHA-256 and
        source folder.

    Raises:
        BundleError: the bundle is incomplete or corrupt (checked before anything is logged).
        ServeError: a bad name, or the registry fails; or MLflow refuses ``alias`` (the version is
            registered even so: set a valid alias with :func:`set_alias`).

    Example:
        >>> register_bundle("runs/cnn/20261124-101500/bundle", name="shapes", alias="champion").version
        '1'
    """
    if not name.strip() or "/" in name or "@" in name:
        raise ServeError(
            f"Model name {name!r} cannot be used: it must be non-empty and contain no '/' or '@', which "
            f"split a models:/NAME@ALIAS URI. Pick another --name, e.g. 'shapes-cnn'."
        )
    b = load_bundle(bundle)
    tags = {
        TAG_VERSION: str(b.meta.get("torchkiln_version")),
        TAG_TASK: b.task.kind,
        TAG_RUNTIME: b.meta.get("runtime", "torch"),
        TAG_SHA: b.meta["weights_sha256"],
        TAG_SOURCE: str(b.path.resolve()),
    }
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        try:  # first, so that a name MLflow refuses fails before anything is logged
            client.create_registered_model(name)
        except _mlflow_error() as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        run = client.create_run(_experiment_id(client, uri), run_name=name, tags=tags)
        try:
            client.log_artifacts(run.info.run_id, str(b.path), artifact_path="bundle")
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id)
        source = f"{run.info.artifact_uri}/bundle"
        mv = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=tags)
    if alias is not None:
        set_alias(name, mv.version, alias, tracking_uri=uri)
    return _info(mv, {alias: mv.version} if alias else {})


def list_versions(name: str | None = None, *, tracking_uri: str | None = None) -> list[ModelVersionInfo]:
    """Every version of ``name`` (or of every registered model), sorted by name then version.

    Raises:
        ServeError: ``name`` is not registered, or the registry fails.

    Example:
        >>> [(v.version, v.aliases) for v in list_versions("shapes")]
        [('1', ('champion',)), ('2', ('challenger',))]
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        models = [_registered_model(client, name, uri)] if name else _pages(client.search_registered_models)
        infos = []
        for rm in models:
            infos += [_info(mv, rm.aliases) for mv in _versions(client, rm.name)]
    return sorted(infos, key=lambda v: (v.name, int(v.version)))


def set_alias(name: str, version: int | str, alias: str, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` at ``version`` of ``name`` (moving it off the version that had it).

    Any alias MLflow accepts works here; the CLI offers ``champion`` and ``challenger``.

    Raises:
        ServeError: unknown model or version, an alias MLflow refuses, or the registry fails.

    Example:
        >>> set_alias("shapes", 2, "champion")
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        _model_version(client, name, str(version), uri)
        try:
            client.set_registered_model_alias(name, alias, str(version))
        except _mlflow_error() as exc:
            raise ServeError(
                f"Cannot set alias '{alias}' on {name} version {version}: {exc.message} Use letters, digits, "
                f"'_' and '-' (not 'latest' or 'v<N>'), e.g. champion or challenger."
            ) from None


def current_version(name: str, alias: str, *, tracking_uri: str | None = None) -> str:
    """The version ``alias`` points at now: one registry query, for polling.

    Raises:
        ServeError: unknown model or alias, or the registry fails.

    Example:
        >>> current_version("shapes", "champion")
        '2'
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        return str(_by_alias(_client(uri), name, alias, uri).version)


def resolve_model_uri(
    uri: str, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> ResolvedModel:
    """Resolve ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to a local bundle folder.

    The version is downloaded to ``cache_dir/NAME/VERSION`` (default :func:`default_cache_dir`) through a
    temporary folder beside it and a rename, so a concurrent download never leaves a half-written bundle.
    A cached copy is reused when its weights match the SHA-256 the version was registered with.

    Args:
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        tracking_uri: the registry (see :func:`registry_uri`).
        cache_dir: where downloaded versions are kept.

    Returns:
        The resolved version; ``path`` is ready for ``load_bundle`` / ``load_predictor``.

    Raises:
        ServeError: a malformed URI, an unknown model, version or alias, or the registry fails.
        BundleError: the version's artifacts are not a valid torchkiln bundle.

    Example:
        >>> load_predictor(resolve_model_uri("models:/shapes@champion").path)
    """
    m = _URI.fullmatch(uri.strip())
    if m is None:
        raise ServeError(
            f"'{uri}' is not a registry model URI. Expected models:/NAME@ALIAS "
            f"(e.g. models:/shapes@champion) or models:/NAME/VERSION (e.g. models:/shapes/3). "
            f"See the names, versions and aliases with: kiln registry list"
        )
    name, alias = m["name"], m["alias"]
    reg = registry_uri(tracking_uri)
    with _registry_errors(reg):
        client = _client(reg)
        mv = _by_alias(client, name, alias, reg) if alias else _model_version(client, name, m["version"], reg)
        version = str(mv.version)
        final = Path(cache_dir or default_cache_dir()) / _safe(name) / version
        sha = mv.tags.get(TAG_SHA)
        if _bundle_problem(final, sha) is not None:
            _download(mv, final, sha, reg)
    return ResolvedModel(uri=uri, name=name, version=version, alias=alias, path=final)


def _client(uri: str) -> MlflowClient:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ServeError(
            "The model registry needs MLflow, which is not installed. Run: pip install 'torchkiln[serve]'"
        ) from None
    # Creating a SQLite store logs alembic migrations at INFO; warnings and errors still show.
    for logger in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


@contextlib.contextmanager
def _registry_errors(uri: str) -> Iterator[None]:
    """Turn an MLflow failure not handled more precisely into a ServeError that names the registry."""
    try:
        yield
    except KilnError:
        raise
    except _mlflow_error() as exc:
        raise ServeError(
            f"The registry at {uri} failed: {exc.message} Check the URI (--tracking-uri, "
            f"MLFLOW_TRACKING_URI or --runs-dir) and that the registry is reachable."
        ) from exc


def _pages(search: Any, **kwargs: Any) -> list[Any]:
    items, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        items += page
        token = page.token
        if not token:
            return items


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    where = None if "'" in name else f"name = '{name}'"  # a quote would break the filter: scan them all
    return [mv for mv in _pages(client.search_model_versions, filter_string=where) if mv.name == name]


def _experiment_id(client: MlflowClient, uri: str) -> str:
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=mlflow_artifact_root(uri))


def _registered_model(client: MlflowClient, name: str, uri: str) -> Any:
    try:
        return client.get_registered_model(name)
    except _mlflow_error():
        names = sorted(rm.name for rm in _pages(client.search_registered_models))
        raise ServeError(
            f"No registered model '{name}' in the registry at {uri}. Registered: "
            f"{', '.join(names) or 'none'}. Register one with: {_REGISTER.format(name)}"
        ) from None


def _model_version(client: MlflowClient, name: str, version: str, uri: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except _mlflow_error():
        _registered_model(client, name, uri)  # an unknown model is the better error
        versions = sorted(int(mv.version) for mv in _versions(client, name))
        raise ServeError(
            f"Model '{name}' has no version {version} in the registry at {uri}. Versions: "
            f"{', '.join(map(str, versions)) or 'none'}. See them with: kiln registry list {name}"
        ) from None


def _by_alias(client: MlflowClient, name: str, alias: str, uri: str) -> ModelVersion:
    try:
        return client.get_model_version_by_alias(name, alias)
    except _mlflow_error():
        aliases = _registered_model(client, name, uri).aliases
        have = ", ".join(f"{a} -> version {v}" for a, v in sorted(aliases.items()))
        raise ServeError(
            f"Model '{name}' has no alias '{alias}' in the registry at {uri}. Aliases: {have or 'none'}. "
            f"Set one with: kiln registry alias {name} VERSION {alias}"
        ) from None


def _info(mv: ModelVersion, aliases: dict[str, Any]) -> ModelVersionInfo:
    tags = mv.tags or {}
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
        task=tags.get(TAG_TASK, "?"),
        runtime=tags.get(TAG_RUNTIME, "?"),
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC),
        source=tags.get(TAG_SOURCE, "?"),
        artifact_uri=mv.source,
        run_id=mv.run_id,
        tags=dict(tags),
    )


def _safe(name: str) -> str:
    """``name`` as one folder name: no separators, no '.' or '..'."""
    return quote(name, safe="").replace(".", "%2E")


def _bundle_problem(path: Path, sha: str | None) -> str | None:
    """Why ``path`` is not a usable copy of the version registered with weights ``sha``; None if it is."""
    try:
        meta = _read_meta(path)
    except (BundleError, OSError, ValueError) as exc:
        return str(exc)
    if sha is not None and meta.get("weights_sha256") != sha:
        return f"bundle.json gives weights SHA-256 {meta.get('weights_sha256')}, the registry {sha}"
    model_file = path / RUNTIMES[meta.get("runtime", "torch")]
    if sha256_file(model_file) != meta.get("weights_sha256"):
        return f"{model_file.name} does not match the SHA-256 in bundle.json"
    return None


def _download(mv: ModelVersion, final: Path, sha: str | None, uri: str) -> None:
    import mlflow.artifacts

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}.download-", dir=final.parent))
    try:
        # The version's source, not models:/NAME/VERSION: MLflow resolves those with the global registry.
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp), tracking_uri=uri)
        )
        problem = _bundle_problem(local, sha)
        if problem is not None:
            raise BundleError(
                f"Version {mv.version} of model '{mv.name}' in the registry at {uri} is not a valid "
                f"torchkiln bundle: {problem}. Register a bundle written by kiln train or kiln export: "
                f"{_REGISTER.format(mv.name)}"
            )
        local.chmod(0o755)  # mkdtemp makes it private; servers running as other users must read it
        with contextlib.suppress(OSError):
            local.rename(final)  # atomic; refused when a non-empty folder is there already
        if local.exists() and _bundle_problem(final, sha) is not None:  # a broken copy, not a concurrent one
            stale = final.with_name(f".{mv.version}.stale-{uuid.uuid4().hex}")
            with contextlib.suppress(FileNotFoundError):
                final.rename(stale)
            local.rename(final)
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TAG_PREVIOUS = "torchkiln.previous_champion"  # on a promoted version: the champion it replaced
TAG_ROLLED_BACK = "torchkiln.rolled_back"  # on a version the champion alias was moved off by a rollback
RETRAIN_EXPERIMENT = "torchkiln-retrain"


@dataclass(frozen=True)
class Rollback:
    """``kiln registry rollback``: the champion moved from ``from_version`` back to ``to_version``."""

    name: str
    from_version: str
    to_version: str


def promote(name: str, version: int | str, *, tracking_uri: str | None = None) -> str | None:
    """Point ``champion`` at ``version``, recording on it the version that was champion before.

    Returns:
        The previous champion's version, or None when there was none.

    Raises:
        ServeError: unknown model or version, or the registry fails.

    Example:
        >>> promote("shapes", 3)
        '2'
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        _model_version(client, name, str(version), uri)
        aliases = _registered_model(client, name, uri).aliases
        previous = aliases.get("champion")
        if previous is not None and str(previous) != str(version):
            client.set_model_version_tag(name, str(version), TAG_PREVIOUS, str(previous))
        client.set_registered_model_alias(name, "champion", str(version))
    return None if previous is None else str(previous)


def rollback(name: str, *, tracking_uri: str | None = None) -> Rollback:
    """Point ``champion`` back at the version it replaced (the ``torchkiln.previous_champion`` tag that
    :func:`promote` left on the current champion).

    Raises:
        ServeError: no champion, or the champion records no previous one (it was set by hand, or it is the
            first); the message says how to set one by hand.

    Example:
        >>> rollback("shapes")
        Rollback(name='shapes', from_version='3', to_version='2')
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        current = _by_alias(client, name, "champion", uri)
        previous = (current.tags or {}).get(TAG_PREVIOUS)
        if not previous:
            raise ServeError(
                f"Cannot roll back '{name}': its champion, version {current.version}, records no previous "
                f"champion (it was not promoted by kiln retrain or kiln registry promote). Point the alias "
                f"by hand: kiln registry alias {name} VERSION champion"
            )
        _model_version(client, name, previous, uri)
        client.set_registered_model_alias(name, "champion", previous)
        client.set_model_version_tag(name, str(current.version), TAG_ROLLED_BACK, "true")
    return Rollback(name, str(current.version), str(previous))


def delete_alias(name: str, alias: str, *, tracking_uri: str | None = None) -> None:
    """Remove ``alias`` from ``name`` (nothing happens when it is not set).

    Raises:
        ServeError: unknown model, or the registry fails.
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        if alias in _registered_model(client, name, uri).aliases:
            client.delete_registered_model_alias(name, alias)


def log_decision(
    name: str,
    record: Path,
    *,
    params: dict[str, Any],
    tags: dict[str, str],
    version: str | None = None,
    train_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    """Log a ``kiln retrain`` decision record to a run of the ``torchkiln-retrain`` experiment and link it.

    The run gets ``params`` and ``tags`` (the lineage) and ``record`` as an artifact. When ``version`` is
    given, the model version and the run it was registered from get the same tags plus
    ``torchkiln.decision`` (the record's artifact URI); so does the challenger's training run
    (``train_run_id``), when it was tracked in this store.

    Returns:
        The MLflow run id of the decision.

    Raises:
        ServeError: the registry fails.
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(RETRAIN_EXPERIMENT)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else client.create_experiment(RETRAIN_EXPERIMENT, artifact_location=mlflow_artifact_root(uri))
        )
        run = client.create_run(exp_id, run_name=f"retrain-{name}", tags={"torchkiln.model": name, **tags})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, str(value)[:500])
        client.log_artifact(run.info.run_id, str(record))
        client.set_terminated(run.info.run_id)
        link = {**tags, "torchkiln.decision": f"{run.info.artifact_uri}/{record.name}"}
        if version is not None:
            mv = client.get_model_version(name, version)
            for key, value in link.items():
                client.set_model_version_tag(name, version, key, value)
                if mv.run_id:
                    client.set_tag(mv.run_id, key, value)
        if train_run_id:
            with contextlib.suppress(Exception):  # a training run in another store: the version has it
                for key, value in link.items():
                    client.set_tag(train_run_id, key, value)
    return run.info.run_id


def list_decisions(name: str, *, tracking_uri: str | None = None) -> list[str]:
    """The artifact URIs of the ``decision.json`` of every ``kiln retrain`` of ``name``, newest first
    (the runs :func:`log_decision` made; none when no retrain ran).

    Raises:
        ServeError: the registry fails.

    Example:
        >>> list_decisions("shapes")
        ['file:///home/me/project/runs/mlartifacts/9f.../artifacts/decision.json']
    """
    uri = registry_uri(tracking_uri)
    with _registry_errors(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(RETRAIN_EXPERIMENT)
        if exp is None:
            return []
        where = None if "'" in name else f"tags.`torchkiln.model` = '{name}'"
        runs = _pages(client.search_runs, experiment_ids=[exp.experiment_id], filter_string=where or "")
    runs = [r for r in runs if r.data.tags.get("torchkiln.model") == name]
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    return [f"{r.info.artifact_uri}/decision.json" for r in runs]
