"""``kiln monitor watch``: the drift check on a schedule, Prometheus gauges, and one alert per incident.

Each check runs :func:`~torchkiln.monitor.report.check`, sets the gauges, feeds every version's verdict to
its :class:`~torchkiln.monitor.alerts.AlertState` (kept in a JSON file, written atomically, so that alerts
are de-duplicated across runs and across ``--once`` invocations from cron), and acts on the events:

- ``alert``: POST the payload (below) to the webhook, and run the ``on_alert`` command with the payload on
  its stdin (an argv list, never a shell: the trigger hook of ``kiln retrain``);
- ``resolved``: POST the payload to the webhook (no command);
- ``suppressed``: log it (an incident inside the cooldown sends nothing).

The webhook POST is retried with exponential backoff (``backoff_s * 2**attempt``) on a network error,
a 5xx or a 429, up to ``attempts`` tries with a timeout each; a failed delivery is logged and never stops
the loop. Payload (JSON)::

    {"event": "alert" | "resolved", "model": "fashion", "version": "3", "shadow": false,
     "verdict": "drift", "time": "2026-12-05T10:00:00+00:00", "items": 500,
     "drifted": ["input/mean/ks", ...], "scores": {"input/mean": 7.2, ...},
     "live_accuracy": {"value": 0.61, "low": 0.55, "high": 0.66, "labelled": 300} | null,
     "report": "/path/report.json" | null, "source": "kiln monitor watch"}
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from torchkiln.core.errors import ConfigError, KilnError
from torchkiln.core.io import atomic_write_text
from torchkiln.monitor.alerts import AlertPolicy, AlertState, Event
from torchkiln.monitor.drift import DriftSettings, Thresholds
from torchkiln.monitor.html import write_report
from torchkiln.monitor.report import MonitorReport, VersionCheck, check

__all__ = ["Gauges", "WatchConfig", "deliver", "load_states", "run_check", "save_states", "watch"]

logger = logging.getLogger(__name__)
SOURCE = "kiln monitor watch"


@dataclass(frozen=True)
class WatchConfig:
    """What one check reads, and where its alerts go (``kiln monitor watch``'s options)."""

    target: str
    log_url: str
    state_path: Path
    window: str = "1000"
    version: str | None = None
    bundles: Sequence[str | Path] = ()
    tracking_uri: str | None = None
    thresholds: Thresholds | None = None
    settings: DriftSettings | None = None
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    webhook: str | None = None
    on_alert: Sequence[str] = ()  # argv of the command run on an alert; empty: none
    out: Path | None = None  # write report.json (and report.html) here on each check
    webhook_timeout_s: float = 10.0
    attempts: int = 5
    backoff_s: float = 1.0
    command_timeout_s: float = 600.0


class Gauges:
    """``kiln_drift_score{model,version,signal}`` and ``kiln_live_accuracy{model,version}`` in a registry of
    their own (not the process's default one), served by :meth:`serve`.

    ``signal`` is a score's name in :func:`~torchkiln.monitor.report.signal_scores`: ``input/mean``,
    ``output/forecast_level`` (a forecaster's), ``prediction``, ``confidence``, ``embedding``...
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.drift_score = Gauge(
            "kiln_drift_score",
            "Drift score of a signal in the last check: 1 is its threshold, higher is more drifted.",
            ["model", "version", "signal"],
            registry=self.registry,
        )
        self.live_accuracy = Gauge(
            "kiln_live_accuracy",
            "Accuracy of the answers that got feedback labels in the window.",
            ["model", "version"],
            registry=self.registry,
        )

    def update(self, report: MonitorReport) -> None:
        """Show this check's values only: versions that left the window disappear."""
        self.drift_score.clear()
        self.live_accuracy.clear()
        for v in report.versions:
            version = f"{v.version} (shadow)" if v.shadow else v.version
            for signal, score in v.scores.items():
                self.drift_score.labels(v.model, version, signal).set(score)
            if v.performance is not None:
                self.live_accuracy.labels(v.model, version).set(v.performance.accuracy.value)

    def serve(self, port: int, host: str = "127.0.0.1") -> tuple[int, Callable[[], None]]:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) in a daemon thread.

        Returns:
            The port it listens on, and a function that stops it.
        """
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return int(server.server_address[1]), stop


def load_states(path: Path) -> dict[str, AlertState]:
    """The alert state of each monitored version (``{}`` when the file does not exist yet).

    Raises:
        ConfigError: the file is not what :func:`save_states` writes (the message says to delete it).
    """
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"The alert state file {path} is not JSON ({exc}); expected what kiln monitor watch writes. "
            f"Fix: delete it to start every version from 'ok'."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"The alert state file {path} is not a JSON object of version -> state. Fix: delete it to start "
            f"every version from 'ok'."
        )
    return {key: AlertState.from_json(json.dumps(value)) for key, value in data.items()}


def save_states(path: Path, states: dict[str, AlertState]) -> None:
    """Write the states atomically (a crash leaves the old file or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {key: json.loads(state.to_json()) for key, state in sorted(states.items())}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def state_key(v: VersionCheck) -> str:
    return f"{v.model}/{v.version}{'/shadow' if v.shadow else ''}"


def payload(event: Event, v: VersionCheck, *, now: float, report_path: Path | None) -> dict[str, Any]:
    """The JSON body of a webhook POST and the ``on_alert`` command's stdin (see the module docstring)."""
    acc = v.performance.accuracy if v.performance is not None else None
    return {
        "event": event,
        "model": v.model,
        "version": v.version,
        "shadow": v.shadow,
        "verdict": v.verdict,
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "items": v.items,
        "drifted": [r.key for r in v.drift.rows if r.drifted],
        "scores": v.scores,
        "live_accuracy": None
        if acc is None
        else {"value": acc.value, "low": acc.low, "high": acc.high, "labelled": acc.total},
        "report": None if report_path is None else str(report_path),
        "source": SOURCE,
    }


def deliver(
    url: str,
    body: dict[str, Any],
    *,
    timeout_s: float = 10.0,
    attempts: int = 5,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST ``body`` as JSON to ``url``; retry a network error, 5xx or 429 with exponential backoff.

    Never raises: a delivery that fails after ``attempts`` tries (or gets another 4xx, which retrying
    cannot fix) is logged and False is returned.

    Example:
        >>> deliver("http://127.0.0.1:9000/hook", {"event": "alert"}, attempts=3, backoff_s=0.5)
        True
    """
    for attempt in range(attempts):
        try:
            response = httpx.post(url, json=body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code != 429:
                logger.error(
                    "Webhook %s refused the %s alert (%s); not retried", url, body.get("event"), problem
                )
                return False
        if attempt + 1 < attempts:
            wait = backoff_s * 2**attempt
            logger.warning("Webhook %s failed (%s); retry %d in %.1f s", url, problem, attempt + 1, wait)
            sleep(wait)
    logger.error("Webhook %s failed %d times; the %s alert is dropped", url, attempts, body.get("event"))
    return False


def run_command(argv: Sequence[str], body: dict[str, Any], *, timeout_s: float) -> int | None:
    """Run ``argv`` (no shell) with ``body`` as JSON on stdin; its exit code, or None if it did not run."""
    try:
        done = subprocess.run(list(argv), input=json.dumps(body), text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.error("The on-alert command %s failed to run: %s", argv[0], exc)
        return None
    if done.returncode:
        logger.error("The on-alert command %s exited with code %d", argv[0], done.returncode)
    return done.returncode


@dataclass(frozen=True)
class CheckResult:
    report: MonitorReport
    events: list[dict[str, Any]]  # the payloads of this check's alert/resolved/suppressed events


def run_check(cfg: WatchConfig, gauges: Gauges | None = None, *, now: float | None = None) -> CheckResult:
    """One check: the report, the gauges, the alert states (loaded and saved), and the events acted on.

    Raises:
        KilnError: the log, a bundle or the state file cannot be read (the loop logs it and goes on).
    """
    now = time.time() if now is None else now
    report = check(cfg.target, log_url=cfg.log_url, window=cfg.window, version=cfg.version,
                   bundles=cfg.bundles, tracking_uri=cfg.tracking_uri, thresholds=cfg.thresholds,
                   settings=cfg.settings)  # fmt: skip
    report_path = write_report(report, cfg.out)[0] if cfg.out is not None else None
    if gauges is not None:
        gauges.update(report)
    states, events = load_states(cfg.state_path), []
    for v in report.versions:
        key = state_key(v)
        states[key], event = states.get(key, AlertState()).update(v.drift.drifted, now=now, policy=cfg.policy)
        if event is not None:
            events.append(payload(event, v, now=now, report_path=report_path))
    save_states(cfg.state_path, states)  # before acting: a crash while sending never sends twice
    for body in events:
        _act(cfg, body)
    return CheckResult(report, events)


def _act(cfg: WatchConfig, body: dict[str, Any]) -> None:
    what = f"{body['model']} version {body['version']}: {body['event']} ({', '.join(body['drifted'])})"
    logger.warning("Drift %s", what)
    if body["event"] == "suppressed":
        return
    if cfg.webhook:
        deliver(
            cfg.webhook, body, timeout_s=cfg.webhook_timeout_s, attempts=cfg.attempts, backoff_s=cfg.backoff_s
        )
    if cfg.on_alert and body["event"] == "alert":
        run_command(cfg.on_alert, body, timeout_s=cfg.command_timeout_s)


def watch(
    cfg: WatchConfig,
    *,
    every_s: float,
    gauges: Gauges | None = None,
    stop: threading.Event | None = None,
    on_check: Callable[[CheckResult | KilnError], None] | None = None,
) -> None:
    """Run :func:`run_check` every ``every_s`` seconds until ``stop`` is set; a failed check is logged and
    the loop goes on (the database may be down for a minute).

    ``on_check`` sees each check's result (or its error): the CLI prints it, tests wait on it.
    """
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            result: CheckResult | KilnError = run_check(cfg, gauges)
        except KilnError as exc:
            logger.error("Monitor check failed: %s", exc)
            result = exc
        if on_check is not None:
            on_check(result)
        stop.wait(every_s)
