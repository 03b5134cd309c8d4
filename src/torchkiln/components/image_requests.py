"""Images in a prediction request: base64 items and the header checks made before any decoding.

Every image task's ``decode_request`` and ``decode_uploads`` use these, so a served image is refused the
same way whatever the task: not base64, not an image, a decompression bomb, an absurd aspect ratio.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema

from torchkiln.components import dicom
from torchkiln.components.images import FORMAT_NAMES, MAX_ASPECT_RATIO, PIL_FORMATS, bomb_pixels
from torchkiln.core.errors import ConfigError, DataError, PredictError


class ImagesRequest(BaseModel):
    """Images as base64 strings: one in ``image`` or several in ``images``. An image task's request schema
    subclasses it and adds its own answer options (``top_k``, ``score_threshold``...)."""

    # The schema says "exactly one of the two, a list not empty", as the validator below does: a body valid
    # against the schema is one the server takes (the OpenAPI checks in tests/serve/test_openapi.py).
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": [{"required": ["image"]}, {"required": ["images"]}]}
    )

    # null is taken (as a missing key) but not documented: the schema's oneOf reads "the key is there".
    image: Annotated[str | None, WithJsonSchema({"type": "string"})] = Field(
        None, description="One image file (PNG, JPEG, ...) as base64 or a data: URL."
    )
    images: Annotated[
        list[str] | None, WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1})
    ] = Field(None, description="Several image files, each as base64 or a data: URL.")

    @model_validator(mode="after")
    def _one_of(self) -> ImagesRequest:
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' (a base64 string) or 'images' (a list of them)")
        return self

    @property
    def encoded(self) -> list[str]:
        return [self.image] if self.image is not None else list(self.images or [])


def decode_base64(text: str, index: int) -> bytes:
    """One request item (``images[index]``): plain or line-wrapped base64, or a base64 data: URL -> bytes.

    Raises:
        PredictError: not base64, a data: URL of another encoding, or empty; naming ``images[index]``.
    """
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise PredictError(
                f"images[{index}] is a data: URL that is not base64 ('{head[:40]}'). "
                f"Expected data:image/png;base64,... or plain base64."
            )
    if "\n" in text:  # line-wrapped, as the base64 tool writes it (76 characters a line)
        text = text.replace("\r\n", "").replace("\n", "")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PredictError(
            f"images[{index}] is not valid base64 ({exc}). Expected the image file's bytes in standard "
            f"base64, e.g. base64.b64encode(open('x.png', 'rb').read()).decode()."
        ) from None
    if not raw:
        raise PredictError(f"images[{index}] is empty. Expected the bytes of an image file.")
    return raw


def check_image(raw: bytes, index: int, max_pixels: int, *, resized: bool = True) -> bytes:
    """Read only the header: refuse non-images, decompression bombs and absurd aspect ratios before
    decoding anything (a resize costs work in proportion to the longer side).

    ``resized``: the model sees the image resized to a square (classification), which the messages say;
    a detector sees it at its own size. DICOM bytes (the ``DICM`` magic at offset 128) are checked from
    their header the same way, and decoded later by the same path as a DICOM file in training.
    """
    too_big = f"more than this server's limit of {max_pixels:,}. Downscale it before sending" + (
        "; the model sees it resized anyway." if resized else "."
    )
    try:
        if dicom.is_dicom(raw):
            width, height = _dicom_size(raw, index)
        else:
            with Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as img:
                width, height = img.size
    except PredictError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked while reading the header
        n = bomb_pixels(exc)
        size = f"{n:,} pixels" if n is not None else "more pixels than Pillow's decompression-bomb limit"
        raise PredictError(f"images[{index}] is {size}, {too_big}") from None
    except Exception as exc:  # Pillow raises many types for foreign bytes
        raise PredictError(
            f"images[{index}] is not an image file in a format this server reads ({type(exc).__name__}). "
            f"Expected {FORMAT_NAMES} bytes; convert it to PNG or JPEG."
        ) from None
    if width * height > max_pixels:
        raise PredictError(f"images[{index}] is {width}x{height} = {width * height:,} pixels, {too_big}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise PredictError(
            f"images[{index}] is {width}x{height} pixels: its longer side is more than {MAX_ASPECT_RATIO} "
            f"times its shorter side, this server's limit (photos and scans stay below "
            f"{MAX_ASPECT_RATIO}:1). Crop it to the part that matters before sending"
            + ("; the model sees only its central square." if resized else ".")
        )
    return raw


def _dicom_size(raw: bytes, index: int) -> tuple[int, int]:
    """(width, height) of DICOM request bytes, from the header; PredictError when it cannot be read here."""
    try:
        width, height, _ = dicom.dicom_header(raw)
    except ConfigError:
        raise PredictError(
            f"images[{index}] is a DICOM file, which this server cannot read: pydicom is not installed. "
            f"Expected {FORMAT_NAMES} bytes; convert it to PNG, or ask the server's operator to install "
            f"the medical extra ({dicom.INSTALL_HINT})."
        ) from None
    except DataError:
        raise PredictError(
            f"images[{index}] starts like a DICOM file but its header cannot be read. Expected a complete "
            f"DICOM Part 10 file; send the whole file again, or convert it to PNG."
        ) from None
    return width, height
