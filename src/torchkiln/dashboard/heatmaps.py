"""Grad-CAM heatmaps beside logged image inputs: drawn by the running server on request, kept here.

The dashboard loads no model. When a heatmap is asked for (a button beside an image input), it sends the
logged request's kept body to the server's ``POST /v1/models/NAME/explain`` with the version that answered
that row, which draws a heatmap per input without logging a prediction. The answers of the last
``MAX_ROWS`` rows are kept, so a second look costs nothing. A refusal (the served bundle is an ONNX
variant, the version is no longer served) is kept too and shown in place of the heatmap; a server that
cannot be reached is said, and asked again next time.
"""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict
from dataclasses import dataclass

from torchkiln.core.errors import ServeError
from torchkiln.dashboard.server import Server, ServerAnswer

MAX_ROWS = 128  # rows whose heatmaps are kept, the least recently asked for going first
METHOD = "gradcam"


@dataclass(frozen=True)
class Heatmap:
    """One input's heatmap (``png``, for class ``label``), or why there is none (``reason``)."""

    png: bytes | None = None
    label: str = ""
    reason: str = ""

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode("ascii")


class Heatmaps:
    """Heatmaps by (row id, version), fetched from ``server`` once each (thread-safe: pages ask in threads).

    Example:
        >>> Heatmaps(Server(settings)).get(41, 0, body=body, media="application/json", model="shapes",
        ...                                 version="3f2a9c1b0d4e").label
        'hbar'
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._kept: OrderedDict[tuple[int, str], list[Heatmap]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, row_id: int, item: int, *, body: bytes, media: str, model: str, version: str) -> Heatmap:
        """Input ``item``'s heatmap of logged row ``row_id`` (blocking: call it in a thread)."""
        key = (row_id, version)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
        if found is None:
            found, keep = self._fetch(body, media, model, version)
            if keep:
                with self._lock:
                    self._kept[key] = found
                    while len(self._kept) > MAX_ROWS:
                        self._kept.popitem(last=False)
        if len(found) == 1 and found[0].png is None:  # a refusal, for every input of the row
            return found[0]
        if not 0 <= item < len(found):
            return Heatmap(reason=f"the server drew {len(found)} heatmap(s), none for input {item}")
        return found[item]

    def _fetch(self, body: bytes, media: str, model: str, version: str) -> tuple[list[Heatmap], bool]:
        """The row's heatmaps, and whether to keep them (an unreachable server is asked again)."""
        try:
            answer = self.server.explain(model, body, media, version=version, method=METHOD)
        except ServerAnswer as exc:  # it answered: this version cannot explain this body, for good
            return [Heatmap(reason=str(exc))], True
        except ServeError as exc:  # no server configured, or none reachable
            return [Heatmap(reason=str(exc))], False
        items = answer.get("explanations") or []
        return [Heatmap(base64.b64decode(e["heatmap_png"]), str(e["label"])) for e in items], True
