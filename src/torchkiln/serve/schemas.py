"""The HTTP API's schema families. Per-task request and response items come from the task registry."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model, model_validator

from torchkiln.tasks.base import TASKS


class ErrorResponse(BaseModel):
    """Every error the server answers with: what happened, what was expected, how to fix it."""

    detail: str
    type: str = Field(description="A stable machine-readable kind, e.g. 'invalid_input' or 'queue_full'.")
    request_id: str | None = None


class ServedVersion(BaseModel):
    """A loaded version as anyone may see it: no file-system paths (those are in ``ServedVersionDetail``)."""

    arm: Literal["champion", "challenger"]
    version: str
    runtime: str
    loaded_at: datetime


class ServedVersionDetail(ServedVersion):
    uri: str = Field(description="Where this version was loaded from: a folder or a models:/ URI.")


class ModelInfo(BaseModel):
    """A served model in ``GET /v1/models``: names, versions, task and schemas, nothing internal."""

    name: str
    task: str | None = Field(description="The task kind; null until a version has loaded.")
    ready: bool
    versions: list[ServedVersion]
    traffic: dict[str, float | bool] = Field(description="champion/challenger shares, and shadow on/off.")
    labels: list[str] | None = None
    input_schema: dict[str, Any] | None = Field(description="JSON schema of the predict request body.")


class ModelDetail(ModelInfo):
    """A served model in ``GET /admin/models``: also where each version came from and the load failures."""

    versions: list[ServedVersionDetail]  # type: ignore[assignment]  # a subclass of the public item
    errors: dict[str, str] = Field(description="The last failed load per arm; the old version kept serving.")


class ModelList(BaseModel):
    models: list[ModelInfo]


class ModelDetailList(BaseModel):
    models: list[ModelDetail]


class Health(BaseModel):
    status: Literal["ok", "ready", "loading", "failed", "draining"]
    detail: str | None = None


class Workers(BaseModel):
    """How many of the server's worker processes serve the reloaded versions."""

    total: int
    serving: int


class ReloadResult(BaseModel):
    results: dict[str, dict[str, str]] = Field(description="model -> arm -> outcome")
    workers: Workers


class ReloadFailed(ErrorResponse):
    """A reload that failed (409): an arm did not load (its old version kept serving), or not every worker
    serves the new versions."""

    results: dict[str, dict[str, str]] = Field(description="model -> arm -> outcome")
    workers: Workers


class TrafficUpdate(BaseModel):
    """A model's new traffic rule: a sticky A/B share for the challenger (a canary), or shadow mirroring.
    A field left out keeps its current value."""

    model_config = ConfigDict(extra="forbid")

    challenger_weight: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of request keys the challenger answers (0 to 1)."
    )
    shadow: bool | None = Field(None, description="Mirror every request to the challenger; never return it.")


class TrafficResult(BaseModel):
    model: str
    traffic: dict[str, float | bool] = Field(description="champion/challenger shares, and shadow on/off.")
    workers: Workers


class TrafficFailed(ErrorResponse):
    """A traffic change refused (409) because the model has no challenger, or one that not every worker
    applied in time (then ``workers`` says how many did)."""

    workers: Workers | None = None


class InputWarningItem(BaseModel):
    """An input far from the inputs the model was trained on; it was answered all the same."""

    input: int = Field(description="The input's index in the request (0-based).")
    kind: str = Field(description="What is far: 'mode' or 'size' for images.")
    message: str = Field(
        description="What the input is and what training saw, e.g. 'mode RGB, trained on L'."
    )


class ExplanationItem(BaseModel):
    """A Grad-CAM heatmap of one input: where the model found its evidence for ``label``."""

    input: int = Field(description="The input's index in the request (0-based).")
    label: str = Field(description="The class the heatmap explains: the input's predicted class.")
    method: Literal["gradcam", "gradcam++"]
    heatmap_png: str = Field(
        description="A base64 PNG: the heatmap in jet colours (red: the strongest evidence, blue: none) over "
        "the input as the model saw it (resized and cropped to the model's input size)."
    )


REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
_CLASS_LABEL = Field(min_length=1, max_length=200)


class FeedbackRequest(BaseModel):
    """The true label of a prediction's input(s): ``label`` (with ``index`` for one input of several), or
    ``labels``, one per input of the request (null skips one)."""

    # The schema says what the validator says, so a body valid against it is one the server reads.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [{"required": ["label"]}, {"required": ["labels"], "not": {"required": ["index"]}}]
        },
    )

    request_id: str = Field(
        pattern=REQUEST_ID_PATTERN, description="The prediction's request_id (its X-Request-ID header)."
    )
    # null is taken (as a missing key) but not documented: the schema's oneOf reads "the key is there".
    label: Annotated[str | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200})] = (
        Field(None, description="The true class of the input (of input `index` for a request of several).")
    )
    index: Annotated[int | None, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 1_000_000})] = (
        Field(None, ge=0, le=1_000_000, description="Which input `label` is for (0-based); only with label.")
    )
    labels: Annotated[
        list[Annotated[str, _CLASS_LABEL] | None] | None,
        WithJsonSchema(
            {
                "type": "array",
                "items": {"anyOf": [{"type": "string", "minLength": 1, "maxLength": 200}, {"type": "null"}]},
                "minItems": 1,
                "maxItems": 4096,
            }
        ),
    ] = Field(None, min_length=1, max_length=4096, description="One true class per input, in order.")

    @model_validator(mode="after")
    def _one_of(self) -> FeedbackRequest:
        if (self.label is None) == (self.labels is None):
            raise ValueError("give exactly one of 'label' (one input) or 'labels' (one per input)")
        if self.labels is not None and self.index is not None:
            raise ValueError("'index' goes with 'label'; 'labels' already has one label per input")
        if self.label is not None and not 1 <= len(self.label) <= 200:
            raise ValueError("'label' must have 1 to 200 characters")
        return self


class FeedbackItem(BaseModel):
    index: int = Field(description="The input's index in the request.")
    label: str = Field(description="The true class, as received.")
    predicted: str | None = Field(description="What the answering version predicted for it.")
    correct: bool


class FeedbackAccepted(BaseModel):
    """Stored labels, joined to the prediction they are for."""

    request_id: str
    model: str
    version: str = Field(description="The version that answered the request.")
    arm: Literal["champion", "challenger"]
    items: list[FeedbackItem]


class Estimate(BaseModel):
    """A rate and its 95 % Wilson score interval."""

    value: float
    low: float
    high: float
    successes: int
    total: int


class ClassPerformance(BaseModel):
    label: str
    support: int = Field(description="Labelled inputs of this class.")
    predicted: int = Field(description="Labelled inputs predicted as this class.")
    precision: Estimate | None = Field(description="null when no labelled input was predicted as it.")
    recall: Estimate | None = Field(description="null when no labelled input is of it.")


class VersionPerformance(BaseModel):
    version: str
    shadow: bool = Field(description="true: scored on its shadow answers, which were never returned.")
    labelled: int
    accuracy: Estimate
    classes: list[ClassPerformance]


class PerformanceReport(BaseModel):
    """Live accuracy, precision and recall per version, over the window's labelled inputs."""

    model: str
    window: str = Field(description="N: the last N labelled inputs; 30m, 1h, 7d: predicted since then.")
    since: datetime | None = Field(description="The start of a time window; null for a count window.")
    labelled: int = Field(description="Labelled inputs in the window.")
    versions: list[VersionPerformance]


@cache
def predict_response_model() -> type[BaseModel]:
    """``PredictResponse``: its ``predictions`` items are the union of every registered task's item schema."""
    items = tuple(entry.obj.response_schema for entry in TASKS)
    item_type: Any = items[0] if len(items) == 1 else Union[items]  # noqa: UP007 - a runtime tuple
    return create_model(
        "PredictResponse",
        model=(str, Field(description="The served name that answered.")),
        version=(str, Field(description="The model version that answered.")),
        arm=(Literal["champion", "challenger"], Field(description="Which A/B arm answered.")),
        request_id=(str, ...),
        predictions=(list[item_type], Field(description="One answer per input, in input order.")),
        warnings=(
            list[InputWarningItem],
            Field(
                default_factory=list,
                description="Present only when an input is far from the training inputs: one item per "
                "reason (kiln_inputs_out_of_distribution_total counts them).",
            ),
        ),
        explanations=(
            list[ExplanationItem],
            Field(
                default_factory=list,
                description="Present only with explain=true: one Grad-CAM heatmap per input, in input order.",
            ),
        ),
    )


@cache
def explain_response_model() -> type[BaseModel]:
    """``ExplainResponse``: the answers of ``POST /v1/models/{name}/explain`` and a heatmap per input."""
    predict = predict_response_model()
    return create_model(
        "ExplainResponse",
        model=(str, Field(description="The served name that answered.")),
        version=(str, Field(description="The model version that drew the heatmaps.")),
        arm=(Literal["champion", "challenger"], Field(description="Which A/B arm serves that version.")),
        request_id=(str, ...),
        predictions=(predict.model_fields["predictions"].annotation, Field(description="One per input.")),
        explanations=(list[ExplanationItem], Field(description="One Grad-CAM heatmap per input, in order.")),
    )


def request_schemas() -> dict[str, dict[str, Any]]:
    """Component name -> JSON schema of the bodies the routes parse themselves: every registered task's
    predict request, the feedback request and the traffic rule."""
    schemas = {
        entry.obj.request_schema.__name__: entry.obj.request_schema.model_json_schema() for entry in TASKS
    }
    return schemas | {
        "FeedbackRequest": FeedbackRequest.model_json_schema(),
        "TrafficUpdate": TrafficUpdate.model_json_schema(),
    }


def predict_request_body(tasks: list[Any]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a predict route that serves ``tasks`` (registry entries or tasks).

    One task: its own request schema (a served model's route). Several: one of theirs (the route
    template, before its model has loaded). Multipart uploads are offered when a task takes images.
    """
    tasks = [getattr(t, "obj", t) for t in tasks]
    refs = [{"$ref": f"#/components/schemas/{t.request_schema.__name__}"} for t in tasks]
    json_schema: dict[str, Any] = refs[0] if len(refs) == 1 else {"oneOf": refs}
    examples = {t.kind: {"summary": t.summary, "value": t.example_request()} for t in tasks}
    content: dict[str, Any] = {"application/json": {"schema": json_schema, "examples": examples}}
    if any(t.upload_media == "image/*" for t in tasks):
        images = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
        upload = {
            "type": "object",
            "properties": {"images": images, "top_k": {"type": "integer", "minimum": 1, "maximum": 1000}},
            "required": ["images"],
        }
        content["multipart/form-data"] = {"schema": upload}
    return {"required": True, "content": content}
