"""``kiln retrain``'s steps on a running server: shadow traffic judged from the prediction log, a canary
judged by a sequential test, and the reload that promotes, each checked on every worker.

The server must serve the model as ``uri: models:/NAME@champion`` with ``challenger:
models:/NAME@challenger`` and ``shadow: true``; between retrains the challenger alias points at the
champion's own version. A shadow phase moves the challenger alias and reloads; a canary gives the
challenger a share of the request keys (``PUT /admin/models/NAME/traffic``), counts its requests and
failures on ``/metrics`` and reads its latency from the log; a promotion moves the champion alias and
reloads; then the traffic rule goes back to what it was.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.monitor.decision import CanaryTest, RetrainSettings, canary_verdict
from torchkiln.serve.predlog_db import make_engine, predictions, reason, shown
from torchkiln.serve.routes import PREDICT_ROUTE

POLL_S = 0.1  # how often the shadow phase reads the log


def _admin(server: str, admin_token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    return httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=120)


def _unreachable(server: str, exc: Exception) -> ServeError:
    return ServeError(f"Cannot reach the server at {server.rstrip('/')} ({exc}). Check --server.")


def traffic_of(server: str, admin_token: str | None, model: str) -> dict[str, Any]:
    """The model's traffic rule on the server now: ``{"challenger_weight": w, "shadow": b}``."""
    try:
        with _admin(server, admin_token) as client:
            r = client.get("/admin/models")
    except httpx.HTTPError as exc:
        raise _unreachable(server, exc) from exc
    if r.status_code != 200:
        raise ServeError(f"GET /admin/models on {server} answered {r.status_code}: {r.text[:300]}")
    for m in r.json()["models"]:
        if m["name"] == model:
            return {
                "challenger_weight": m["traffic"].get("challenger", 0.0),
                "shadow": m["traffic"].get("shadow", False),
            }
    raise ServeError(f"The server at {server} does not serve '{model}'. Check --server and --model.")


def set_traffic(server: str, admin_token: str | None, model: str, **rule: Any) -> dict[str, Any]:
    """``PUT /admin/models/NAME/traffic`` with ``rule``; every worker must apply it.

    Raises:
        ServeError: the server refused the rule or not every worker applied it (its answer says why).
    """
    try:
        with _admin(server, admin_token) as client:
            r = client.put(f"/admin/models/{model}/traffic", json=rule)
    except httpx.HTTPError as exc:
        raise _unreachable(server, exc) from exc
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code != 200:
        raise ServeError(
            f"The server at {server} did not route '{model}' by {rule}: PUT /admin/models/{model}/traffic "
            f"answered {r.status_code}: {body.get('detail', r.text[:300])}"
        )
    return body


def reload_arm(server: str, admin_token: str | None, model: str, arm: str, version: str) -> dict[str, Any]:
    """``POST /admin/reload?model=NAME`` and check that every worker serves ``version`` in ``arm``.

    Raises:
        ServeError: as :func:`reload_and_verify`.
    """
    base = server.rstrip("/")
    try:
        with _admin(server, admin_token) as client:
            r = client.post("/admin/reload", params={"model": model, "force": "false"})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200:
                raise ServeError(
                    f"The server at {base} did not load version {version} of '{model}' as its {arm}: POST "
                    f"/admin/reload answered {r.status_code}: {body.get('detail', r.text[:300])}"
                )
            models = client.get("/admin/models").json()["models"]
    except httpx.HTTPError as exc:
        raise _unreachable(server, exc) from exc
    workers = body["workers"]
    served = {v["arm"]: v["version"] for m in models if m["name"] == model for v in m["versions"]}
    if served.get(arm) != version or workers["serving"] != workers["total"]:
        raise ServeError(
            f"After the reload the server at {base} serves {served.get(arm)} as the {arm} of '{model}' on "
            f"{workers['serving']} of {workers['total']} workers; expected version {version} on all. Serve "
            f"it with uri models:/{model}@champion and challenger models:/{model}@{arm} (docs/monitoring.md)."
        )
    return {"workers": workers, "results": body.get("results"), arm: version}


def reload_and_verify(server: str, admin_token: str | None, model: str, version: str) -> dict[str, Any]:
    """Reload after a promotion and check that every worker serves ``version`` as the champion.

    Example:
        >>> reload_and_verify("http://127.0.0.1:8000", "s3cret", "digits", "3")["workers"]
        {'total': 2, 'serving': 2}
    """
    return reload_arm(server, admin_token, model, "champion", version)


def log_watermark(log_url: str) -> int:
    """The largest row id of the prediction log now: rows after it were written later."""
    engine, _ = make_engine(log_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(predictions.c.id))).scalar() or 0)
    finally:
        engine.dispose()


def shadow_figures(
    log_url: str, model: str, version: str, *, after: int, requests: int, timeout_s: float, settle_s: float
) -> dict[str, Any]:
    """Wait on the log for ``requests`` answered requests of ``model`` after row ``after`` that were
    mirrored to ``version`` or to nothing, then (at most ``settle_s`` more) for their shadow answers to be
    logged; return the shadow figures.

    A mirrored request whose shadow answer never reaches the log failed in the challenger (an error, a
    timeout, or a full queue: the server drops it and logs nothing), so ``error_rate`` is the share of the
    judged requests without a shadow row. Rows after ``after`` may still be requests of before the reload
    (the log writes in batches): those mirrored to the previous challenger are left out. ``agreement``
    compares the top labels of both answers; ``p99_ms`` is the shadow answers' model latency.

    Raises:
        ServeError: fewer than ``requests`` requests within ``timeout_s`` (is traffic reaching the server?).
    """
    engine, parsed = make_engine(log_url)
    deadline = time.monotonic() + timeout_s
    settle: float | None = None
    try:
        while True:
            answered, shadows = _read(engine, model, after)
            earlier = {r.request_id for r in shadows if r.version != version}
            judged = [r for r in answered if r.request_id not in earlier][:requests]
            ids = {r.request_id for r in judged}
            mirrored = [r for r in shadows if r.version == version and r.request_id in ids]
            if len(judged) >= requests:
                settle = settle or time.monotonic() + settle_s
                if len(mirrored) >= len(judged) or time.monotonic() > settle:
                    break
            elif time.monotonic() > deadline:
                raise ServeError(
                    f"The prediction log {shown(parsed)} got {len(judged)} of the {requests} requests for "
                    f"'{model}' that the shadow phase waits for within {timeout_s:g} s. Is traffic reaching "
                    f"the server, and does it log to this URL? Raise shadow_timeout_s or lower "
                    f"shadow_requests."
                )
            time.sleep(POLL_S)
    except sa.exc.SQLAlchemyError as exc:
        raise ServeError(f"Cannot read the prediction log {shown(parsed)} ({reason(exc)}).") from exc
    finally:
        engine.dispose()
    champion = {r.request_id: _labels(r.outputs) for r in judged}
    shadow = {r.request_id: _labels(r.outputs) for r in mirrored}
    agree = [champion[k] == v for k, v in shadow.items()]
    return {
        "requests": len(champion),
        "mirrored_to_the_previous_challenger": len({r.request_id for r in answered} & earlier),
        "shadow_answers": len(shadow),
        "error_rate": 1 - len(shadow) / len(champion),
        "agreement": float(np.mean(agree)) if agree else None,
        "p99_ms": float(np.percentile([r.latency_ms for r in mirrored], 99)) if mirrored else None,
    }


def _read(engine: sa.Engine, model: str, after: int) -> tuple[list[Any], list[Any]]:
    """The answered rows of ``model`` after row ``after``, and the shadow rows of the same requests."""
    p = predictions.c
    with engine.connect() as conn:
        answered = conn.execute(
            sa.select(p.request_id, p.outputs)
            .where(p.id > after, p.model == model, p.shadow == sa.false())
            .order_by(p.id)
        ).all()
        shadows = conn.execute(
            sa.select(p.request_id, p.outputs, p.latency_ms, p.version).where(
                p.id > after, p.model == model, p.shadow == sa.true()
            )
        ).all()
    return list(answered), list(shadows)


def _labels(outputs: Any) -> list[Any]:
    return [o.get("label") if isinstance(o, dict) else None for o in outputs or []]


def canary_counts(server: str, model: str, version: str) -> tuple[int, int]:
    """(answered, failed) requests of ``version`` of ``model`` as the challenger, summed over the server's
    workers on ``/metrics``: predict requests it answered (2xx), and those it failed
    (``kiln_canary_failures_total``; the champion answered them instead).

    Raises:
        ServeError: the server is unreachable, or its metrics are off.
    """
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = httpx.get(f"{server.rstrip('/')}/metrics", timeout=30)
    except httpx.HTTPError as exc:
        raise _unreachable(server, exc) from exc
    if r.status_code != 200:
        raise ServeError(
            f"The canary counts its requests on the server's /metrics, which answered {r.status_code}. Turn "
            f"metrics on in the serve settings (metrics: true), or skip the canary with canary_weight 0."
        )
    answered = failed = 0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if sample.name == "kiln_requests_total" and labels.get("route") == PREDICT_ROUTE:
                answered += int(sample.value) if labels.get("status", "").startswith("2") else 0
            elif sample.name == "kiln_canary_failures_total":
                failed += int(sample.value)
    return answered, failed


def canary_figures(
    server: str, log_url: str, model: str, version: str, *, after: int, s: RetrainSettings
) -> dict[str, Any]:
    """Watch a canary until :func:`~torchkiln.monitor.decision.canary_verdict` decides: its requests and
    failures from ``/metrics`` (counted from now), its p99 request latency from the log rows after row
    ``after``. Returns the figures with ``decision`` ('pass' or 'fail') and ``reason``.

    Raises:
        ServeError: no decision within ``canary_timeout_s`` (too little traffic for the share), or the
            server or the log cannot be read.
    """
    answered0, failed0 = canary_counts(server, model, version)
    engine, parsed = make_engine(log_url)
    start = time.monotonic()
    p = predictions.c
    try:
        while True:
            answered, failed = canary_counts(server, model, version)
            answered, failed = answered - answered0, failed - failed0
            requests = answered + failed
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(p.version, p.latency_ms).where(
                        p.id > after, p.model == model, p.shadow == sa.false()
                    )
                ).all()
            mine = [r.latency_ms for r in rows if r.version == version]
            others = [r.latency_ms for r in rows if r.version != version]
            p99 = float(np.percentile(mine, 99)) if len(mine) >= s.canary_min_requests else None
            decision, why = canary_verdict(failed, requests, p99, s)
            if decision is not None:
                break
            if time.monotonic() - start > s.canary_timeout_s:
                raise ServeError(
                    f"The canary of '{model}' (version {version}, {s.canary_weight:.0%} of request keys) got "
                    f"{requests} requests in {s.canary_timeout_s:g} s, too few to decide (it needs at least "
                    f"{s.canary_min_requests}). Is traffic reaching the server? Raise canary_weight or "
                    f"canary_timeout_s."
                )
            time.sleep(POLL_S * 5)
    except sa.exc.SQLAlchemyError as exc:
        raise ServeError(f"Cannot read the prediction log {shown(parsed)} ({reason(exc)}).") from exc
    finally:
        engine.dispose()
    return {
        "decision": decision,
        "reason": why,
        "weight": s.canary_weight,
        "requests": requests,
        "failures": failed,
        "error_rate": failed / requests if requests else 0.0,
        "log_likelihood_ratio": CanaryTest.of(s).llr(failed, requests),
        "p99_ms": p99,
        "champion_p99_ms": float(np.percentile(others, 99)) if others else None,
        "seconds": round(time.monotonic() - start, 2),
    }
