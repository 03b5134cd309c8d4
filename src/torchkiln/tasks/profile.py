"""What a task says about its data, for ``bundle/profile.json``: the Task protocol's profile members.

Two descriptions, each a section of the bundle's profile:

- ``raw`` (optional, :class:`InputProfiler`): the training inputs' form before preprocessing (image modes
  and sizes, text lengths), which ``kiln predict`` and the server check each input against;
- ``reference`` (every task, :class:`ReferenceProfiler`): a sample of the held-out split as the server
  would see it (the numeric fields of ``summarize_inputs``), what the model said of it (classes and
  confidence, or a forecast's level and spread) and its penultimate-layer features, for drift monitoring.
  ``tasks/reference.py`` builds it; ``artifacts/profile.py`` stores it.

:mod:`torchkiln.tasks.base` re-exports these names; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload, runtime_checkable

import torch
from torch import nn

from torchkiln.core.config import RunConfig


@dataclass(frozen=True)
class InputWarning:
    """Why one input at predict time is far from the inputs the model was trained on.

    ``kind`` is a short fixed word of the task's ("mode", "size", "length"): the server's
    ``kiln_inputs_out_of_distribution_total`` counts by it. ``message`` says what the input is and what
    training saw, e.g. "mode RGB, trained on L".
    """

    kind: str
    message: str


@runtime_checkable
class InputProfiler(Protocol):
    """Optional for a task: profile the raw training inputs, and flag predict-time inputs far from them.

    The profile is a JSON-ready section of the bundle's ``profile.json`` (``Bundle.profile["raw"]``):
    what the inputs looked like before preprocessing (image modes and sizes, text lengths). A task
    without these methods, and a bundle without a profile, flag nothing.
    """

    def input_profile(self, data: Any) -> dict[str, Any]:
        """The raw form of the train split's inputs (``prepare``'s data), JSON-ready; ``{}`` for none."""
        ...

    def input_warnings(self, profile: Mapping[str, Any], raw: Any) -> list[InputWarning]:
        """Why ``raw`` (one decoded input, as ``preprocess`` takes it) is far from ``profile``; ``[]`` if
        it is not. Never raises: an input it cannot read gets ``[]`` (``preprocess`` says what is wrong)."""
        ...


def input_profile(task: Any, data: Any) -> dict[str, Any]:
    """``task.input_profile(data)`` for a task that profiles its inputs (an :class:`InputProfiler`); else
    ``{}``, and its bundles check no inputs."""
    return task.input_profile(data) if isinstance(task, InputProfiler) else {}


@runtime_checkable
class ReferenceProfiler(Protocol):
    """Part of every :class:`~torchkiln.tasks.base.Task`: what the reference profile of held-out data needs.

    The reference goes through the serving path: ``reference_inputs`` gives raw inputs as a request
    would carry them, then ``preprocess`` and ``summarize_inputs`` describe them exactly as the server's
    prediction log does, and ``forward_features`` and ``output_signals`` say what the model made of them.
    """

    def reference_inputs(self, cfg: RunConfig, data: Any, split: str) -> Sequence[Any]:
        """The raw inputs of ``split`` (``prepare``'s data), one per item, as ``preprocess`` takes them.

        Images: the file's bytes (what a request carries), or the decoded array for array data sets;
        texts: the texts; series: one :class:`History` per forecast window. A lazy
        :class:`RawItems` suits a split too large to hold twice.
        """
        ...

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass: ``(outputs, penultimate features (B, D) float32)``.

        The three families take the input of the model's last linear layer
        (:func:`~torchkiln.components.penultimate.forward_with_features`, a forward pre-hook).
        """
        ...

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per item, what the outputs say, by name, each ``(B,)``: a classifier's ``predicted`` (int64) and
        ``confidence`` (max softmax); a forecaster's ``forecast_level`` and ``forecast_spread``."""
        ...


class RawItems(Sequence[Any]):
    """``count`` items fetched one at a time by ``fetch(i)``: a split's raw inputs without loading them all.

    Example:
        >>> RawItems(len(paths), lambda i: paths[i].read_bytes())[0][:4]
        b'\\x89PNG'
    """

    def __init__(self, count: int, fetch: Callable[[int], Any]) -> None:
        self._count, self._fetch = count, fetch

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self._fetch(j) for j in range(*i.indices(self._count))]
        if not -self._count <= i < self._count:
            raise IndexError(f"item {i} of {self._count}")
        return self._fetch(i % self._count)
