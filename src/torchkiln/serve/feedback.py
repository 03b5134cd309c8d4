"""Feedback labels: find the prediction a label is for, and store the label beside it.

The prediction log is written in batches by a process of its own, so a prediction answered a moment ago
may not be in the database yet. :meth:`FeedbackStore.find` therefore looks first at what this process
logged and has not seen confirmed (``PredictionLog.pending``), then in the database; a record leaves
memory only once its row is committed, so between the two every prediction this process answered is
found. With several workers, the prediction may be in another worker's memory: an id found nowhere is
looked for again in the database for up to :data:`OTHER_WORKERS_WAIT_S` before it is called unknown.

A label is stored with what the answering arm predicted and when, in one transaction per request; the
table's unique key (request id, input) makes a second label for the same input a duplicate, also when
two arrive at once in two workers. The calls here block: the server runs them in its thread pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from torchkiln.serve.performance import Performance, Window, performance
from torchkiln.serve.predlog_db import TRANSIENT, PredictionRecord, feedback, make_engine, predictions, utc

OTHER_WORKERS_WAIT_S = 2.0  # longer than a flush interval (0.2 s) with room for a busy writer
_POLL_S = 0.1


@dataclass(frozen=True)
class Answered:
    """A logged prediction that was returned to the caller (not a shadow call)."""

    model: str
    version: str
    arm: str
    time: datetime
    outputs: list[dict[str, Any]]

    @property
    def items(self) -> int:
        return len(self.outputs)

    def predicted(self, item: int) -> str | None:
        """The top-1 label of input ``item``, if the answer has one."""
        out = self.outputs[item] if 0 <= item < len(self.outputs) else None
        label = out.get("label") if isinstance(out, dict) else None
        return None if label is None else str(label)


@dataclass(frozen=True)
class Label:
    """One labelled input, ready to store."""

    item: int
    label: str
    predicted: str | None


@dataclass(frozen=True)
class Stored:
    """A label already stored for an input."""

    item: int
    label: str
    time: datetime


class DuplicateFeedback(Exception):
    """Some inputs already have a label; nothing of the request was stored."""

    def __init__(self, existing: list[Stored]) -> None:
        super().__init__(f"{len(existing)} input(s) already labelled")
        self.existing = existing


class FeedbackUnavailable(Exception):
    """The database cannot be reached now; nothing was stored. The cause is for the server log only."""


class FeedbackStore:
    """The feedback table of the prediction log, seen from the server (one per app).

    Example:
        >>> store = FeedbackStore("sqlite:///runs/serve/predictions.db")
        >>> [answer] = store.find("d1effbeb...", pending=[])
        >>> store.add("d1effbeb...", answer, [Label(0, "Bag", answer.predicted(0))], now)
    """

    def __init__(self, url: str, *, wait_for_others_s: float = 0.0) -> None:
        self._engine, _ = make_engine(url)
        self._wait_s = wait_for_others_s

    def find(self, request_id: str, pending: list[PredictionRecord]) -> list[Answered]:
        """The answered (non-shadow) predictions of ``request_id``: normally one.

        Args:
            pending: This process's records of the id not yet confirmed written, looked up *before*
                this call (so that one moving to the database meanwhile is seen in one place or the other).

        Raises:
            FeedbackUnavailable: The database cannot be reached.
        """
        found = {_key(r): _answered(r) for r in pending if not r.shadow}
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                rows = self._select(request_id)
            except TRANSIENT as exc:
                raise FeedbackUnavailable(str(exc)) from exc
            found |= {_key(r): _answered(r) for r in rows}
            if found or time.monotonic() >= deadline:
                return sorted(found.values(), key=lambda a: a.time)
            time.sleep(_POLL_S)  # another worker's log writes within a flush interval

    def add(self, request_id: str, answer: Answered, labels: list[Label], now: datetime) -> None:
        """Store ``labels`` for ``request_id`` in one transaction: all of them, or none.

        Raises:
            DuplicateFeedback: An input already has a label (nothing is stored).
            FeedbackUnavailable: The database cannot be reached (nothing is stored).
        """
        rows = [
            {
                "request_id": request_id,
                "item": x.item,
                "model": answer.model,
                "version": answer.version,
                "arm": answer.arm,
                "predicted": x.predicted,
                "label": x.label,
                "predicted_at": utc(answer.time),
                "time": utc(now),
            }
            for x in labels
        ]
        try:
            with self._engine.begin() as conn:
                conn.execute(feedback.insert(), rows)
        except sa.exc.IntegrityError:  # the unique key (request_id, item): a label is there already
            existing = self.stored(request_id, [x.item for x in labels])
            raise DuplicateFeedback(existing) from None
        except TRANSIENT as exc:
            raise FeedbackUnavailable(str(exc)) from exc

    def stored(self, request_id: str, items: list[int]) -> list[Stored]:
        """The labels already stored for these inputs of ``request_id``."""
        c = feedback.c
        query = (
            sa.select(c.item, c.label, c.time)
            .where(c.request_id == request_id, c.item.in_(items))
            .order_by(c.item)
        )
        try:
            with self._engine.connect() as conn:
                return [Stored(r.item, r.label, r.time) for r in conn.execute(query)]
        except TRANSIENT as exc:
            raise FeedbackUnavailable(str(exc)) from exc

    def performance(self, model: str, window: Window) -> Performance:
        """Live scores of ``model`` (see :func:`~torchkiln.serve.performance.live_performance`).

        Raises:
            FeedbackUnavailable: The database cannot be reached.
        """
        try:
            return performance(self._engine, model, window)
        except TRANSIENT as exc:
            raise FeedbackUnavailable(str(exc)) from exc

    def close(self) -> None:
        self._engine.dispose()

    def _select(self, request_id: str) -> list[Any]:
        c = predictions.c
        query = sa.select(c.model, c.version, c.arm, c.time, c.outputs, c.shadow).where(
            c.request_id == request_id, c.shadow == sa.false()
        )
        with self._engine.connect() as conn:
            return list(conn.execute(query))


def _key(r: Any) -> tuple[Any, ...]:
    """What tells two answers apart (a record or a row): the model, the arm and the time."""
    return (r.model, r.arm, utc(r.time))


def _answered(r: Any) -> Answered:
    outputs = r.outputs if isinstance(r.outputs, list) else []
    return Answered(r.model, r.version, r.arm, utc(r.time), outputs)
