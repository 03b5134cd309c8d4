"""``kiln retrain``'s steps on a running server: shadow traffic judged from the prediction log, and the
reload that promotes, each checked on every worker.

The server must serve the model as ``uri: models:/NAME@champion`` with ``challenger:
models:/NAME@challenger`` and ``shadow: true``; between retrains the challenger alias points at the
champion's own version. A shadow phase moves the challenger alias and reloads; a promotion moves the
champion alias and reloads.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.serve.predlog_db import make_engine, predictions, reason, shown

POLL_S = 0.1  # how often the shadow phase reads the log


def reload_arm(server: str, admin_token: str | None, model: str, arm: str, version: str) -> dict[str, Any]:
    """``POST /admin/reload?model=NAME`` and check that every worker serves ``version`` in ``arm``.

    Raises:
        ServeError: as :func:`reload_and_verify`.
    """
    import httpx

    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    base = server.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            r = client.post("/admin/reload", params={"model": model, "force": "false"})
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            if r.status_code != 200:
                raise ServeError(
                    f"The server at {base} did not load version {version} of '{model}' as its {arm}: POST "
                    f"/admin/reload answered {r.status_code}: {body.get('detail', r.text[:300])}"
                )
            models = client.get("/admin/models").json()["models"]
    except httpx.HTTPError as exc:
        raise ServeError(f"Cannot reach the server at {base} ({exc}). Check --server.") from exc
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
