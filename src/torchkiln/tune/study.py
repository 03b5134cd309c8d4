"""A study's workers: the sampler, the pruner, the objective (one ``kiln train`` run per trial) and the
loop each worker process runs until the study has its trials.

Every worker, in the lead process or in a process of its own, runs :func:`run_worker` on the same
:class:`StudySpec` and the same storage; they share nothing else. A worker starts a trial only while the
study has fewer than ``trials`` that count (complete, pruned, running or queued, and failed ones unless a
retry took their place), so K workers stop together at the shared count.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchkiln.core.config import TuneConfig
from torchkiln.core.errors import ConfigError, KilnError, did_you_mean
from torchkiln.tasks.training import train_new_run
from torchkiln.tune.mlflow_runs import tag_trial_run
from torchkiln.tune.space import suggest, trial_config
from torchkiln.tune.storage import mark_worker, open_storage

if TYPE_CHECKING:
    import optuna

    from torchkiln.engine.trainer import TrainState


class TrialFailed(Exception):
    """A trial that failed on its own (a value combination the config refuses, an out-of-memory error):
    recorded as FAIL, and the study goes on. A :class:`KilnError` during training stops the worker
    instead: a data or config problem (an unknown ``tune.metric``) would fail every trial the same way."""


@dataclass(frozen=True)
class StudySpec:
    """What every worker of one study needs; worker processes read it as JSON."""

    raw: dict[str, Any]  # the base config as the user wrote it (with --set), without its tune section
    tune: dict[str, Any]  # the tune section, resolved
    storage: str
    study: str
    trials: int  # the study ends with this many trials that count (see trials_counted)
    deadline: float | None  # time.time() after which no worker starts a trial
    seed: int
    metric: str
    direction: str
    parent_run_id: str | None = None

    @property
    def tune_config(self) -> TuneConfig:
        return TuneConfig.model_validate(self.tune)

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> StudySpec:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def make_sampler(tune: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (``constant_liar``: parallel workers do not all sample next to the same running trial) or
    random search, seeded."""
    import optuna

    if tune.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tune.sampler.startup_trials, constant_liar=True
        )


def make_pruner(tune: TuneConfig, epochs: int | None) -> optuna.pruners.BasePruner:
    """The pruner of ``tune.pruner``; a step is an epoch. ``epochs``: the most a trial trains (hyperband's
    largest budget), None when ``train.epochs`` is itself tuned."""
    import optuna

    p = tune.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_epochs, max_resource=epochs or "auto", reduction_factor=p.reduction_factor
        )
    return optuna.pruners.NopPruner()


def worker_seed(seed: int, worker: int, trials_before: int) -> int:
    """A sampler seed of its own for each worker (the same seed would draw the same random trials in
    every worker) and each resume (or a resumed study would repeat its first draws)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, worker, trials_before]).generate_state(1)[0])


def trials_counted_of(trials: list[Any]) -> int:
    """:func:`trials_counted` of a list of frozen trials."""
    from optuna.trial import TrialState

    kept = [t for t in trials if not t.user_attrs.get("surplus")]
    retried = {n for t in kept for n in t.system_attrs.get("retry_history", [])}
    return sum(1 for t in kept if t.state != TrialState.FAIL or t.number not in retried)


def trials_counted(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: complete, pruned, running and queued ones, and failed ones
    unless they were retried (the retry counts instead); a surplus trial (see :class:`Objective`) never."""
    return trials_counted_of(study.get_trials(deepcopy=False))


class EpochReport:
    """The engine's ``on_epoch`` hook for one trial: reports the metric each epoch, prunes."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.state: TrainState | None = None
        self.last = math.nan

    def __call__(self, state: TrainState, figures: dict[str, float]) -> None:
        import optuna

        self.state = state
        if self.metric not in figures:
            hint = did_you_mean(self.metric, figures)
            raise ConfigError(
                f"tune.metric is '{self.metric}', which this run does not report.{hint} "
                f"It reports: {', '.join(sorted(figures))}. Set tune.metric to one of them."
            )
        self.last = float(figures[self.metric])
        epoch = len(state.history)  # epochs done: 1 after the first
        self.trial.report(self.last, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {self.metric} {self.last:.4g}")

    def value(self) -> float:
        """The metric at the run's best epoch (the one its bundle keeps; train.monitor picks it)."""
        s = self.state
        if s is None or not s.history:
            return math.nan
        epoch = s.best_epoch if 0 <= s.best_epoch < len(s.history) else len(s.history) - 1
        return float(s.history[epoch].get(self.metric, self.last))


class Objective:
    """One trial: sample, build the config as ``--set`` would, train a normal run, return its value."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec, self.tune = spec, spec.tune_config

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        mark_worker(trial)
        self._check_surplus(trial)
        values = {key: suggest(trial, key, space) for key, space in self.tune.params.items()}
        try:
            cfg = trial_config(self.spec.raw, values)
        except ConfigError as exc:  # each value was checked alone; this combination is refused
            raise TrialFailed(str(exc)) from None
        report = EpochReport(trial, self.spec.metric)
        try:
            run_dir = train_new_run(cfg, on_epoch=report)
        except optuna.TrialPruned:
            self._record_run(trial, cfg, report, pruned=True)
            raise
        except KilnError:
            raise
        except Exception as exc:
            self._record_run(trial, cfg, report, pruned=False)
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("run_dir", str(run_dir))
        self._record_run(trial, cfg, report, pruned=False)
        value = report.value()
        if math.isnan(value):
            raise TrialFailed(f"{self.spec.metric} was NaN: the run diverged")
        return value

    def _check_surplus(self, trial: optuna.Trial) -> None:
        # Two workers that check the count at the same moment can both start a trial; the later one
        # (by number) leaves at once, marked, and is left out of the count and the reports.
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number]
        if trials_counted_of(earlier) >= self.spec.trials:
            trial.set_user_attr("surplus", True)
            raise TrialFailed("surplus: the study had its trials when this one started")

    def _record_run(self, trial: optuna.Trial, cfg: Any, report: EpochReport, *, pruned: bool) -> None:
        run_id = report.state.mlflow_run_id if report.state is not None else ""
        if not run_id:
            return
        trial.set_user_attr("mlflow_run_id", run_id)
        run_dir = tag_trial_run(cfg, run_id, study=self.spec.study, trial=trial.number, pruned=pruned)
        if run_dir and "run_dir" not in trial.user_attrs:
            trial.set_user_attr("run_dir", run_dir)


def load(spec: StudySpec, *, worker: int) -> optuna.Study:
    """The study in ``spec.storage``, with this worker's sampler and the pruner."""
    import optuna

    storage = open_storage(spec.storage)
    tune = spec.tune_config
    trials_before = len(optuna.load_study(study_name=spec.study, storage=storage).trials)
    epochs = None if "train.epochs" in tune.params else trial_config(spec.raw, {}).train.epochs
    return optuna.load_study(
        study_name=spec.study,
        storage=storage,
        sampler=make_sampler(tune, worker_seed(spec.seed, worker, trials_before)),
        pruner=make_pruner(tune, epochs),
    )


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial, on stdout (workers in their own processes share it)."""
    if trial.user_attrs.get("surplus"):
        return
    params = "  ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    value = (
        trial.value if trial.value is not None else (list(trial.intermediate_values.values()) or [None])[-1]
    )
    shown = f"{value:.4f}" if isinstance(value, float) else "-"
    epochs = len(trial.intermediate_values)
    print(
        f"trial {trial.number:>3} {trial.state.name.lower():<8} {shown}  epochs {epochs}  {params}",
        flush=True,
    )


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def has_work(study: optuna.Study, trials: int) -> bool:
    """The study lacks trials, or has a queued one (a retry) that nobody runs yet."""
    from optuna.trial import TrialState

    return trials_counted(study) < trials or bool(
        study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    )


def run_worker(spec: StudySpec, *, worker: int = 0) -> int:
    """Run trials while the study has work (:func:`has_work`) and ``spec.deadline`` has not passed.

    Returns:
        How many trials this worker ran.

    Raises:
        KilnError: a config or data problem during a trial (it would fail every trial).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load(spec, worker=worker)
    objective, ran = Objective(spec), 0
    while has_work(study, spec.trials):
        if spec.deadline is not None and time.time() >= spec.deadline:
            break
        study.optimize(
            objective, n_trials=1, catch=(TrialFailed,), callbacks=[trial_line], gc_after_trial=True
        )
        ran += 1
    return ran
