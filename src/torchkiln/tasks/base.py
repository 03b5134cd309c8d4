"""The Task protocol: the unit of extension.

A task owns everything that differs between problems: how data becomes batches, the model, the
loss, the metrics, and how raw inputs become model inputs and outputs become answers. The engine,
the evaluator, the bundle and (later) the exporter and the server see only this protocol, which is
what keeps training and serving preprocessing identical.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric

from torchkiln.config.schema import RunConfig
from torchkiln.engine.optim import ParamGroup
from torchkiln.engine.step import TrainModule
from torchkiln.registry import Registry

__all__ = ["TASKS", "ParamGroup", "PrimaryMetric", "RequestLimits", "Task", "TrainModule", "get_task"]


@dataclass(frozen=True)
class PrimaryMetric:
    """The one number a task is judged by; export gates and comparisons use it.

    ``scale`` turns the metric into the unit budgets are given in (accuracy 0.93 -> 93 points).
    """

    name: str
    higher_is_better: bool = True
    scale: float = 100.0
    unit: str = "points"


@dataclass(frozen=True)
class RequestLimits:
    """What one serving request may carry; the server fills it from its settings."""

    max_items: int = 64
    max_pixels: int = 4096 * 4096  # per image; a small PNG can decode to gigabytes


@runtime_checkable
class Task(Protocol):
    """What every task provides. ``prepare`` runs once per run; the rest are pure given the config."""

    kind: str
    primary_metric: PrimaryMetric  # a key of what ``metrics(cfg).compute()`` returns
    image_input: bool  # inputs are image batches (channels_last pays off; the engine's "auto")
    input_dynamic_axes: tuple[int, ...]  # model input axes whose size varies: (0,) the batch; texts (0, 1)

    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, Any]:
        """Load and validate the data; return the config resolved from it and the data handle.

        ``splits`` limits the (expensive) loading to those splits, e.g. ``{"test"}`` to evaluate.
        ``state`` is fitted preprocessing from a bundle (:meth:`load_state`): given, it is reused as it
        is, never refit, so a bundle is evaluated with exactly the preprocessing it was trained with.
        """
        ...

    def state_files(self, data: Any) -> dict[str, bytes]:
        """Fitted preprocessing that the config cannot hold (a tokenizer), by file name; ``{}`` if none.

        It was fit on the training split only. The bundle stores these files beside the weights.
        """
        ...

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> Any:
        """Parse what :meth:`state_files` wrote; the result goes to ``preprocess`` and ``prepare``."""
        ...

    def train_module(self, cfg: RunConfig) -> TrainModule:
        """How this task trains: its modules, optimizers, metrics and steps (the engine's only view).

        The one-model tasks return :class:`~torchkiln.engine.supervised.Supervised` over the methods
        below (``build_model``, ``to_device``, ``loss``, ``metrics``, ``param_groups``).
        """
        ...

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """The model for a *resolved* config (no data needed: bundles rebuild models this way)."""
        ...

    def loader(self, cfg: RunConfig, data: Any, split: str, *, train: bool) -> DataLoader: ...

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        """Move a batch to ``device`` and return ``(inputs, targets)``."""
        ...

    def loss(self, cfg: RunConfig) -> nn.Module: ...

    def metrics(self, cfg: RunConfig) -> Metric:
        """A fresh torchmetrics ``Metric`` whose ``compute()`` gives ``{name: float}``."""
        ...

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]: ...

    def preprocess(self, cfg: RunConfig, inputs: Sequence[Any], state: Any = None) -> Any:
        """Raw inputs (paths, bytes, texts...) -> a model input batch, exactly as in training."""
        ...

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[Any]) -> Any:
        """Join several ``preprocess`` results into one model batch (the server batches requests so).

        Images: a concatenation. Texts: padded to the longest row.
        """
        ...

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Model outputs -> one JSON-ready answer per input.

        ``raw`` are the inputs the outputs came from, when the answer needs them (a forecast is dated
        from the last timestamp of its history); the classification tasks ignore it.
        """
        ...

    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        """After training, with the best weights loaded: fit what is calibrated on held-out windows.

        ``loader`` is the val split's (None without one). The result lives in the model's buffers, so the
        bundle, its exports and the server carry it; the returned JSON-ready summary goes into the
        bundle's metadata, ``{}`` when there is nothing to calibrate. Forecasting conformalizes its
        quantile intervals here; the classification tasks return ``{}``.
        """
        ...

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        """Labels and preprocessing to store in the bundle (JSON-ready)."""
        ...

    # Serving. The server builds its endpoints from these, so it needs no per-task code.
    request_schema: type[BaseModel]  # the JSON body of POST /v1/models/{name}/predict
    response_schema: type[BaseModel]  # one answer per input, as ``postprocess`` returns it
    upload_media: str | None  # what a multipart upload holds ("image/*"), or None if none is taken

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[Any]:
        """A validated JSON body -> raw inputs for ``preprocess``. Raises PredictError naming the item."""
        ...

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[Any]:
        """Uploaded files (multipart) -> raw inputs for ``preprocess``; same checks as ``decode_request``."""
        ...

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        """Small JSON-ready descriptions of each input for the prediction log and drift monitoring."""
        ...

    def example_request(self) -> dict[str, Any]:
        """A real, valid JSON request body, shown in the OpenAPI docs."""
        ...


TASKS: Registry[Task] = Registry("task")


def get_task(kind: str) -> Task:
    return TASKS.get(kind)
