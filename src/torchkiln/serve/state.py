"""What ``app`` and ``routes`` share: the per-app :class:`ServerState` and :class:`ApiError`.

``app`` builds the state and turns an ``ApiError`` into a JSON answer; ``routes`` reads the one and raises
the other. Both import this module, and ``app`` imports ``routes``: the dependency goes one way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from torchkiln.serve.deployments import ModelManager
from torchkiln.serve.feedback import FeedbackStore
from torchkiln.serve.metrics import ServeMetrics
from torchkiln.serve.predlog import PredictionLog
from torchkiln.serve.settings import ServeSettings


@dataclass
class ServerState:
    """What the routes share. One per app; reached through ``request.app.state.kiln``."""

    settings: ServeSettings
    manager: ModelManager
    metrics: ServeMetrics | None
    predlog: PredictionLog | None
    feedback: FeedbackStore | None = None  # the labels table of the prediction log; None when it is off
    draining: bool = False
    action_slot: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)  # one task action at a time


class ApiError(Exception):
    """An error answer: status, kind and a message that says what to do."""

    def __init__(self, status: int, kind: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers
