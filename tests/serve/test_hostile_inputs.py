"""Hostile request bodies (issue 16): each gets its own 422, bounded work, and a free event loop.

The images are made here with Pillow and NumPy and stay a few kilobytes; the decompression bomb is a
hand-written PNG header, since Pillow refuses it from the header alone.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.image_classification import task as image_task

URL = "/v1/models/shapes/predict"

FORMATS = "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM"


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png(seed: int = 0) -> bytes:
    return encoded(
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)), "PNG"
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR of ``width`` x ``height`` (8-bit RGB) and an empty IDAT: 45 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"")


def lab_tiff() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return encoded(Image.frombytes("LAB", (8, 8), noise.tobytes()), "TIFF")


HOSTILE = [
    (
        "a 1x20,000 strip",
        {"images": [b64(encoded(Image.new("L", (20_000, 1), 128), "PNG"))]},
        "images[0] is 20000x1 pixels: its longer side is more than 20 times its shorter side, this "
        "server's limit (photos and scans stay below 20:1). Crop it to the part that matters before "
        "sending; the model sees only its central square.",
    ),
    (
        "a LAB TIFF",
        {"images": [b64(lab_tiff())]},
        "images[0]: The image has color mode LAB, which cannot be converted to RGB here; expected a "
        "grayscale, RGB, RGBA, palette, CMYK or YCbCr image. Convert it to RGB (e.g. save it as an sRGB "
        "PNG or JPEG) and try again.",
    ),
    (
        "a format training does not read (PCX)",
        {"images": [b64(encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "PCX"))]},
        "images[0] is not an image file in a format this server reads (UnidentifiedImageError). Expected "
        f"{FORMATS} bytes; convert it to PNG or JPEG.",
    ),
    (
        "a decompression bomb",
        {"images": [b64(png_header(20_000, 10_000))]},
        "images[0] is 200,000,000 pixels, more than this server's limit of 16,777,216. Downscale it before "
        "sending; the model sees it resized anyway.",
    ),
]


@pytest.mark.parametrize(("what", "body", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_image_gets_its_own_422(
    tmp_path: Path, serve_one: Any, tiny_bundle: Path, what: str, body: Any, message: str
) -> None:
    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes") as client:
            r = await client.post(URL, json=body)
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (422, "invalid_input", message)
            files = [("images", ("x", base64.b64decode(body["images"][0]), "application/octet-stream"))]
            r = await client.post(URL, files=files)
            assert (r.status_code, r.json()["detail"]) == (422, message)

    run(go())


def raw_json(text: str) -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


def test_a_huge_integer_and_deep_nesting_get_422_not_500(
    tmp_path: Path, serve_one: Any, tiny_bundle: Path
) -> None:
    image = json.dumps(b64(png()))

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes") as client:
            r = await client.post(URL, **raw_json(f'{{"images": [{image}], "top_k": {"9" * 5000}}}'))
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (
                422,
                "invalid_json",
                "The body holds an integer of more than 4,300 digits, which this server does not parse; "
                "expected numbers of ordinary size (top_k is 1 to 1000). Send the number with fewer digits.",
            )
            deep = "[" * 1000 + "]" * 1000
            for text in (f'{{"images": {deep}}}', f'{{"images": [{image}], "top_k": {deep}}}'):
                r = await client.post(URL, **raw_json(text))
                assert (r.status_code, r.json()["type"], r.json()["detail"]) == (
                    422,
                    "invalid_json",
                    "The body's JSON is nested too deeply to parse (arrays or objects inside each other "
                    "about 1,000 levels deep); expected a flat object like the example in /docs. Send the "
                    "inputs as one list.",
                )
            assert (await client.post(URL, json={"images": [b64(png())]})).status_code == 200

    run(go())


def test_too_many_items_is_refused_before_any_item_is_decoded(
    tmp_path: Path, serve_one: Any, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    real = image_task.check_image

    def spy(raw: bytes, index: int, max_pixels: int, **kw: Any) -> bytes:
        checked.append(index)
        return real(raw, index, max_pixels, **kw)

    message = (
        "The request has 5 inputs; this server takes at most 4 per request. Split it into several requests."
    )

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes", max_items=4) as client:
            monkeypatch.setattr(image_task, "check_image", spy)  # after the load's warm-up request
            r = await client.post(URL, json={"images": [b64(png(i)) for i in range(5)]})
            assert (r.status_code, r.json()["type"], r.json()["detail"]) == (422, "too_many_items", message)

    run(go())
    assert checked == []


def test_livez_answers_while_a_small_image_is_being_decoded(
    tmp_path: Path, serve_one: Any, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4 KB body is below INLINE_BYTES; its decoding must still leave the event loop free."""
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real = image_task.check_image

    def held(raw: bytes, index: int, max_pixels: int, **kw: Any) -> bytes:
        entered.set()
        released.append(release.wait(timeout=30))  # False: nobody could release it, the loop was blocked
        return real(raw, index, max_pixels, **kw)

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes") as client:
            monkeypatch.setattr(image_task, "check_image", held)  # after the load's warm-up request
            predict = asyncio.create_task(client.post(URL, json={"images": [b64(png())]}))
            assert await asyncio.to_thread(entered.wait, 30)
            live = await client.get("/livez")
            release.set()
            assert live.status_code == 200
            assert (await predict).status_code == 200

    run(go())
    assert released == [True]


def test_readyz_names_a_failed_model_but_not_its_error(tmp_path: Path) -> None:
    """Anyone may call /readyz: after a failed first load it says which arm, never the path-laden error."""
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text("{not json")

    async def go() -> httpx.Response:
        settings = load_settings(models=[{"uri": str(broken), "name": "shapes"}])
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                for _ in range(600):  # the load runs in the background; bounded, it fails at once
                    answer = await client.get("/readyz")
                    if answer.json()["status"] != "loading":
                        return answer
                    await asyncio.sleep(0.01)
        raise AssertionError("the broken bundle was still loading")

    answer = run(go())
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "failed",
        "detail": "shapes/champion failed to load; GET /admin/models shows why.",
    }
    assert str(broken) not in answer.text


def test_line_wrapped_base64_is_read_like_the_base64_tool_writes_it(
    tmp_path: Path, serve_one: Any, tiny_bundle: Path
) -> None:
    """`base64 image.png` wraps its output every 76 characters, with \n (or \r\n on Windows)."""
    flat = b64(png(3))
    wrapped = "\n".join(flat[i : i + 76] for i in range(0, len(flat), 76)) + "\n"

    async def go() -> None:
        async with serve_one(tmp_path, tiny_bundle, "shapes") as client:
            answers = [
                await client.post(URL, json={"image": text})
                for text in (flat, wrapped, wrapped.replace("\n", "\r\n"))
            ]
            assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
            assert len({json.dumps(a.json()["predictions"]) for a in answers}) == 1
            r = await client.post(
                URL, json={"image": flat[:40] + " " + flat[40:]}
            )  # a space is not a line break
            assert (r.status_code, r.json()["detail"]) == (
                422,
                "images[0] is not valid base64 (Only base64 data is allowed). Expected the image file's "
                "bytes in standard base64, e.g. base64.b64encode(open('x.png', 'rb').read()).decode().",
            )

    run(go())
