"""The HTTP API's schema families. Per-task request and response items come from the task registry."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, Literal, Union

from pydantic import BaseModel, Field, create_model

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


class InputWarningItem(BaseModel):
    """An input far from the inputs the model was trained on; it was answered all the same."""

    input: int = Field(description="The input's index in the request (0-based).")
    kind: str = Field(description="What is far: 'mode' or 'size' for images.")
    message: str = Field(
        description="What the input is and what training saw, e.g. 'mode RGB, trained on L'."
    )


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
    )


def request_schemas() -> dict[str, dict[str, Any]]:
    """Component name -> JSON schema, for every registered task's predict request."""
    return {
        entry.obj.request_schema.__name__: entry.obj.request_schema.model_json_schema() for entry in TASKS
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
    if any(t.image_input for t in tasks):
        images = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
        upload = {
            "type": "object",
            "properties": {"images": images, "top_k": {"type": "integer", "minimum": 1, "maximum": 1000}},
            "required": ["images"],
        }
        content["multipart/form-data"] = {"schema": upload}
    return {"required": True, "content": content}
