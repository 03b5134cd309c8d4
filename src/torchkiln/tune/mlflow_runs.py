"""A study's MLflow run, and its trials' runs as children of it.

The lead process creates the study's run through the client (never as the active run, which would
clash with the trial runs that the engine's Tracker starts in the same process) and passes its id in
:data:`~torchkiln.engine.tracking.PARENT_RUN_ENV`; the Tracker then tags each trial's run with
``mlflow.parentRunId``. A resumed study goes on in the same run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkiln.engine.tracking import PARENT_RUN_ENV, mlflow_artifact_root, resolve_mlflow_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from torchkiln.core.config import RunConfig

notes = logging.getLogger("torchkiln.tune")


def _client(cfg: RunConfig) -> MlflowClient:
    from mlflow import MlflowClient

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_mlflow_uri(cfg.tracking.mlflow_uri, runs_dir=cfg.runs_dir))


def start_parent_run(cfg: RunConfig, study: str, *, existing: str | None, params: Mapping[str, Any]) -> str:
    """The study's run in the experiment its trials log to (created with the experiment, before any
    worker starts, so that workers never race to create either); ``existing`` is reopened on a resume.

    Returns:
        The run id.
    """
    client = _client(cfg)
    if existing:
        with contextlib.suppress(Exception):  # gone (another store, deleted): start a new one
            if client.get_run(existing).info.lifecycle_stage == "active":
                client.update_run(existing, status="RUNNING")
                return existing
    name = cfg.tracking.experiment or cfg.run_name
    exp = client.get_experiment_by_name(name)
    uri = resolve_mlflow_uri(cfg.tracking.mlflow_uri, runs_dir=cfg.runs_dir)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(name, artifact_location=mlflow_artifact_root(uri))
    )
    run = client.create_run(exp_id, run_name=f"tune-{study}", tags={"kiln.tune.study": study})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    return run.info.run_id


def finish_parent_run(
    cfg: RunConfig, run_id: str, *, metrics: Mapping[str, float], files: list[Path], status: str = "FINISHED"
) -> None:
    """Log the study's figures and output files to its run, and end it."""
    client = _client(cfg)
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for path in files:
        if path.is_file():
            client.log_artifact(run_id, str(path), artifact_path="tune")
    client.set_terminated(run_id, status=status)


def tag_trial_run(cfg: RunConfig, run_id: str, *, study: str, trial: int, pruned: bool) -> str | None:
    """Tag a trial's run with its study and number; a pruned one ends as KILLED, not FAILED (the engine
    ends a run stopped from its hook as FAILED). Best effort: tracking never costs a trial.

    Returns:
        The run's directory (its ``torchkiln.run_dir`` tag), which a pruned trial has no other way to give.
    """
    try:
        client = _client(cfg)
        client.set_tag(run_id, "kiln.tune.study", study)
        client.set_tag(run_id, "kiln.tune.trial", str(trial))
        if pruned:
            client.set_tag(run_id, "kiln.tune.state", "PRUNED")
            client.set_terminated(run_id, status="KILLED")
        return client.get_run(run_id).data.tags.get("torchkiln.run_dir")
    except Exception as exc:
        notes.warning("trial %d: its MLflow run %s was not tagged: %s", trial, run_id, str(exc)[:200])
        return None


@contextlib.contextmanager
def parent_run_env(run_id: str | None) -> Iterator[None]:
    """Trials trained in this process while inside become children of ``run_id`` (None: of nothing)."""
    before = os.environ.get(PARENT_RUN_ENV)
    if run_id:
        os.environ[PARENT_RUN_ENV] = run_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = before
