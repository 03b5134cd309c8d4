"""The dashboard's read-only view of the prediction log.

Every query is bounded: rows come newest first by primary key (``id < before`` pages backwards, ``id >
after`` asks for what is new), ``LIMIT`` a page, so a page costs the same with a thousand rows or a million.
The connection is read-only (SQLite ``query_only``, PostgreSQL ``default_transaction_read_only``): the
dashboard never writes to the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from torchkiln.core.errors import ServeError
from torchkiln.serve.predlog_db import (
    DERIVED,
    feedback,
    open_existing,
    predictions,
    present_columns,
    reason,
    shown,
)

RECENT_ROWS = 10_000  # the models and versions a filter offers: those of the last rows


@dataclass(frozen=True)
class Filters:
    """What the live view shows; each field left empty shows all."""

    model: str = ""
    version: str = ""
    label: str = ""  # the answer's top-1 label
    min_confidence: float | None = None
    max_confidence: float | None = None
    disagrees: bool = False  # only inputs whose feedback label differs from the answer
    shadow: bool = True  # include the shadow answers

    def query(self) -> dict[str, str]:
        """The filters as URL query parameters (empty ones left out), for links and the poll."""
        raw = {
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "min_confidence": "" if self.min_confidence is None else f"{self.min_confidence:g}",
            "max_confidence": "" if self.max_confidence is None else f"{self.max_confidence:g}",
            "disagrees": "1" if self.disagrees else "",
            "shadow": "" if self.shadow else "0",
        }
        return {k: v for k, v in raw.items() if v}


@dataclass(frozen=True)
class Box:
    """One box of a detector's answer, in the input image's pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float


@dataclass(frozen=True)
class Answer:
    label: str | None
    score: float | None
    feedback: str | None = None  # the true label, when one came
    boxes: tuple[Box, ...] = ()  # a detector's answer: its boxes (``count`` is set, ``label`` is None)
    count: int | None = None

    @property
    def classes(self) -> str:
        """A detector's boxes per class, most frequent first: "Tree 57, Dead 3"."""
        mix: dict[str, int] = {}
        for b in self.boxes:
            mix[b.label] = mix.get(b.label, 0) + 1
        return ", ".join(f"{k} {n}" for k, n in sorted(mix.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class Row:
    id: int
    request_id: str
    time: datetime
    model: str
    version: str
    arm: str
    shadow: bool
    latency_ms: float
    items: int
    answers: list[Answer]
    has_payload: bool
    payload_type: str | None

    @property
    def disagrees(self) -> bool:
        return any(a.feedback is not None and a.feedback != a.label for a in self.answers)


@dataclass(frozen=True)
class Unlabelled:
    """What :meth:`LogReader.unlabelled` found: the inputs that wait for a true label."""

    considered: int  # answered rows looked at
    kept: int  # of them, the rows that kept their request body
    waiting: int  # inputs of those with a top-1 score and no feedback label
    rows: list[Row]  # the rows of ``inputs``, by id
    inputs: list[tuple[int, int]]  # (row id, input) of the least confident ``limit`` of them, in order
    classes: list[str]  # the classes those rows' answers name in their top_k, sorted


@dataclass
class LogReader:
    """One dashboard's connection to the log (made once; pooled by SQLAlchemy)."""

    url: str
    engine: sa.Engine = field(init=False)

    def __post_init__(self) -> None:
        self.engine, self.parsed = open_existing(self.url, check="--log-url")
        self._has_top: bool | None = None  # whether the log has the top_label/top_score columns
        backend = self.parsed.get_backend_name()

        @sa.event.listens_for(self.engine, "connect")
        def _read_only(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if backend == "sqlite":
                cur.execute("PRAGMA query_only = ON")
            elif backend == "postgresql":
                cur.execute("SET default_transaction_read_only = on")
            cur.close()

    def close(self) -> None:
        self.engine.dispose()

    def top(self) -> tuple[Any, Any]:
        """The first answer's top-1 label and score as SQL expressions: the indexed ``top_label`` and
        ``top_score`` columns, or for a log no server has migrated yet, the same read out of the JSON."""
        p = predictions.c
        if self._has_top is None:
            self._has_top = set(DERIVED) <= self._run(lambda c: present_columns(c))
        if self._has_top:
            return p.top_label, p.top_score
        return p.outputs[(0, "label")].as_string(), p.outputs[(0, "score")].as_float()

    def _run(self, build: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return build(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise ServeError(f"Cannot read the prediction log {shown(self.parsed)} ({reason(exc)}).") from exc

    def models(self) -> list[str]:
        """The model names of the log's last rows, with their versions: ``{model: [versions]}``."""
        return sorted(self.versions())

    def versions(self) -> dict[str, list[str]]:
        p = predictions.c
        recent = sa.select(p.model, p.version).order_by(p.id.desc()).limit(RECENT_ROWS).subquery()

        def build(conn: sa.Connection) -> dict[str, list[str]]:
            out: dict[str, set[str]] = {}
            for model, version in conn.execute(sa.select(recent.c.model, recent.c.version).distinct()):
                out.setdefault(model, set()).add(version)
            return {m: sorted(v, key=_version_key) for m, v in out.items()}

        return self._run(build)

    def rows(
        self, filters: Filters, *, limit: int, before: int | None = None, after: int | None = None
    ) -> list[Row]:
        """At most ``limit`` rows that pass ``filters``, newest first; ``before``/``after`` a row id."""
        p = predictions.c
        q = sa.select(
            p.id,
            p.request_id,
            p.time,
            p.model,
            p.version,
            p.arm,
            p.shadow,
            p.latency_ms,
            p["items"],
            p.outputs,
            p.payload_type,
            (p.payload.is_not(None)).label("has_payload"),
        )
        if filters.model:
            q = q.where(p.model == filters.model)
        if filters.version:
            q = q.where(p.version == filters.version)
        if not filters.shadow:
            q = q.where(p.shadow == sa.false())
        top_label, top_score = self.top()
        if filters.label:
            q = q.where(top_label == filters.label)
        if filters.min_confidence is not None:
            q = q.where(top_score >= filters.min_confidence)
        if filters.max_confidence is not None:
            q = q.where(top_score <= filters.max_confidence)
        f = feedback.c
        if filters.disagrees:
            wrong = sa.select(f.request_id).where(f.predicted != f.label)
            if filters.model:
                wrong = wrong.where(f.model == filters.model)
            q = q.where(p.request_id.in_(wrong), p.shadow == sa.false())
        if before is not None:
            q = q.where(p.id < before)
        if after is not None:
            q = q.where(p.id > after)
        q = q.order_by(p.id.desc()).limit(limit)

        def build(conn: sa.Connection) -> list[Row]:
            found = conn.execute(q).all()
            labels: dict[tuple[str, int], str] = {}
            ids = sorted({r.request_id for r in found})
            if ids and sa.inspect(conn).has_table("feedback"):
                for fr in conn.execute(sa.select(f.request_id, f.item, f.label).where(f.request_id.in_(ids))):
                    labels[(fr.request_id, int(fr.item))] = str(fr.label)
            return [_row(r, labels) for r in found]

        return self._run(build)

    def latest_id(self) -> int:
        return int(self._run(lambda c: c.execute(sa.select(sa.func.max(predictions.c.id))).scalar()) or 0)

    def payload(self, row_id: int) -> tuple[bytes, str | None, str] | None:
        """The kept request body of row ``row_id``, its media type and model; None if none was kept.

        A shadow row keeps no body of its own: it is the body of the answered row of the same request.
        """
        p = predictions.c

        def build(conn: sa.Connection) -> Any:
            row = conn.execute(
                sa.select(p.request_id, p.shadow, p.payload, p.payload_type, p.model).where(p.id == row_id)
            ).first()
            if row is None or row.payload is not None or not row.shadow:
                return row
            return conn.execute(
                sa.select(p.payload, p.payload_type, p.model)
                .where(p.request_id == row.request_id, p.shadow == sa.false(), p.model == row.model)
                .limit(1)
            ).first()

        found = self._run(build)
        if found is None or found.payload is None:
            return None
        return bytes(found.payload), found.payload_type, str(found.model)

    def version(self, row_id: int) -> str | None:
        """The version that answered row ``row_id`` (a shadow row's: the challenger's); None for no row."""
        p = predictions.c
        found = self._run(lambda conn: conn.execute(sa.select(p.version).where(p.id == row_id)).scalar())
        return None if found is None else str(found)

    def answer(self, row_id: int, item: int) -> Answer | None:
        """The logged answer to input ``item`` of row ``row_id`` (a detector's boxes, for its thumbnail)."""
        p = predictions.c
        found = self._run(lambda conn: conn.execute(sa.select(p.outputs).where(p.id == row_id)).scalar())
        if not isinstance(found, list) or not 0 <= item < len(found):
            return None
        return _answer(found[item], None)

    def unlabelled(self, model: str, *, window: int, limit: int) -> Unlabelled:
        """The inputs waiting for a true label among the last ``window`` answered (not shadow) rows of
        ``model``: those whose request body was kept and that have no feedback, least confident first.

        Bounded however long the log is: the model index walked back ``window`` rows, one top-1 score per
        single-input row computed by the database (whole answers only for requests of several inputs),
        and whole rows only for the ``limit`` inputs returned.
        """
        p, f = predictions.c, feedback.c
        answered = sa.and_(p.model == model, p.shadow == sa.false())
        recent = sa.select(p.id).where(answered).order_by(p.id.desc()).limit(window).subquery()
        span = sa.select(sa.func.count(), sa.func.min(recent.c.id))
        columns = [p.id, p.request_id, p.time, p.model, p.version, p.arm, p.shadow, p.latency_ms, p["items"]]
        columns += [p.outputs, p.payload_type, sa.true().label("has_payload")]

        def build(conn: sa.Connection) -> Unlabelled:
            considered, oldest = conn.execute(span).one()
            if not considered:
                return Unlabelled(0, 0, 0, [], [], [])
            kept = sa.and_(answered, p.id >= oldest, p.payload.is_not(None))
            score = self.top()[1].label("score")
            single = conn.execute(sa.select(p.id, p.request_id, score).where(kept, p["items"] == 1)).all()
            several = conn.execute(sa.select(p.id, p.request_id, p.outputs).where(kept, p["items"] > 1)).all()
            labels: dict[tuple[str, int], str] = {}
            if sa.inspect(conn).has_table("feedback"):
                # IN (subquery), not a join: the planner then probes feedback's (request_id, item) index
                # for each kept row, instead of scanning all of feedback (62 ms against 2 ms at 20,000).
                given = sa.select(f.request_id, f.item, f.label)
                for fr in conn.execute(given.where(f.request_id.in_(sa.select(p.request_id).where(kept)))):
                    labels[(fr.request_id, int(fr.item))] = str(fr.label)
            waiting = [
                (r.score, -r.id, 0) for r in single if r.score is not None and (r.request_id, 0) not in labels
            ]
            for r in several:
                for i, o in enumerate(r.outputs if isinstance(r.outputs, list) else []):
                    s = o.get("score") if isinstance(o, dict) else None
                    if isinstance(s, int | float) and (r.request_id, i) not in labels:
                        waiting.append((float(s), -r.id, i))
            first = sorted(waiting)[:limit]
            ids = sorted({-neg for _, neg, _ in first})
            found = conn.execute(sa.select(*columns).where(p.id.in_(ids))).all() if ids else []
            classes: set[str] = set()
            for r in found:
                for o in r.outputs if isinstance(r.outputs, list) else []:
                    top = o.get("top_k") if isinstance(o, dict) else None
                    classes.update(str(t["label"]) for t in top or [] if isinstance(t, dict) and "label" in t)
            inputs = [(-neg, i) for _, neg, i in first]
            rows = [_row(r, labels) for r in found]
            return Unlabelled(
                int(considered), len(single) + len(several), len(waiting), rows, inputs, sorted(classes)
            )

        return self._run(build)


def _boxes(found: Any) -> tuple[Box, ...]:
    """The well-formed boxes of a logged ``detections`` list (anything else in it is skipped)."""
    out = []
    for d in found if isinstance(found, list) else []:
        box = d.get("box") if isinstance(d, dict) else None
        if (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) for v in box)
            and isinstance(d.get("score"), int | float)
        ):
            out.append(Box(*(float(v) for v in box), str(d.get("label")), float(d["score"])))
    return tuple(out)


def _answer(o: Any, feedback: str | None) -> Answer:
    o = o if isinstance(o, dict) else {}
    label, score = o.get("label"), o.get("score")
    boxes = _boxes(o.get("detections")) if "detections" in o else ()
    return Answer(
        None if label is None else str(label),
        float(score) if isinstance(score, int | float) else None,
        feedback,
        boxes,
        len(boxes) if "detections" in o else None,
    )


def _row(r: Any, labels: dict[tuple[str, int], str]) -> Row:
    outputs = r.outputs if isinstance(r.outputs, list) else []
    answers = [_answer(o, labels.get((r.request_id, i))) for i, o in enumerate(outputs)]
    return Row(
        int(r.id),
        r.request_id,
        r.time,
        r.model,
        r.version,
        r.arm,
        bool(r.shadow),
        float(r.latency_ms),
        int(r._mapping["items"]),
        answers,
        bool(r.has_payload),
        r.payload_type,
    )


def _version_key(v: str) -> tuple[int, int, str]:
    return (0, int(v), "") if v.isdigit() else (1, 0, v)
