"""``kiln tune``'s lead process: check everything, open the study, run its workers, write the outputs.

With one worker the trials run in this process; with K, K worker processes (this Python, running
:mod:`torchkiln.tune.worker`) share the storage, and this process waits for them. Each worker's
training output goes to ``<runs_dir>/tune/<study>/worker-<i>.log``; its one line per trial to stdout.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torchkiln.core.config import RunConfig, TuneConfig
from torchkiln.core.errors import ConfigError, TuneError
from torchkiln.engine.tracking import PARENT_RUN_ENV
from torchkiln.tasks.base import load_config
from torchkiln.tune.mlflow_runs import finish_parent_run, parent_run_env, start_parent_run
from torchkiln.tune.report import (
    TrialRow,
    plot_history,
    plot_importance,
    trial_rows,
    write_best_config,
    write_csv,
)
from torchkiln.tune.space import base_raw, check_space
from torchkiln.tune.storage import (
    MAX_RETRY,
    STORAGE_ENV,
    check_storage,
    default_storage,
    open_storage,
    recover_orphans,
    redacted,
)
from torchkiln.tune.study import StudySpec, run_worker

if TYPE_CHECKING:
    import optuna

notes = logging.getLogger("torchkiln.tune")


@dataclass(frozen=True)
class TuneResult:
    """What a study left: its trials, its best, and where its outputs are."""

    study: str
    storage: str
    metric: str
    direction: str
    out_dir: Path
    rows: list[TrialRow]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, object]
    best_config: Path | None  # best.yaml; None until a trial completes
    plots: list[Path]

    def count(self, state: str) -> int:
        return sum(1 for r in self.rows if r.state == state)


def tune(
    cfg: RunConfig | str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    workers: int = 1,
    timeout: float | None = None,
    study: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
) -> TuneResult:
    """Search the settings of ``cfg``'s ``tune`` section with Optuna; each trial is a normal training run.

    Args:
        cfg: a config with a ``tune`` section, or its YAML path.
        trials: the study's trial count (a resumed study runs only the ones it lacks); default tune.trials.
        storage: an SQLAlchemy URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file path;
            default ``<runs_dir>/tune/<study>.db``, or ``.journal`` with several workers.
        workers: worker processes sharing the storage (1: the trials run in this process).
        timeout: seconds after which no trial starts; default tune.timeout (none).
        study: the study's name; an existing one is resumed. Default: the run name.
        overrides: ``key=value`` settings applied to the config file first, as ``--set``.

    Returns:
        The :class:`TuneResult`; ``best_config`` is a config ``kiln train`` takes.

    Raises:
        ConfigError: no tune section, a tuned key or range the config refuses, a bad storage choice; all
            before any trial runs.
        TuneError: a worker process stopped with an error.

    Example:
        >>> result = tune("examples/digits-tune.yaml", workers=2)
        >>> result.best_value, result.best_config
        (0.9444444444444444, PosixPath('/home/me/project/runs/tune/digits-cnn/best.yaml'))
    """
    cfg = cfg if isinstance(cfg, RunConfig) else load_config(cfg, overrides)
    t, name = _checked(cfg, study, workers=workers)
    tune_dir = Path(cfg.runs_dir).resolve() / "tune"
    storage = storage or default_storage(tune_dir, name, workers=workers)
    check_storage(storage, workers=workers)
    raw = base_raw(cfg)
    check_space(raw, t.params)
    metric, direction = t.objective(cfg.train)
    timeout = timeout if timeout is not None else t.timeout
    out_dir = tune_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna_study = _open_study(storage, name, direction=direction, metric=metric)
    recover_orphans(optuna_study)  # trials left running by a tune that was killed
    parent = None
    if cfg.tracking.mlflow:
        existing = optuna_study.user_attrs.get("mlflow_parent_run_id")
        parent = start_parent_run(cfg, name, existing=existing, params=_study_params(t, storage, metric))
        optuna_study.set_user_attr("mlflow_parent_run_id", parent)
    spec = StudySpec(
        raw=raw,
        tune=t.model_dump(mode="json"),
        storage=storage,
        study=name,
        trials=trials or t.trials,
        deadline=time.time() + timeout if timeout else None,
        seed=cfg.seed,
        metric=metric,
        direction=direction,
        parent_run_id=parent,
    )
    result, failures = None, ["interrupted"]
    try:
        failures = _run_rounds(spec, workers, out_dir, optuna_study)
        result = _outputs(optuna_study, spec, t, out_dir)
    finally:
        if parent is not None:
            _close_parent(cfg, parent, result, ok=result is not None and not failures)
    if failures:
        raise TuneError("\n".join(failures))
    return result


def _checked(cfg: RunConfig, study: str | None, *, workers: int) -> tuple[TuneConfig, str]:
    """The tune section and the study's name, or a ConfigError that says what to fix."""
    if cfg.tune is None:
        raise ConfigError(
            "The config has no tune section, so there is nothing to search. Add one, e.g.\n"
            "  tune:\n    params:\n      train.optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}\n"
            "docs/tuning.md lists every option."
        )
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}.")
    name = study or cfg.run_name
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(
            f"The study name '{name}' is not a file name. Use letters, digits, '-', '_' and '.'."
        )
    return cfg.tune, name


def _open_study(storage: str, name: str, *, direction: str, metric: str) -> optuna.Study:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=open_storage(storage), direction=direction, load_if_exists=True
    )
    if study.direction.name.lower() != direction or study.user_attrs.get("metric", metric) != metric:
        was = study.user_attrs.get("metric", "?")
        raise ConfigError(
            f"The study '{name}' in {redacted(storage)} exists and optimizes {was} "
            f"({study.direction.name.lower()}); this config asks for {metric} ({direction}). Give this "
            f"search another --study name, or set tune.metric and tune.direction as they were."
        )
    study.set_user_attr("metric", metric)
    return study


def _study_params(t: TuneConfig, storage: str, metric: str) -> dict[str, object]:
    return {
        "metric": metric,
        "sampler": t.sampler.name,
        "pruner": t.pruner.name,
        "storage": redacted(storage),
        **{f"space.{k}": v.model_dump(exclude_defaults=True) for k, v in t.params.items()},
    }


def _run_rounds(spec: StudySpec, workers: int, out_dir: Path, study: optuna.Study) -> list[str]:
    """Run the workers to the end. A worker killed in a trial (a signal: out of memory, kill) leaves it
    running; it is failed and queued again, and the workers run again for it (at most ``MAX_RETRY`` more
    rounds). Returns the messages of workers that stopped on an error, which would repeat."""
    for _ in range(MAX_RETRY + 1):
        stopped = _run_workers(spec, workers, out_dir)
        for _code, message in (s for s in stopped if s[0] < 0):
            notes.warning("%s; its trial is run again", message)
        errors = [message for code, message in stopped if code > 0]
        if errors or not recover_orphans(study):
            return errors
    return []


def _run_workers(spec: StudySpec, workers: int, out_dir: Path) -> list[tuple[int, str]]:
    """Run the study's workers until they stop; (exit code, message) of each that stopped abnormally."""
    if workers == 1:
        with parent_run_env(spec.parent_run_id):
            run_worker(spec, worker=0)
        return []
    # The workers read the study from study.json, and the storage (which may hold a password) from
    # their environment.
    spec_file = dataclasses.replace(spec, storage=redacted(spec.storage)).write(out_dir / "study.json")
    env = {**os.environ, STORAGE_ENV: spec.storage}
    env |= {PARENT_RUN_ENV: spec.parent_run_id} if spec.parent_run_id else {}
    # K trainings at once: each gets its share of the cores, or their threads would contend for all of them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    procs, logs = [], []
    try:
        for i in range(workers):
            log = out_dir / f"worker-{i}.log"
            logs.append(log)
            # The child keeps its own handle; a retry round appends to the log of the round before.
            with log.open("a", encoding="utf-8") as f:
                cmd = [sys.executable, "-m", "torchkiln.tune.worker", str(spec_file), str(i)]
                procs.append(subprocess.Popen(cmd, stdout=None, stderr=f, env=env))
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:  # interrupted: stop the workers too, never leave them training
            if p.poll() is None:
                p.terminate()
                p.wait()
    return [
        (code, f"worker {i} stopped with exit code {code}: {_last_line(logs[i])} (its log: {logs[i]})")
        for i, code in enumerate(codes)
        if code != 0
    ]


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _outputs(study: optuna.Study, spec: StudySpec, t: TuneConfig, out_dir: Path) -> TuneResult:
    from optuna.trial import TrialState

    rows = trial_rows(study, t)
    maximize = spec.direction == "maximize"
    write_csv(rows, list(t.params), out_dir / "trials.csv")
    plots = [plot_history(rows, metric=spec.metric, maximize=maximize, path=out_dir / "history.png")]
    importance = plot_importance(study, out_dir / "importance.png")
    plots += [importance] if importance is not None else []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    best_config = None
    best_params: dict[str, object] = {}
    if best is not None:
        header = (
            f"The best of study '{spec.study}' ({redacted(spec.storage)}): trial {best.number}, "
            f"{spec.metric} {best.value:.6g}.\nTrain it: kiln train {out_dir / 'best.yaml'}"
        )
        best_config = write_best_config(spec.raw, t, best, out_dir / "best.yaml", header=header)
        best_params = next(r.params for r in rows if r.number == best.number)
    return TuneResult(
        study=spec.study,
        storage=redacted(spec.storage),
        metric=spec.metric,
        direction=spec.direction,
        out_dir=out_dir,
        rows=rows,
        best_trial=best.number if best is not None else None,
        best_value=best.value if best is not None else None,
        best_params=best_params,
        best_config=best_config,
        plots=plots,
    )


def _close_parent(cfg: RunConfig, run_id: str, result: TuneResult | None, *, ok: bool) -> None:
    """End the study's MLflow run with its figures and output files (none when it was interrupted)."""
    metrics: dict[str, float] = {}
    files: list[Path] = []
    if result is not None:
        metrics = {f"trials_{s}": float(result.count(s)) for s in ("complete", "pruned", "fail")}
        if result.best_value is not None and math.isfinite(result.best_value):
            metrics["best_" + result.metric.replace("/", "_")] = result.best_value
        files = [p for p in (result.best_config, *result.plots, result.out_dir / "trials.csv") if p]
    finish_parent_run(cfg, run_id, metrics=metrics, files=files, status="FINISHED" if ok else "FAILED")
