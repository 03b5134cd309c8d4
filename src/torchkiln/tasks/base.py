"""The Task protocol: the unit of extension.

A task owns everything that differs between problems: how data becomes batches, the model, the
loss, the metrics, and how raw inputs become model inputs and outputs become answers. The engine,
the evaluator, the bundle and (later) the exporter and the server see only this protocol, which is
what keeps training and serving preprocessing identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from torch.utils.data import DataLoader

from torchkiln.components.metric import Metric
from torchkiln.core.config import RunConfig
from torchkiln.core.config_io import RUN_CONFIG_FIX, apply_override, format_errors, read_config_file
from torchkiln.core.errors import ConfigError, PredictError, RegistryError, did_you_mean
from torchkiln.core.registry import Entry, Registry
from torchkiln.engine.optim import ParamGroup
from torchkiln.engine.step import TrainModule
from torchkiln.tasks.profile import (
    InputProfiler,
    InputWarning,
    RawItems,
    ReferenceProfiler,
    input_profile,
)

if TYPE_CHECKING:  # the annotation only: kiln's start-up does not import the drawing code
    from torchkiln.components.classification_baseline import BaselineInputs, Kind
    from torchkiln.components.gradcam import CamResult

__all__ = [
    "TASKS",
    "ConfigCalibrator",
    "Evaluation",
    "Explainer",
    "InputProfiler",
    "InputWarning",
    "ParamGroup",
    "PredictArgs",
    "PrimaryMetric",
    "RawItems",
    "ReferenceProfiler",
    "RequestLimits",
    "Task",
    "TaskAction",
    "TooManyItemsError",
    "TrainModule",
    "explainer",
    "get_task",
    "input_profile",
    "load_config",
    "task_actions",
    "validate",
]


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
    # time.monotonic() after which a task action gives up (the server's action_timeout_s): its caller has
    # had a 504 by then, and the work would only hold the action's slot. None: no deadline.
    deadline: float | None = None

    def check_deadline(self, what: str) -> None:
        """Raise :class:`PredictError` once ``deadline`` has passed; a long action calls it as it goes."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise PredictError(
                f"{what} was stopped: it ran past this server's action_timeout_s. Ask for fewer steps or "
                f"a smaller size."
            )

    def check_count(self, n: int) -> None:
        """Refuse a request of more than ``max_items`` items; a task calls it before decoding any of them.

        Raises:
            TooManyItemsError: the server answers it as ``too_many_items``.
        """
        if n > self.max_items:
            raise TooManyItemsError(
                f"The request has {n} inputs; this server takes at most {self.max_items} per request. "
                f"Split it into several requests."
            )


@dataclass(frozen=True)
class TaskAction:
    """A request a task answers beside predict, on its own route: ``POST /v1/models/{name}/{action}``.

    Unbatched: one request is one call of ``run`` in the server's thread pool (style transfer optimizes an
    image per request, for seconds). The body is validated against ``request_schema``; ``run`` raises
    :class:`~torchkiln.core.errors.PredictError` for an input it cannot use (the server answers 422 with
    the message) and returns one JSON-ready answer that fits ``response_schema``. A task lists its
    actions in an ``actions`` attribute (a tuple; none when absent).

    Example:
        >>> TaskAction("stylize", "Style transfer", StylizeRequest, StylizeAnswer, run_stylize, example)
    """

    name: str
    summary: str
    request_schema: type[BaseModel]
    response_schema: type[BaseModel]
    run: Callable[[BaseModel, RequestLimits], dict[str, Any]]
    example_request: Callable[[], dict[str, Any]]


def task_actions(task: Any) -> tuple[TaskAction, ...]:
    """The task's :class:`TaskAction` routes; ``()`` for a task without an ``actions`` attribute."""
    return tuple(getattr(task, "actions", ()))


@runtime_checkable
class Explainer(Protocol):
    """Optional for a task: heatmaps of where in each input the model found its answer.

    ``kiln explain``, ``Predictor.explain``, the server's ``explain=true`` and the dashboard reach it
    through :func:`explainer`. The image classifier implements it with Grad-CAM over its last
    convolutional block (:mod:`torchkiln.components.gradcam`).
    """

    def explain(
        self, cfg: RunConfig, model: nn.Module, inputs: Any, *, target: Any = None, method: str = "gradcam"
    ) -> CamResult:
        """Heatmaps of ``model`` (eager, in eval mode) on a preprocessed batch ``inputs`` on its device.

        ``target``: None for each input's predicted class, a class index, or one per input; ``method``:
        one of :data:`~torchkiln.components.gradcam.METHODS`. Raises PredictError for a model it cannot
        explain (no convolutional layer), saying which models it can.
        """
        ...


def explainer(task: Any) -> Explainer:
    """``task`` as an :class:`Explainer`; a task without ``explain`` is a PredictError naming its kind.

    Example:
        >>> cams = explainer(bundle.task).explain(bundle.config, model, x, method="gradcam++")
    """
    if isinstance(task, Explainer):
        return task
    able = [entry.name for entry in TASKS if isinstance(entry.obj, Explainer)]
    raise PredictError(
        f"Task '{getattr(task, 'kind', type(task).__name__)}' cannot explain its answers: it has no explain "
        f"method; heatmaps exist for {', '.join(able) or 'no installed task'}. Explain a bundle of "
        f"{'that task' if len(able) == 1 else 'one of those tasks'} instead."
    )


@runtime_checkable
class Baselined(Protocol):
    """Optional for a classifier family: the honest linear baseline its models must beat.

    ``kiln evaluate`` puts the baseline beside the model on the same split, and the training summary warns
    when the model is below it on val (:mod:`torchkiln.tasks.classification_baseline`). ``baseline_kind``
    is ``"text"`` (TF-IDF + logistic regression) or ``"pixels"`` (logistic regression on the images); see
    :mod:`torchkiln.components.classification_baseline`.
    """

    baseline_kind: Kind

    def baseline_inputs(self, cfg: RunConfig, data: Any, split: str) -> BaselineInputs:
        """The items of ``split`` of ``data`` (from ``prepare``) as the baseline reads them, in order."""
        ...


@runtime_checkable
class ConfigCalibrator(Protocol):
    """Optional for a task whose calibration the answers read from the config (see ``Task.calibrate``).

    ``calibrated_config(cfg, calibration)`` returns a resolved copy of ``cfg`` with what ``calibrate``
    chose filled in (a classifier's ``task.threshold.chosen``); the bundle is saved with that copy.
    """

    def calibrated_config(self, cfg: RunConfig, calibration: Mapping[str, Any]) -> RunConfig: ...


class TooManyItemsError(PredictError):
    """A request carries more items than its :class:`RequestLimits` allow."""


RequestT = TypeVar("RequestT", bound=BaseModel)


def checked_request(request: BaseModel, schema: type[RequestT]) -> RequestT:
    """``request`` as the task's ``request_schema``; a body parsed with another task's is a PredictError.

    Example:
        >>> body = checked_request(request, ImagePredictRequest)  # in ImageClassificationTask.decode_request
    """
    if not isinstance(request, schema):

        def a(name: str) -> str:
            return f"{'an' if name[0] in 'AEIOU' else 'a'} {name}"

        raise PredictError(
            f"decode_request got {a(type(request).__name__)}; expected {a(schema.__name__)} (this task's "
            f"request_schema). Fix: parse the JSON body with task.request_schema.model_validate(body) first."
        )
    return request


@dataclass(frozen=True)
class PredictArgs:
    """What ``kiln predict`` was given besides the bundle; a task reads the ones in its ``cli_options``."""

    paths: tuple[Path, ...] = ()  # FILES...
    texts: tuple[str, ...] = ()  # --text
    file: Path | None = None  # --file
    history: Path | None = None  # --history
    horizon: int | None = None  # --horizon
    top_k: int | None = None  # --top-k
    out_dir: Path | None = None  # --out FOLDER: tasks that draw their answers write images there

    FLAGS: ClassVar[dict[str, str]] = {
        "paths": "file arguments",
        "texts": "--text",
        "file": "--file",
        "history": "--history",
        "horizon": "--horizon",
        "top_k": "--top-k",
        "out_dir": "--out FOLDER",
    }

    def given(self) -> list[str]:
        """The fields set on the command line, in flag order."""
        return [name for name in self.FLAGS if getattr(self, name) not in (None, ())]


@runtime_checkable
class Evaluation(Protocol):
    """What ``Task.evaluate`` returns: the figures, and where the report and metrics.json were written."""

    split: str
    report: Path
    metrics_file: Path
    notes: Sequence[str]  # what was skipped and why; printed as notes

    def summary(self) -> list[Any]:
        """What ``kiln evaluate`` prints: lines (rich markup) and tables."""
        ...


@runtime_checkable
class Task(ReferenceProfiler, Protocol):
    """What every task provides. ``prepare`` runs once per run; the rest are pure given the config.

    The members of the reference profile (``reference_inputs``, ``forward_features``,
    ``output_signals``) are declared in :class:`~torchkiln.tasks.profile.ReferenceProfiler`.

    Optional: ``doctor_data(cfg, resolved, data) -> DoctorData`` gives ``kiln doctor``'s data checks each
    split's images, texts or series and labels, who chose the normalization, and how to refit on part of
    train (:class:`~torchkiln.components.doctor_data.DoctorSource`). ``cfg`` is the config as written,
    ``resolved`` and ``data`` what ``prepare`` returned (None when it refused the data). Without it, only
    the config is checked. The families implement it in their ``doctor.py``.
    """

    kind: str
    summary: str  # one line for ``kiln list tasks``
    config_type: type[RunConfig]  # the run config of this task: its ``task`` and ``data`` sections
    primary_metric: PrimaryMetric  # a key of what ``metrics(cfg).compute()`` returns
    image_input: bool  # inputs are image batches (channels_last pays off; the engine's "auto")
    # Model input axes whose size varies: (0,) the batch; texts (0, 1). None: the model does not export to
    # ONNX, and the task's ``export_unsupported`` says why (the exporter shows it).
    input_dynamic_axes: tuple[int, ...] | None

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
        """A fresh :class:`~torchkiln.components.metric.Metric`; ``compute()`` gives ``{name: float}``."""
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
        """After training, with the best weights loaded: fit what is calibrated on held-out data.

        ``loader`` is the val split's (None without one). The result must reach every answer, so it
        lives where the bundle, its exports and the server all read it: in the model's buffers
        (forecasting conformalizes its quantile intervals into ``interval_offset``), or in the bundle's
        config, for a task that also has ``calibrated_config(cfg, calibration) -> RunConfig``
        (:class:`ConfigCalibrator`): the bundle is saved with that resolved copy.
        The classification tasks choose a two-class model's threshold for ``task.threshold`` on val and
        fill in ``task.threshold.chosen``; ``postprocess`` answers at it. The returned JSON-ready summary
        goes into the bundle's metadata (``calibration``), ``{}`` when there is nothing to calibrate.
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

    # Fields of ``summarize_inputs`` that describe the request, not what the model reads (a forecast's
    # history length beyond its lookback): logged, but left out of the reference profile, so never
    # compared for drift.
    request_only_fields: frozenset[str]

    def example_request(self) -> dict[str, Any]:
        """A real, valid JSON request body, shown in the OpenAPI docs."""
        ...

    def example_config(self, root: Path) -> dict[str, Any]:
        """Write a tiny real dataset under ``root``; return a raw config that trains on it in seconds.

        The conformance suite (tests/conformance/test_tasks.py) runs every task and model on it.
        """
        ...

    # Evaluation and the command line.
    cli_options: frozenset[str]  # the PredictArgs fields ``kiln predict`` takes for this task

    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Evaluation:
        """Score ``bundle`` on ``split``; write ``metrics.json`` and ``report.html`` into ``out_dir``."""
        ...

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        """Predict what ``kiln predict`` was given; what to print (rich lines or tables; JSON lines)."""
        ...


ENTRY_POINTS = "torchkiln.tasks"  # the entry point group: name = task kind, value = the Task object


class TaskRegistry(Registry[Task]):
    """Tasks by kind, found through the ``torchkiln.tasks`` entry point group on first use.

    The built-in families are entry points of this package (pyproject.toml), and a separate package can
    add a family the same way, so no generic module imports or names one. ``add`` still registers a
    task directly (a test's toy task).
    """

    def __init__(self) -> None:
        super().__init__("task")
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in sorted(entry_points(group=ENTRY_POINTS), key=lambda e: e.name):
            if ep.name in self._entries:
                continue
            task = ep.load()
            if getattr(task, "kind", None) != ep.name:
                raise RegistryError(
                    f"The entry point '{ep.name}' = {ep.value} gives a task of kind "
                    f"{getattr(task, 'kind', None)!r}; expected kind '{ep.name}'. Make the entry point's "
                    "name the task's kind."
                )
            self.add(ep.name, task, summary=task.summary)

    def get(self, name: str) -> Task:
        self._load()
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[Entry[Task]]:
        self._load()
        return super().__iter__()

    def names(self) -> list[str]:
        self._load()
        return super().names()


TASKS = TaskRegistry()


def get_task(kind: str) -> Task:
    return TASKS.get(kind)


def validate(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a raw config with the run config of its task (``task.kind`` picks it).

    Raises:
        ConfigError: no task, an unknown task, or any invalid setting (all problems listed, with fixes).

    Example:
        >>> validate({"task": "image-classification", "data": "data/shapes"}).train.epochs
        10
    """
    task = raw.get("task") if isinstance(raw, Mapping) else None
    kind = task if isinstance(task, str) else task.get("kind") if isinstance(task, Mapping) else None
    if not isinstance(kind, str):
        raise ConfigError(
            "The run config has no task: 'task' is missing or has no 'kind'. Expected e.g. "
            f"'task: {TASKS.names()[0]}'; the tasks are {', '.join(TASKS.names())} (kiln list tasks). "
            f"{RUN_CONFIG_FIX}"
        )
    if kind not in TASKS:
        raise ConfigError(
            f"The run config's task is '{kind}', which is not a task.{did_you_mean(kind, TASKS.names())} "
            f"Expected one of {', '.join(TASKS.names())} (kiln list tasks). {RUN_CONFIG_FIX}"
        )
    model = TASKS.get(kind).config_type
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, model)) from None


def load_config(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a run config.

    Args:
        source: a YAML file path, or an already-parsed mapping.
        overrides: ``key.path=value`` strings; each value is parsed as YAML, then validated
            together with the file, so a bad value gets the same error as in the file.

    Returns:
        The validated, frozen run config of the task (data-dependent fields still unset).

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, or a value is invalid.

    Example:
        >>> cfg = load_config("kiln.yaml", ["train.epochs=3"])
    """
    raw = read_config_file(source) if isinstance(source, str | Path) else dict(source)
    for item in overrides:
        raw = apply_override(raw, item)
    return validate(raw)
