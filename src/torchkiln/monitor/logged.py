"""Logged inputs back from the prediction log: the request bodies the server kept (``payload``), decoded by
the model's task, with what the champion answered and the feedback label when one came.

The server keeps a body whole only for a share of requests (``log_payload_sample_rate``, default 0): a
log without payloads holds summaries, never inputs, so nothing can be replayed or retrained from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from torchkiln.core.errors import KilnError, ServeError
from torchkiln.serve.predlog_db import open_existing, reason, shown
from torchkiln.tasks.base import RequestLimits, Task

NO_PAYLOADS = (
    "The prediction log {log} kept no request bodies with a feedback label for model '{model}' in its last "
    "{last} requests, so there are no labelled inputs to {what}. Serve with log_payload_sample_rate > 0 "
    "(e.g. 1.0 while collecting feedback) to keep them, or give the labelled data with --data."
)


@dataclass(frozen=True)
class LoggedInput:
    """One input of a logged request: the raw input as the task decodes it, and what was said about it."""

    request_id: str
    item: int
    version: str
    raw: Any  # e.g. image file bytes
    predicted: str | None  # the top label the serving version answered
    label: str | None  # the feedback label, if one came


@dataclass(frozen=True)
class LoggedInputs:
    inputs: list[LoggedInput]
    requests: int  # requests read (the window)
    without_payload: int  # of them, how many kept no body
    undecodable: int  # bodies the task could not decode (multipart, or invalid)


def read_logged_inputs(url: str, model: str, task: Task, *, last: int) -> LoggedInputs:
    """The inputs of the last ``last`` answered (not shadow) requests of ``model`` whose body was kept.

    Raises:
        ServeError: the log cannot be read.

    Example:
        >>> logged = read_logged_inputs("sqlite:///runs/serve/predictions.db", "digits", task, last=500)
    """
    engine, parsed = open_existing(url, check="--feedback-from")
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            p = sa.Table("predictions", meta, autoload_with=conn)
            has_feedback = sa.inspect(conn).has_table("feedback")
            rows = conn.execute(
                sa.select(p.c.request_id, p.c.version, p.c.outputs, p.c.payload, p.c.payload_type)
                .where(p.c.model == model, p.c.shadow == sa.false())
                .order_by(p.c.time.desc(), p.c.id.desc())
                .limit(last)
            ).all()
            labels: dict[tuple[str, int], str] = {}
            if has_feedback and rows:
                f = sa.Table("feedback", meta, autoload_with=conn)
                ids = [r.request_id for r in rows]
                for fr in conn.execute(
                    sa.select(f.c.request_id, f.c.item, f.c.label).where(
                        f.c.model == model, f.c.request_id.in_(ids)
                    )
                ):
                    labels[(fr.request_id, int(fr.item))] = str(fr.label)
    except sa.exc.SQLAlchemyError as exc:
        raise ServeError(f"Cannot read the prediction log {shown(parsed)} ({reason(exc)}).") from exc
    finally:
        engine.dispose()
    inputs: list[LoggedInput] = []
    without, bad = 0, 0
    for row in reversed(rows):  # oldest first
        if row.payload is None:
            without += 1
            continue
        raw = _decode(task, bytes(row.payload), row.payload_type)
        if raw is None:
            bad += 1
            continue
        outputs = row.outputs if isinstance(row.outputs, list) else []
        for i, x in enumerate(raw):
            answer = outputs[i] if i < len(outputs) and isinstance(outputs[i], dict) else {}
            predicted = answer.get("label")
            inputs.append(
                LoggedInput(
                    row.request_id,
                    i,
                    str(row.version),
                    x,
                    None if predicted is None else str(predicted),
                    labels.get((row.request_id, i)),
                )
            )
    return LoggedInputs(inputs, len(rows), without, bad)


def _decode(task: Task, body: bytes, media: str | None) -> list[Any] | None:
    """A kept JSON body -> the task's raw inputs; None for what cannot be decoded (multipart bodies)."""
    if not media or not (media == "application/json" or media.endswith("+json")):
        return None
    try:
        request = task.request_schema.model_validate_json(body)
        return list(task.decode_request(request, limits=RequestLimits(max_items=10**6)))
    except (KilnError, ValueError):
        return None
