"""How the Versions page writes what a version scored and the figures of a ``kiln retrain`` decision record
(:class:`~torchkiln.monitor.decision.DecisionRecord`; docs/monitoring.md, "The decision record")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torchkiln.artifacts.runs import headline
from torchkiln.dashboard.figures import fmt, fmt_p
from torchkiln.dashboard.lineage import VersionView
from torchkiln.monitor.decision import DecisionRecord


@dataclass(frozen=True)
class Group:
    """A titled list of figures of a decision record, as the page shows them."""

    title: str
    rows: list[tuple[str, str]]


def version_metrics(view: VersionView) -> list[str]:
    """What a version scored: on the fresh test set of the retrain that made it, and in its run folder."""
    lines = []
    record = view.decision.record if view.decision else None
    if record is not None and str(record.challenger.get("version")) == view.info.version:
        mine, theirs = record.challenger.get("metrics") or {}, record.champion.get("metrics") or {}
        if "accuracy" in mine:
            lines.append(
                f"fresh test accuracy {fmt(mine['accuracy'])} (champion {record.champion.get('version')}: "
                f"{fmt(theirs.get('accuracy'))}) on {mine.get('items', '?')} items"
            )
    run = view.run
    if run is not None:
        if run.monitor and run.monitored is not None:
            best = "" if run.best_epoch is None else f" (best epoch {run.best_epoch + 1} of {run.epochs})"
            lines.append(f"{run.monitor} {fmt(run.monitored)}{best}")
        for split, numbers in sorted(run.evaluations.items()):
            shown = ", ".join(f"{k} {fmt(numbers[k])}" for k in headline(numbers))
            lines.append(f"{split}: {shown}")
    return lines


def decision_groups(record: DecisionRecord) -> list[Group]:
    """The figures of one record: the offline test, the replay, the shadow and canary phases, the data."""
    test, live = record.test or {}, record.live or {}
    champ, chall = record.champion.get("metrics") or {}, record.challenger.get("metrics") or {}
    groups = [
        Group(
            "Fresh test (McNemar)",
            [
                ("accuracy", f"{fmt(champ.get('accuracy'))} -> {fmt(chall.get('accuracy'))}"),
                ("items", fmt(chall.get("items", record.data.get("test_items")))),
                ("b (champion right only)", fmt(test.get("b"))),
                ("c (challenger right only)", fmt(test.get("c"))),
                (f"p ({test.get('gated_on', 'one-sided')})", fmt_p(test.get("p_value"))),
                ("alpha", fmt(test.get("alpha", record.settings.get("alpha")))),
                ("gain (points)", fmt(_points(test.get("accuracy_gain")), 2)),
            ],
        )
    ]
    if record.replay:
        r = record.replay
        labelled = r.get("accuracy_on_labelled") or {}
        rows = [("inputs", fmt(r.get("inputs"))), ("agreement", fmt(r.get("agreement")))]
        if labelled:
            acc = f"{fmt(labelled.get('champion'))} -> {fmt(labelled.get('challenger'))}"
            rows.append((f"accuracy on {r.get('labelled', '?')} labelled", acc))
        groups.append(Group("Replay of logged traffic", rows))
    if shadow := live.get("shadow"):
        groups.append(
            _phase("Shadow", shadow, ("requests", "shadow_answers", "error_rate", "p99_ms", "agreement"))
        )
    if canary := live.get("canary"):
        keys = ("weight", "requests", "failures", "error_rate", "p99_ms", "champion_p99_ms", "decision")
        groups.append(_phase("Canary", canary, keys))
    if server := _server_steps(live):
        groups.append(Group("On the server", server))
    data = record.data or {}
    groups.append(
        Group(
            "Data",
            [
                ("data SHA-256", str(data.get("data_sha256", "—"))[:16]),
                ("test SHA-256", str(data.get("test_sha256", "—"))[:16]),
                ("sources", ", ".join(map(str, data.get("sources") or [])) or "—"),
            ],
        )
    )
    return groups


def _phase(title: str, figures: dict[str, Any], keys: tuple[str, ...]) -> Group:
    rows = [(k.replace("_", " "), fmt(figures[k])) for k in keys if k in figures]
    if figures.get("reason"):
        rows.append(("reason", str(figures["reason"])))
    return Group(title, rows)


SERVER_STEPS = (
    ("shadow_reload", "challenger into shadow"),
    ("rollback_reload", "rolled back"),
    ("promotion", "promotion"),
)


def _server_steps(live: dict[str, Any]) -> list[tuple[str, str]]:
    """The reloads a retrain made on the server (workers serving / total), and the traffic rule it left."""
    rows = []
    for key, label in SERVER_STEPS:
        step = live.get(key)
        if isinstance(step, dict):
            workers = step.get("workers") or {}
            rows.append((label, f"{workers.get('serving', '?')} of {workers.get('total', '?')} workers"))
    if isinstance(restored := live.get("traffic_restored"), dict):
        shown = [
            f"shadow {'on' if v else 'off'}" if isinstance(v, bool) else f"{k} {v * 100:.0f} %"
            for k, v in restored.items()
        ]
        rows.append(("traffic after", ", ".join(shown)))
    return rows


def _points(gain: Any) -> float | None:
    return gain * 100 if isinstance(gain, int | float) else None
