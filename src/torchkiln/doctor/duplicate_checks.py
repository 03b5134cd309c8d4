"""Leakage: val or test items that copy a training item (or test items copying val), and copies within train.

Images are compared exactly (their pixels) and near (their standardized thumbnails, within
:data:`~torchkiln.components.duplicates.NEAR`); texts after normalizing case, spaces and punctuation.
"""

from __future__ import annotations

import math

import numpy as np

from torchkiln.components.doctor_data import SplitItems
from torchkiln.components.duplicates import image_matches, text_matches
from torchkiln.doctor.findings import ITEMS, Finding, plural, share
from torchkiln.doctor.registry import check
from torchkiln.doctor.subject import Subject

PAIRS = (("val", "train"), ("test", "train"), ("test", "val"))


def leak_severity(k: int, n: int) -> str:
    """A warning when the copies could move the split's accuracy (k / n at most) by more than its own
    sampling error (0.5 / sqrt(n) at worst); below that they are an info: the score could not tell."""
    return "warning" if k > 0.5 * math.sqrt(n) else "info"


def _matches(s: Subject, query: str, ref: str | None) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(query items with a copy, the copy of each in ``ref``, what they are) for images or texts."""
    q, r = s.items(query), s.items(ref or query)
    if q is None or r is None:
        return None
    if q.images is not None and r.images is not None:
        qs, rs = s.scan(query), s.scan(ref or query)
        if qs is None or rs is None:
            return None
        m = image_matches(qs, None if ref is None else rs)
        exact = int(m.exact[m.found].sum())
        return m.found, m.index[m.found], f"{exact:,} exact, {len(m.found) - exact:,} near"
    if q.texts is not None and r.texts is not None:
        index = text_matches(q.texts, None if ref is None else r.texts)
        found = np.flatnonzero(index >= 0)
        return found, index[found], "same text once case, spaces and punctuation are set aside"
    return None


def _kind(part: SplitItems) -> str:
    return "images" if part.images is not None else "texts"


def _conflicts(q: SplitItems, r: SplitItems, found: np.ndarray, copies: np.ndarray) -> int:
    if q.labels is None or r.labels is None:
        return 0
    return int((q.labels[found] != r.labels[copies]).sum())


def _pairs(q: SplitItems, r: SplitItems, query: str, ref: str, found: np.ndarray, copies: np.ndarray):
    return tuple(
        f"{query} {q.name(int(i))} ~ {ref} {r.name(int(j))}"
        for i, j in zip(found[:ITEMS], copies[:ITEMS], strict=True)
    )


@check("duplicates")
def duplicates(s: Subject) -> list[Finding]:
    """No val or test item copies a training item, and no test item copies a val item (leakage)."""
    out = []
    for query, ref in PAIRS:
        got = _matches(s, query, ref)
        if got is None or not len(got[0]):
            continue
        found, copies, how = got
        q, r = s.items(query), s.items(ref)
        assert q is not None and r is not None  # _matches found both
        n, k = len(q), len(found)
        items = _pairs(q, r, query, ref, found, copies)
        clash = _conflicts(q, r, found, copies)
        labels = f"; {plural(clash, 'pair')} of them carry different labels" if clash else ""
        out.append(
            Finding(
                "duplicates",
                leak_severity(k, n),
                f"{share(k, n)} {query} {_kind(q)} copy a {ref} item ({how}){labels}, e.g. {items[0]}: "
                f"they can lift a per-item score on {query} (accuracy, recall) by up to {100 * k / n:.2g} "
                f"points.",
                f"Remove the copies from {query} (kiln doctor --json lists them), or split so that each "
                f"picture, text or patient lands in one split only: a copy scores what the model memorized.",
                count=k,
                items=items,
            )
        )
    return out


@check("train-duplicates")
def train_duplicates(s: Subject) -> list[Finding]:
    """Copies within the train split: harmless unless their labels disagree (then one of them is wrong)."""
    got = _matches(s, "train", None)
    if got is None or not len(got[0]):
        return []
    found, copies, how = got
    part = s.items("train")
    assert part is not None
    items = _pairs(part, part, "train", "train", found, copies)
    clash = _conflicts(part, part, found, copies)
    out = [
        Finding(
            "train-duplicates",
            "info",
            f"{share(len(found), len(part))} train {_kind(part)} copy another train item ({how}), e.g. "
            f"{items[0]}: they weigh twice in training.",
            "Nothing to do unless the copies are many; remove them to weigh every item once.",
            count=len(found),
            items=items,
        )
    ]
    if clash:
        labels = part.labels
        assert labels is not None  # clash counts labelled pairs only
        bad = [it for it, i, j in zip(items, found, copies, strict=False) if labels[i] != labels[j]]
        out.append(
            Finding(
                "train-duplicates",
                "warning",
                f"{plural(clash, 'train item')} have a copy with another label, e.g. {bad[0]}: at most one "
                f"label of each pair is right.",
                "Fix the labels of these pairs (kiln doctor --json lists them), or remove the wrong copy.",
                count=clash,
                items=tuple(bad[:ITEMS]),
            )
        )
    return out
