"""What a logged request's inputs look like on a page: an image thumbnail, the text, or a series sparkline.

Only kept bodies can be shown (the server keeps ``log_payload_sample_rate`` of them). A body is decoded by
the task whose request schema it fits, as the server decoded it; which task that is, is learned once per
model. The dashboard never names a task family: a task whose requests carry images takes image uploads
(``upload_media``), a text arrives as a string, a series as an object with ``values``. A generator's
request carries only seeds, so its inputs have no preview.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchkiln.core.errors import KilnError
from torchkiln.dashboard.log import Box
from torchkiln.tasks import TASKS
from torchkiln.tasks.base import Explainer, RequestLimits, Task

THUMBNAIL_PX = 96
BOX_COLOUR = (255, 214, 0)  # a detector's boxes on a thumbnail: yellow reads on photos and on grey
TEXT_CHARS = 280
SPARK_W, SPARK_H = 120, 32
LIMITS = RequestLimits(max_items=10_000)


@dataclass(frozen=True)
class InputView:
    """One input as a page shows it. ``kind``: image, text, series or none (``note`` says why)."""

    kind: str
    text: str = ""  # a text input, cut to TEXT_CHARS
    points: str = ""  # a series: the SVG polyline's points
    note: str = ""
    explains: bool = False  # an image whose task draws heatmaps: the page offers one (dashboard/heatmaps.py)


def image_view(task: Task) -> InputView:
    """An image input of ``task``: its thumbnail, and a heatmap button when the task explains answers."""
    return InputView("image", explains=isinstance(task, Explainer))


class Decoder:
    """Decodes kept bodies into the raw inputs the server saw, remembering each model's task."""

    def __init__(self) -> None:
        self._task_of: dict[str, Task] = {}

    def decode(self, model: str, body: bytes, media: str | None) -> list[Any] | None:
        """The raw inputs of a JSON body; None for a body no task decodes (a multipart upload)."""
        if not media or not (media == "application/json" or media.endswith("+json")):
            return None
        known = self._task_of.get(model)
        tasks = [known] if known else [entry.obj for entry in TASKS]
        for task in tasks:
            try:
                request = task.request_schema.model_validate_json(body)
                raw = list(task.decode_request(request, limits=LIMITS))
            except (KilnError, ValueError):
                continue
            self._task_of[model] = task
            return raw
        return None

    def task(self, model: str) -> Task | None:
        return self._task_of.get(model)

    def views(self, model: str, body: bytes | None, media: str | None, items: int) -> list[InputView]:
        """One view per input of a logged request."""
        if body is None:
            return [InputView("none", note="body not kept")] * items
        raw = self.decode(model, body, media)
        if raw is None:
            return [InputView("none", note=f"{media or 'unknown'} body not shown")] * items
        task = self._task_of[model]
        return [_view(task, x) for x in raw]


def takes_images(task: Task) -> bool:
    """The task's inputs are images (a classifier's, a detector's), not only its model's (a generator's)."""
    return task.upload_media == "image/*"


def _view(task: Task, raw: Any) -> InputView:
    if takes_images(task):
        return image_view(task)
    if isinstance(raw, str):
        return InputView("text", text=raw if len(raw) <= TEXT_CHARS else raw[: TEXT_CHARS - 1] + "…")
    values = getattr(raw, "values", None)
    if isinstance(values, np.ndarray) and values.size:
        return InputView("series", points=sparkline(values.reshape(len(values), -1)[:, 0]))
    return InputView("none", note="no preview for this input")


def sparkline(values: np.ndarray) -> str:
    """The points of an SVG polyline of ``values`` in a SPARK_W x SPARK_H box (finite values only)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return ""
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    xs = np.linspace(1, SPARK_W - 1, len(v)) if len(v) > 1 else np.array([SPARK_W / 2])
    ys = SPARK_H - 1 - (v - lo) / span * (SPARK_H - 2)
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))


def thumbnail(raw: Any, boxes: Sequence[Box] = ()) -> bytes:
    """A PNG of at most THUMBNAIL_PX on its longer side, from an image input's file bytes, with a detector's
    ``boxes`` (in the input's pixels) drawn on it. An input that carries request options besides its
    image (a detector's) holds the bytes in ``image``.

    Raises:
        ValueError: the bytes are not an image Pillow reads.
    """
    from PIL import Image, ImageDraw

    data = getattr(raw, "image", raw)
    if not isinstance(data, bytes):
        raise ValueError(f"an image input is {type(data).__name__}, not the file's bytes")
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        img.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a fraction of the size
        small = img.convert("RGB" if boxes or img.mode not in ("L", "RGB") else img.mode)
        small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    if boxes:
        sx, sy = small.width / width, small.height / height
        pen = ImageDraw.Draw(small)
        for b in boxes:
            x1, y1 = b.x1 * sx, b.y1 * sy
            pen.rectangle((x1, y1, max(x1, b.x2 * sx - 1), max(y1, b.y2 * sy - 1)), outline=BOX_COLOUR)
    out = io.BytesIO()
    small.save(out, format="PNG")
    return out.getvalue()
