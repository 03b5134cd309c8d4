"""What a study leaves in ``<runs_dir>/tune/<study>/``: ``best.yaml`` (a config ``kiln train`` takes),
``trials.csv``, ``history.png`` (each trial's value and the running best) and ``importance.png``.

The plots are drawn with matplotlib's Agg backend: no display, no network.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from torchkiln.core.config import TuneConfig
from torchkiln.core.io import atomic_write_text
from torchkiln.tune.space import apply_params, config_value, trial_config, value_text

if TYPE_CHECKING:
    import optuna

notes = logging.getLogger("torchkiln.tune")


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table, the CSV and the plots show it."""

    number: int
    state: str  # complete, pruned, fail, running, waiting
    value: float | None  # complete: the objective; pruned: its last reported value
    epochs: int  # epochs reported
    params: dict[str, Any]  # config values (a choice of lists as the list)
    seconds: float | None
    run_dir: str
    retry_of: int | None


def trial_rows(study: optuna.Study, tune: TuneConfig) -> list[TrialRow]:
    """The study's trials, in order, without the surplus ones (see ``study.Objective``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        reported = list(t.intermediate_values.values())
        value = t.value if t.value is not None else (reported[-1] if reported else None)
        spaces = tune.params
        params = {k: config_value(spaces[k], v) if k in spaces else v for k, v in t.params.items()}
        seconds = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            TrialRow(
                t.number,
                t.state.name.lower(),
                value,
                len(reported),
                params,
                seconds,
                str(t.user_attrs.get("run_dir", "")),
                t.system_attrs.get("failed_trial"),
            )
        )
    return rows


def write_csv(rows: Sequence[TrialRow], keys: Sequence[str], path: Path) -> Path:
    header = ["trial", "state", "value", "epochs", *keys, "seconds", "run_dir", "retry_of"]
    lines = [header]
    for r in rows:
        params = [value_text(r.params[k]) if k in r.params else "" for k in keys]
        seconds = f"{r.seconds:.1f}" if r.seconds is not None else ""
        value = "" if r.value is None else repr(r.value)
        lines.append(
            [
                str(r.number),
                r.state,
                value,
                str(r.epochs),
                *params,
                seconds,
                r.run_dir,
                "" if r.retry_of is None else str(r.retry_of),
            ]
        )
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(lines)
    return path


def write_best_config(
    raw: Mapping[str, Any], tune: TuneConfig, best: optuna.trial.FrozenTrial, path: Path, *, header: str
) -> Path:
    """The base config with the best trial's values, without the tune section; checked by the config
    loader before it is written, so ``kiln train best.yaml`` takes it."""
    values = {k: config_value(tune.params[k], v) for k, v in best.params.items() if k in tune.params}
    best_raw = apply_params(raw, values)
    trial_config(raw, values)  # raises ConfigError if it would not load
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(best_raw, sort_keys=False)
    atomic_write_text(path, text)
    return path


def plot_history(rows: Sequence[TrialRow], *, metric: str, maximize: bool, path: Path) -> Path:
    """Each complete trial's value, the running best as a step line, pruned trials as crosses at their
    last reported value (failed trials have none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    done = [r for r in rows if r.state == "complete" and r.value is not None and math.isfinite(r.value)]
    pruned = [r for r in rows if r.state == "pruned" and r.value is not None and math.isfinite(r.value)]
    ax.scatter(
        [r.number for r in done], [r.value for r in done], color="tab:blue", label="complete", zorder=3
    )
    if pruned:
        ax.scatter(
            [r.number for r in pruned],
            [r.value for r in pruned],
            color="tab:red",
            marker="x",
            label="pruned (last epoch reported)",
            zorder=3,
        )
    if done:
        best, xs, ys = None, [], []
        for r in sorted(done, key=lambda r: r.number):
            best = r.value if best is None else (max if maximize else min)(best, r.value)
            xs.append(r.number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, not 2.5
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial ({'higher' if maximize else 'lower'} is better)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_importance(study: optuna.Study, path: Path) -> Path | None:
    """Parameter importances (fANOVA over the complete trials; PED-ANOVA without scikit-learn); None, with
    a note, when the study has too few complete trials or too little spread in them to tell."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        notes.info(
            "importance.png is not drawn: it needs 2 complete trials; the study has %d.", len(complete)
        )
        return None
    method = "fANOVA, share of the objective's variance"
    try:
        try:
            importances = optuna.importance.get_param_importances(study)
        except ImportError:  # fANOVA's forest is scikit-learn's (torchkiln[datasets]); PED-ANOVA needs none
            method = "PED-ANOVA: how far the best trials' values stand apart; scikit-learn gives fANOVA"
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as exc:  # e.g. every complete trial has the same value
        notes.info("importance.png is not drawn: %s", str(exc).splitlines()[0][:200])
        return None
    if not importances:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]  # least important at the bottom
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(names)), dpi=110)
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance ({method})")
    ax.set_title(f"What mattered, over {len(complete)} complete trials")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
