"""The server's OpenAPI document is a contract: schemathesis sends generated requests to every operation.

No answer may be a 5xx, and each must have a status code, a content type and a body that the document
promises for that operation. The app runs in-process (schemathesis's ASGI client) inside its real
lifespan, with the tiny bundle loaded before the first request. Each operation gets at most
``MAX_EXAMPLES`` valid and invalid generated requests, so the whole file takes seconds.

The cases are drawn with Hypothesis from ``operation.as_strategy()`` rather than through
``schemathesis.pytest.from_fixture``: with pytest 9 that loader fails on every test
(``'Function' object has no attribute '_nodeid'``, schemathesis 4.32), and a schema loaded at import
time would start a server at import time.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema_rs import Draft202012Validator  # schemathesis validates with it too
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings

TOKEN = "t" * 32
ADMIN = {"authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
IMAGE_CONTENT = re.compile(r"^images\[\d+\] ")


@schemathesis.check
def valid_bodies_are_accepted(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Schemathesis's positive_data_acceptance (ST202) for the predict routes: a body that is valid against
    the model's own schema gets 200.

    Two refusals stay allowed, for what a JSON schema cannot say: that a string's or a file's bytes are an
    image (a 422 whose message names ``images[i]``), and ``max_items``, a server setting (``too_many_items``).
    """
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code == 200:
        return None
    body = response.json()
    if response.status_code == 422 and (
        body["type"] == "too_many_items" or IMAGE_CONTENT.match(body["detail"])
    ):
        return None
    raise AssertionError(
        f"A body valid against the schema got {response.status_code}: {body}\n{case.as_curl_command()}"
    )


PREDICT_CHECKS = [*CHECKS, valid_bodies_are_accepted]
OPERATIONS = [
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models/shapes/predict"),  # one path per served model, with its own task's body
    ("POST", "/v1/models/{name}/explain"),  # Grad-CAM heatmaps, not logged
    ("POST", "/v1/feedback"),
    ("GET", "/v1/models/{name}/performance"),
    ("GET", "/admin/models"),
    ("POST", "/admin/reload"),
    ("PUT", "/admin/models/{name}/traffic"),
    ("POST", "/v1/models/{name}/{action}"),  # a task's own requests (stylize); this classifier has none
]


@pytest.fixture
def api_schema(tmp_path: Path, tiny_bundle: Path) -> Iterator[schemathesis.BaseSchema]:
    """The app's OpenAPI schema, served by the running app once its model is loaded.

    One app per test: schemathesis's pytest plugin ends every ASGI lifespan when a test ends, and an app's
    lifespan runs once (its prediction log cannot be reopened).
    """
    app = create_app(
        load_settings(
            models=[{"uri": str(tiny_bundle), "name": "shapes"}],
            log_url=f"sqlite:///{tmp_path}/p.db",
            admin_token=TOKEN,
        )
    )
    try:
        with asgi.get_client(app) as client:  # starts the app's lifespan
            deadline = time.monotonic() + 30
            while (ready := client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, f"the model did not load: {ready.text}"
                time.sleep(0.05)
        # Once the model has loaded, its route documents its own task's request body.
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()  # drains the batchers and closes the prediction log


def fuzz(
    operation: schemathesis.APIOperation,
    headers: dict[str, str] | None = None,
    checks: list[Any] = CHECKS,
) -> None:
    """Send up to MAX_EXAMPLES generated requests, valid and invalid, and check every answer."""
    cases = st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])

    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(case=cases)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    check()


def test_the_document_lists_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    """Only what the document lists is fuzzed below; a route missing from it would go untested."""
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests_get_documented_answers(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    """Admin calls here carry no valid token (none, or a generated one)."""
    fuzz(api_schema[path][method], checks=PREDICT_CHECKS if path.endswith("/predict") else CHECKS)


def test_generated_admin_requests_with_the_token_get_documented_answers(
    api_schema: schemathesis.BaseSchema,
) -> None:
    """Past the token check, the generated query parameters of /admin/reload and the generated traffic
    rules reach their handlers."""
    fuzz(api_schema["/admin/reload"]["POST"], headers=ADMIN)
    fuzz(api_schema["/admin/models/{name}/traffic"]["PUT"], headers=ADMIN)


def png(size: int = 16) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[:, size // 2 - 2 : size // 2 + 2] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_valid_requests_get_documented_200s(api_schema: schemathesis.BaseSchema) -> None:
    """Generated images are rarely valid pictures, so the 200 answers are also checked with real ones."""
    predict = api_schema["/v1/models/shapes/predict"]["POST"]
    reload = api_schema["/admin/reload"]["POST"]
    cases = [
        predict.Case(
            body={"images": [base64.b64encode(png()).decode()], "top_k": 2},
            media_type="application/json",
        ),
        predict.Case(
            body={"images": [png(), png(20)], "top_k": 3},
            media_type="multipart/form-data",
        ),
        reload.Case(query={"model": "shapes", "force": False}, headers=ADMIN),
        reload.Case(headers=ADMIN),
        api_schema["/admin/models"]["GET"].Case(headers=ADMIN),
    ]
    for case in cases:
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == 200, (case.as_curl_command(), response.text)


def test_feedback_and_performance_answers_match_the_document(api_schema: schemathesis.BaseSchema) -> None:
    """Generated request ids are never ones the server answered: here a real one gets its 201 and 409."""
    predict = api_schema["/v1/models/shapes/predict"]["POST"].Case(
        body={"images": [base64.b64encode(png()).decode()] * 2}, media_type="application/json"
    )
    answer = predict.call_and_validate(checks=CHECKS).json()
    feedback = api_schema["/v1/feedback"]["POST"]
    performance = api_schema["/v1/models/{name}/performance"]["GET"]
    label = answer["predictions"][0]["label"]
    cases = [
        (feedback.Case(body={"request_id": answer["request_id"], "labels": [label, None]}), 201),
        (feedback.Case(body={"request_id": answer["request_id"], "index": 0, "label": label}), 409),
        (performance.Case(path_parameters={"name": "shapes"}, query={"window": "1h"}), 200),
        (performance.Case(path_parameters={"name": "shapes"}, query={"window": "1 h"}), 422),
    ]
    for case, status in cases:
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == status, (case.as_curl_command(), response.text)
    report = performance.Case(path_parameters={"name": "shapes"}).call_and_validate(checks=CHECKS).json()
    assert report["labelled"] == 1 and report["versions"][0]["accuracy"]["value"] == 1.0


def test_an_invalid_admin_query_gets_its_documented_422(api_schema: schemathesis.BaseSchema) -> None:
    """The fuzzing above finds this one within a few examples; here it is every time."""
    case = api_schema["/admin/reload"]["POST"].Case(query={"force": "maybe"}, headers=ADMIN)
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 422, response.text


BOUNDARY = "kiln-test-boundary"


def multipart(parts: list[tuple[str, str | None, bytes]]) -> bytes:
    """A multipart/form-data body: (field name, file name or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


REFUSED_UPLOADS = {
    # What schemathesis generated: a part without headers.
    "malformed": (f"--{BOUNDARY}\r\n30.0--{BOUNDARY}--\r\n".encode(), "invalid_multipart"),
    # docs/serving.md: more than max_items (64) inputs -> 422 too_many_items.
    "66 files": (multipart([("images", f"{i}.png", png()) for i in range(66)]), "too_many_items"),
    "17 fields": (
        multipart([("images", "0.png", png())] + [(f"f{i}", None, b"x") for i in range(17)]),
        "invalid_multipart",
    ),
}


@pytest.mark.parametrize("upload", list(REFUSED_UPLOADS))
def test_uploads_the_form_parser_refuses_get_a_documented_422(
    api_schema: schemathesis.BaseSchema, upload: str
) -> None:
    body, kind = REFUSED_UPLOADS[upload]
    case = api_schema["/v1/models/shapes/predict"]["POST"].Case(media_type="multipart/form-data")
    with asgi.get_client(api_schema.app) as client:
        response = client.post(
            "/v1/models/shapes/predict",
            data=body,
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
    assert (response.status_code, response.json().get("type")) == (422, kind), response.text
    case.validate_response(response, checks=CHECKS)


def test_each_served_model_documents_its_own_task_and_refuses_the_others(
    tmp_path: Path, tiny_bundle: Path, tiny_text_bundle: Path
) -> None:
    """An image model and a text model on one server: each route's body is its own task's, so a text body
    is not valid for the image model (it was, with one body for every task), and generated valid bodies
    for either get 200."""
    app = create_app(
        load_settings(
            models=[
                {"uri": str(tiny_bundle), "name": "shapes"},
                {"uri": str(tiny_text_bundle), "name": "reviews"},
            ],
            log_url=f"sqlite:///{tmp_path}/p.db",
        )
    )
    try:
        with asgi.get_client(app) as client:
            deadline = time.monotonic() + 30
            while (ready := client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, f"the models did not load: {ready.text}"
                time.sleep(0.05)
            doc = client.get("/openapi.json").json()
        bodies = {
            path: op["post"]["requestBody"]["content"]
            for path, op in doc["paths"].items()
            if path.endswith("/predict")
        }
        assert bodies["/v1/models/shapes/predict"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ImagePredictRequest"
        }
        assert bodies["/v1/models/reviews/predict"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/TextPredictRequest"
        }
        assert set(bodies["/v1/models/reviews/predict"]) == {"application/json"}  # no image uploads
        assert set(bodies) == {"/v1/models/shapes/predict", "/v1/models/reviews/predict"}
        components = doc["components"]["schemas"]
        image, text = (
            Draft202012Validator(components[n]) for n in ("ImagePredictRequest", "TextPredictRequest")
        )
        for body, valid_for in [
            ({"text": "a fine film"}, (False, True)),
            ({"texts": ["a", "b"], "top_k": 2}, (False, True)),
            ({"image": base64.b64encode(png()).decode()}, (True, False)),
            ({"image": "x", "images": ["y"]}, (False, False)),  # exactly one of the two
            ({"images": []}, (False, False)),
        ]:
            assert (image.is_valid(body), text.is_valid(body)) == valid_for, body
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        fuzz(schema["/v1/models/reviews/predict"]["POST"], checks=PREDICT_CHECKS)
    finally:
        asgi.shutdown_lifespans()
