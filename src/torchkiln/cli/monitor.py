"""`kiln monitor`: thin wrappers over the monitoring functions. ``profile`` builds a bundle's reference."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from torchkiln.core.console import fail, out
from torchkiln.core.errors import ConfigError, KilnError

monitor_app = typer.Typer(
    help="Watch served models: the reference profile live traffic is compared with.", no_args_is_help=True
)


class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


@monitor_app.command("profile")
def profile(
    bundle: Annotated[Path, typer.Argument(metavar="BUNDLE", help="A trained bundle or its run directory.")],
    split: Annotated[Split, typer.Option(help="The held-out split to profile.")] = Split.val,
    overwrite: Annotated[bool, typer.Option(help="Replace the reference the bundle already has.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Build a bundle's reference profile from the data its config names (reference.safetensors).

    A sample of the split as the server sees it: input summaries, predicted classes and confidence (a
    forecast's level and spread), and PCA-reduced penultimate-layer features. Bundles trained before
    reference profiles need it for drift monitoring.
    """
    from torchkiln.tasks.reference import profile_bundle

    try:
        done = profile_bundle(bundle, split=split.value, overwrite=overwrite, device=device)
    except KilnError as exc:
        fail(exc)
    m = done.reference.meta
    emb = m["embedding"]
    out.print(
        f"reference: {m['items']} of the {m['split_items']} items of the {m['split']} split; "
        f"{len(m['summary_columns'])} input statistics, signals {', '.join(m['signals'])}, "
        f"embeddings {emb['features']} -> {emb['dims']} dims "
        f"({emb['explained_variance']:.0%} of the variance)",
        highlight=False,
        soft_wrap=True,
    )
    out.print(str(done.bundle / m["file"]), highlight=False)


Target = Annotated[
    str, typer.Argument(metavar="MODEL|BUNDLE", help="A served model name, or a bundle folder.")
]
LogUrl = Annotated[
    str, typer.Option("--log-url", help="The prediction log's database URL (kiln serve's log_url).")
]
Window = Annotated[
    str, typer.Option(help="The last N inputs of each version (1000), or a span: 30m, 1h, 7d.")
]
Version = Annotated[str | None, typer.Option(help="Only this logged version (with a BUNDLE: its version).")]
BundleOpt = Annotated[
    list[Path] | None,
    typer.Option("--bundle", help="The bundle of a version served from a folder (repeatable)."),
]
TrackingUri = Annotated[
    str | None, typer.Option(help="The registry of versions served from models:/ URIs (default: the store).")
]
ThresholdsOpt = Annotated[
    Path | None, typer.Option("--thresholds", help="Calibrated thresholds (JSON); default: the fixed ones.")
]
Shadow = Annotated[bool, typer.Option(help="Also check shadow answers (in rows of their own).")]


@monitor_app.command("report")
def report(
    target: Target,
    log_url: LogUrl,
    window: Window = "1000",
    version: Version = None,
    bundle: BundleOpt = None,
    tracking_uri: TrackingUri = None,
    thresholds: ThresholdsOpt = None,
    shadow: Shadow = True,
    out_dir: Annotated[Path, typer.Option("--out", help="Where report.json and report.html go.")] = Path(
        "monitor-report"
    ),
) -> None:
    """Drift and live performance of a model's logged traffic, per version: report.json and report.html.

    Each version's window is compared with the reference profile of its bundle (the target, a --bundle,
    or the registry's models:/MODEL/VERSION). A window under 50 inputs gives "not enough data".
    """
    from torchkiln.monitor.html import write_report
    from torchkiln.monitor.report import check

    try:
        done = check(
            target,
            log_url=log_url,
            window=window,
            version=version,
            bundles=bundle or [],
            tracking_uri=tracking_uri,
            shadow=shadow,
            thresholds=_thresholds(thresholds),
        )
        files = write_report(done, out_dir)
    except KilnError as exc:
        fail(exc)
    for line in [*done.notes, *(_line(v) for v in done.versions), *map(str, files)]:
        out.print(line, highlight=False, soft_wrap=True)


def _line(v: Any) -> str:
    """``fashion 3: drift (input/mean 7.21, confidence 2.05) on 500 inputs; live accuracy 0.612``."""
    top = sorted(v.scores.items(), key=lambda kv: -kv[1])[:3]
    scores = f" ({', '.join(f'{k} {s:.2f}' for k, s in top)})" if top else ""
    acc = "" if v.performance is None else f"; live accuracy {v.performance.accuracy.value:.3f}"
    arm = " (shadow)" if v.shadow else ""
    return f"{v.model} {v.version}{arm}: {v.verdict}{scores} on {v.items} inputs{acc}"


def _thresholds(path: Path | None) -> Any:
    from torchkiln.monitor.drift import Thresholds

    if path is None:
        return None
    try:
        return Thresholds.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(
            f"Cannot read the thresholds file {path} ({exc}); expected the JSON that Thresholds.to_dict "
            f"writes. Fix: pass a file from calibrate(), or leave --thresholds out for the fixed defaults."
        ) from None


def _seconds(text: str) -> float:
    from torchkiln.serve.performance import DURATION_UNITS as units

    t = text.strip()
    if len(t) > 1 and t[-1] in units and t[:-1].isdigit() and int(t[:-1]) > 0:
        return float(int(t[:-1]) * units[t[-1]])
    raise ConfigError(
        f"The duration '{text}' is not N followed by s, m, h or d. Expected e.g. 30s, 5m, 1h or 6h."
    )


@monitor_app.command("watch")
def watch(
    target: Target,
    log_url: LogUrl,
    window: Window = "1000",
    version: Version = None,
    bundle: BundleOpt = None,
    tracking_uri: TrackingUri = None,
    thresholds: ThresholdsOpt = None,
    every: Annotated[str, typer.Option(help="Time between checks: 30s, 5m, 1h.")] = "5m",
    once: Annotated[bool, typer.Option(help="Check once and exit (for cron or a systemd timer).")] = False,
    state: Annotated[Path, typer.Option(help="The alert state file (JSON), kept between runs.")] = Path(
        "monitor-state.json"
    ),
    webhook: Annotated[str | None, typer.Option(help="POST each alert and resolution here (JSON).")] = None,
    on_alert: Annotated[
        str | None, typer.Option(help="A command run on each alert, the alert JSON on stdin (no shell).")
    ] = None,
    metrics_port: Annotated[int, typer.Option(help="Serve the gauges on this port; 0: none.")] = 9109,
    metrics_host: Annotated[str, typer.Option(help="The address the gauges are served on.")] = "127.0.0.1",
    raise_after: Annotated[int, typer.Option(help="Drifted checks in a row that open an incident.")] = 3,
    clear_after: Annotated[int, typer.Option(help="Clean checks in a row that close it.")] = 3,
    cooldown: Annotated[str, typer.Option(help="No new alert this soon after the last one.")] = "6h",
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write each check's report here.")] = None,
) -> None:
    """Check drift periodically: Prometheus gauges, and one webhook alert (and command) per incident.

    Gauges: kiln_drift_score{model,version,signal} and kiln_live_accuracy{model,version} on
    http://METRICS_HOST:METRICS_PORT/metrics (not with --once). The alert state file de-duplicates alerts
    across checks and runs.
    """
    import shlex
    import threading

    from torchkiln.monitor.alerts import AlertPolicy
    from torchkiln.monitor.watch import CheckResult, Gauges, WatchConfig, run_check
    from torchkiln.monitor.watch import watch as watch_loop

    try:
        cfg = WatchConfig(
            target=target, log_url=log_url, state_path=state, window=window, version=version,
            bundles=bundle or [], tracking_uri=tracking_uri, thresholds=_thresholds(thresholds),
            policy=AlertPolicy(raise_after, clear_after, _seconds(cooldown)),
            webhook=webhook, on_alert=shlex.split(on_alert) if on_alert else (), out=out_dir,
        )  # fmt: skip
        every_s = _seconds(every)
        if once:
            _show(run_check(cfg))
            return
    except (KilnError, ValueError) as exc:
        fail(exc if isinstance(exc, KilnError) else ConfigError(f"--on-alert cannot be split: {exc}"))
    gauges = Gauges()
    stop_metrics = gauges.serve(metrics_port, metrics_host)[1] if metrics_port else None
    if stop_metrics is not None:
        out.print(f"gauges on http://{metrics_host}:{metrics_port}/metrics", highlight=False)
    try:
        show = lambda r: _show(r) if isinstance(r, CheckResult) else out.print(str(r))  # noqa: E731
        watch_loop(cfg, every_s=every_s, gauges=gauges, stop=threading.Event(), on_check=show)
    except KeyboardInterrupt:
        pass
    finally:
        if stop_metrics is not None:
            stop_metrics()


def _show(result: Any) -> None:
    for line in [*result.report.notes, *(_line(v) for v in result.report.versions)]:
        out.print(line, highlight=False, soft_wrap=True)
    for e in result.events:
        out.print(f"{e['event']}: {e['model']} {e['version']} ({', '.join(e['drifted'])})", highlight=False)
