"""Style transfer on the server: the ``stylize`` action's request and answer schemas, and its run.

``POST /v1/models/{name}/stylize`` takes the content and style images as base64 and answers with the
stylized PNG. One request is one optimization (seconds to minutes): :data:`STYLIZE` is an unbatched
:class:`~torchkiln.tasks.base.TaskAction`.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from torchkiln.components.image_requests import check_image, decode_base64
from torchkiln.components.images import image_tensor
from torchkiln.core.errors import DataError, PredictError
from torchkiln.tasks.base import RequestLimits, TaskAction, checked_request
from torchkiln.tasks.image_generation.style import DEFAULTS, SIZE_RANGE, STEPS_RANGE, WEIGHT_MAX, stylize

_IMAGE_HELP = "as base64 (or a base64 data: URL) of a PNG, JPEG, BMP, GIF, TIFF, WebP or PPM file"


def _weight(name: str, what: str) -> Any:
    return Field(DEFAULTS[name], ge=0, le=WEIGHT_MAX, allow_inf_nan=False, description=what)


class StylizeRequest(BaseModel):
    """The body of ``POST /v1/models/{name}/stylize``: two images and the options of :func:`stylize`."""

    model_config = ConfigDict(extra="forbid")

    content: str = Field(description=f"The image to repaint, {_IMAGE_HELP}.")
    style: str = Field(description=f"The image whose style is copied, {_IMAGE_HELP}.")
    steps: int = Field(
        DEFAULTS["steps"], ge=STEPS_RANGE[0], le=STEPS_RANGE[1], description="Optimization steps."
    )
    size: int = Field(
        DEFAULTS["size"],
        ge=SIZE_RANGE[0],
        le=SIZE_RANGE[1],
        description="The output's longer side in pixels; it keeps the content's aspect ratio.",
    )
    content_weight: float = _weight("content_weight", "Weight of the content loss.")
    style_weight: float = _weight("style_weight", "Weight of the style loss.")
    tv_weight: float = _weight("tv_weight", "Weight of the total-variation (smoothness) loss.")
    mode: Literal["gram", "swag"] = Field(
        "swag", description="Style loss: softmax-smoothed Gram matrices (swag) or plain ones (gram)."
    )
    optimizer: Literal["lbfgs", "adam"] = Field("lbfgs", description="The pixel optimizer.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the start image's noise.")


class StyleLosses(BaseModel):
    """The unweighted losses (relative errors, see :func:`stylize`) and their weighted total."""

    content: float
    style: float
    tv: float
    total: float


class StyleLossPair(BaseModel):
    start: StyleLosses
    end: StyleLosses


class StylizeAnswer(BaseModel):
    """The answer of ``stylize``: the stylized image and what the optimization did."""

    image: str = Field(description="The stylized image, a PNG file as base64.")
    width: int
    height: int
    steps: int
    seconds: float = Field(description="Wall time of the optimization, decoding included.")
    losses: StyleLossPair


def run_stylize(request: BaseModel, limits: RequestLimits) -> dict[str, Any]:
    """Answer one ``stylize`` request: decode and check both images, optimize, encode the PNG.

    Args:
        request: a validated :class:`StylizeRequest`.
        limits: the server's limits; each image may have at most ``limits.max_pixels`` pixels.

    Returns:
        A JSON-ready dict that fits :class:`StylizeAnswer`.

    Raises:
        PredictError: an image is not base64, not an image, too large or too elongated; the message
        names the field ('content' or 'style').

    Example:
        >>> run_stylize(StylizeRequest.model_validate(example_request()), RequestLimits())["width"]
        32
    """
    body = checked_request(request, StylizeRequest)
    content, style = (_decoded(getattr(body, name), i, name, limits) for i, name in enumerate(_FIELDS))
    result = stylize(
        content,
        style,
        steps=body.steps,
        size=body.size,
        content_weight=body.content_weight,
        style_weight=body.style_weight,
        tv_weight=body.tv_weight,
        mode=body.mode,
        optimizer=body.optimizer,
        seed=body.seed,
        on_step=lambda step, losses: limits.check_deadline(
            f"The stylize request (step {step} of {body.steps})"
        ),
    )
    height, width = result.image.shape[:2]
    answer = StylizeAnswer(
        image=base64.b64encode(result.png()).decode("ascii"),
        width=width,
        height=height,
        steps=result.steps,
        seconds=round(result.seconds, 3),
        losses=StyleLossPair(start=StyleLosses(**result.losses_start), end=StyleLosses(**result.losses_end)),
    )
    return answer.model_dump()


_FIELDS = ("content", "style")


def _decoded(text: str, index: int, name: str, limits: RequestLimits) -> np.ndarray:
    """One image field -> uint8 RGB ``(H, W, 3)``, after the header checks every image route makes.

    The shared checks name an item ``images[i]`` (decoding: "The image"); this body names its two images,
    so the messages do too.
    """
    try:
        raw = check_image(decode_base64(text, index), index, limits.max_pixels, resized=False)
        return image_tensor(raw, channels=3).permute(1, 2, 0).numpy()  # any colour mode -> RGB
    except (PredictError, DataError) as exc:
        message = str(exc).replace(f"images[{index}]", f"'{name}'", 1)
        raise PredictError(message.replace("The image", f"'{name}'", 1)) from None


def _png_base64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def example_request() -> dict[str, Any]:
    """A real, valid body: a 32x32 gradient restyled with 32x32 diagonal stripes, 3 steps at 32 px."""
    ramp = np.linspace(0, 255, 32, dtype=np.float32)
    content = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (32, 1)), np.full((32, 32), 90.0)], -1)
    stripes = ((np.add.outer(np.arange(32), np.arange(32)) // 4) % 2 * 200 + 30).astype(np.uint8)
    style = np.stack([stripes, stripes // 2, 255 - stripes], -1)
    return {
        "content": _png_base64(content.astype(np.uint8)),
        "style": _png_base64(style),
        "steps": 3,
        "size": 32,
    }


STYLIZE = TaskAction(
    "stylize",
    "Neural style transfer: repaint the content image in the style of the style image (an optimization "
    "of seconds to minutes per request).",
    StylizeRequest,
    StylizeAnswer,
    run_stylize,
    example_request,
)
