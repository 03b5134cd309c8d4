"""Where a study lives: SQLite for one process, a journal file for several on one machine, any other
SQLAlchemy URL (PostgreSQL, MySQL) for several machines.

Optuna's SQLite storage is not made for parallel writers (its transactions lock the whole file and
time out under contention), so several workers on one SQLite file are refused, not risked. A journal
file is an append-only log that processes share through a file lock. An RDB storage gets a heartbeat:
a trial whose process stopped beating for ``GRACE_S`` seconds is failed by the next worker that starts a
trial, and queued again with the same parameters, at most ``MAX_RETRY`` times. Optuna's journal storage
has no heartbeat, so for a journal file (and SQLite) the lead process does the same for trials of
workers it sees have died (:func:`recover_orphans`).
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from torchkiln.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna

HEARTBEAT_S = 30  # how often a running trial of an RDB storage says it is alive
GRACE_S = 120  # silent for this long: its process is gone, and the trial is failed and retried
MAX_RETRY = 2  # a trial whose process died is run again at most this many times
HOST = socket.gethostname()


STORAGE_ENV = "KILN_TUNE_STORAGE"  # the storage URL as worker processes get it: never written to a file


def redacted(storage: str) -> str:
    """``storage`` with its password (``postgresql://user:PASSWORD@host/db``) shown as ``***``, for
    messages, files and MLflow.

    Example:
        >>> redacted("postgresql://kiln:s3cret@db.internal/studies")
        'postgresql://kiln:***@db.internal/studies'
    """
    return re.sub(r"^([\w+.-]+://[^:/@]+):[^@]*@", r"\1:***@", storage)


def is_url(storage: str) -> bool:
    """An SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``); anything else is a journal file path."""
    return "://" in storage


def default_storage(tune_dir: Path, study: str, *, workers: int) -> str:
    """The study's existing storage under ``tune_dir`` (so a resume finds it), else a new one: a SQLite
    file for one worker, a journal file for several."""
    journal, db = tune_dir / f"{study}.journal", tune_dir / f"{study}.db"
    if journal.exists() or (workers > 1 and not db.exists()):
        return str(journal)
    return f"sqlite:///{db}"


def check_storage(storage: str, *, workers: int) -> None:
    """Refuse several workers on one SQLite file, before anything starts.

    Raises:
        ConfigError: says why, and what to use instead.
    """
    if workers > 1 and storage.startswith("sqlite"):
        raise ConfigError(
            f"--workers {workers} with the SQLite storage '{storage}': Optuna's SQLite storage does not "
            f"take parallel writers (the workers would fail with 'database is locked'). Use --workers 1, a "
            f"journal file (--storage PATH.journal, the default for several workers on one machine; a "
            f"study begun in SQLite stays there, so give this one another --study name), or a database "
            f"server for several machines (--storage postgresql://USER:PASSWORD@HOST/DB)."
        )


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """The Optuna storage ``storage`` names (see the module docstring for what each one does).

    Raises:
        ConfigError: the URL cannot be opened (no driver, no server), with what to check.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if not is_url(storage):
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # the heartbeat and its retry callback are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                engine_kwargs={"pool_pre_ping": True} if not storage.startswith("sqlite") else None,
            )
    except (ImportError, ModuleNotFoundError) as exc:
        raise ConfigError(
            f"The storage '{redacted(storage)}' needs a database driver that is not installed ({exc}). For "
            f"PostgreSQL: pip install psycopg2-binary."
        ) from None
    except Exception as exc:  # SQLAlchemy's OperationalError and kin: no server, bad password, no database
        raise ConfigError(
            f"The study storage '{redacted(storage)}' could not be opened: {str(exc).splitlines()[0][:300]}. "
            f"Check "
            f"that the server is up and the database exists, or use a journal file (--storage PATH.journal)."
        ) from None


def mark_worker(trial: optuna.Trial) -> None:
    """Record which process runs ``trial``, so that :func:`recover_orphans` can tell when it died."""
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def recover_orphans(study: optuna.Study) -> list[int]:
    """Fail the running trials of this machine whose process is gone, and queue each again (same
    parameters, at most ``MAX_RETRY`` times), as the heartbeat does for an RDB storage.

    Returns:
        The numbers of the trials failed.
    """
    import optuna
    from optuna.trial import TrialState

    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != HOST or not isinstance(pid, int) or _alive(pid):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        failed.append(t.number)
        history = [*t.system_attrs.get("retry_history", []), t.number]
        if len(history) > MAX_RETRY:
            continue
        study.add_trial(
            optuna.create_trial(
                state=TrialState.WAITING,
                params=t.params,
                distributions=t.distributions,
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )
    return failed
