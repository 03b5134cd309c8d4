"""The raw form of the training images (modes, widths, heights), and the check of a predict-time image
against it: the "raw" section of ``bundle/profile.json``.

"Far" is two rules. Mode: the image is grayscale and no training image was, or colour and none was
(RGBA beside RGB, or a palette image beside RGB, is not far: preprocessing converts them alike).
Size: its width or height is below half the smallest or above twice the largest of training's
(:data:`~torchkiln.components.profile.FAR_FACTOR`), so preprocessing resamples it by more than twice what
it did in training, and the model sees detail at a scale it never learned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from torchkiln.components.images import GRAY_MODES, ImageLike, peek_image
from torchkiln.components.profile import far_outside, span, spread
from torchkiln.tasks.base import InputWarning


def raw_profile(headers: Iterable[tuple[int, int, str]]) -> dict[str, Any]:
    """``{"images", "modes", "width", "height"}`` of the training images' ``(width, height, mode)``.

    Example:
        >>> raw_profile([(8, 8, "L"), (9, 7, "L")])["modes"]
        {'L': 2}
    """
    headers = list(headers)
    if not headers:
        return {}
    modes = Counter(mode for _, _, mode in headers)
    return {
        "images": len(headers),
        "modes": dict(modes.most_common()),
        "width": spread([w for w, _, _ in headers]),
        "height": spread([h for _, h, _ in headers]),
    }


def array_profile(count: int, width: int, height: int, channels: int) -> dict[str, Any]:
    """The profile of ``count`` same-sized array images (a catalog, npz or IDX data set)."""
    if not count:
        return {}
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return {"images": count, "modes": {mode: count}, "width": spread([width]), "height": spread([height])}


def image_warnings(profile: Mapping[str, Any], raw: ImageLike) -> list[InputWarning]:
    """Why the image ``raw`` is far from the training images of ``profile`` (see the module docstring).

    Example:
        >>> image_warnings(raw_profile([(8, 8, "L")]), photo)  # a 640x480 RGB photo
        [InputWarning(kind='mode', message='mode RGB, trained on L'),
         InputWarning(kind='size', message='size 640x480, trained on 8x8')]
    """
    seen = peek_image(raw)
    if seen is None:
        return []
    width, height, mode = seen
    out = []
    modes = profile.get("modes")
    if isinstance(modes, Mapping) and modes and (mode in GRAY_MODES) not in {m in GRAY_MODES for m in modes}:
        out.append(InputWarning("mode", f"mode {mode}, trained on {'/'.join(modes)}"))
    widths, heights = profile.get("width"), profile.get("height")
    if not isinstance(widths, Mapping) or not isinstance(heights, Mapping):
        return out
    if far_outside(width, widths) or far_outside(height, heights):
        ranges = widths.get("min") != widths.get("max") or heights.get("min") != heights.get("max")
        trained = f"{span(widths)} x {span(heights)}" if ranges else f"{span(widths)}x{span(heights)}"
        out.append(InputWarning("size", f"size {width}x{height}, trained on {trained}"))
    return out
