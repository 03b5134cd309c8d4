"""`kiln explain` as a user runs it: one image to a PNG file, several to a folder, another class by name;
mistakes exit 2 with what to give."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from torchkiln.cli.main import app

from ..conftest import CLASSES, kiln, write_image_folder


def test_one_image_to_a_file_then_a_folder_of_them_with_another_class(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    images = write_image_folder(tmp_path / "images", per_class=1, size=16, seed=3)
    first = images / "dot" / "00.png"
    done = kiln("explain", str(tiny_bundle), str(first), "--out", "heat.png", cwd=tmp_path)
    line = done.stdout.strip()
    assert re.fullmatch(rf"{re.escape(str(first))}: (dot|hbar|vbar) \d\.\d{{3}} -> heat\.png", line), line
    with Image.open(tmp_path / "heat.png") as img:
        assert img.size == (224, 224) and img.mode == "RGB"  # 16 pixels, enlarged 14 times

    args = (
        "explain",
        str(tiny_bundle),
        "images",
        "--out",
        "heat",
        "--method",
        "gradcam++",
        "--class",
        "vbar",
    )
    done = kiln(*args, cwd=tmp_path)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(CLASSES)
    for line, c in zip(lines, CLASSES, strict=True):  # the folder's images, sorted
        label = re.escape(f"images/{c}/00.png: ")
        heatmap = "(, heatmap of vbar)?" if c != "vbar" else ""
        assert re.fullmatch(rf"{label}(dot|hbar|vbar) \d\.\d{{3}}{heatmap} -> heat/00(-[23])?\.png", line), (
            line
        )
    assert sorted(p.name for p in (tmp_path / "heat").iterdir()) == ["00-2.png", "00-3.png", "00.png"]


def test_mistakes_exit_2_with_what_to_give(tiny_bundle: Path, tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", per_class=1, size=16)
    runner = CliRunner()
    done = runner.invoke(app, ["explain", str(tiny_bundle), str(images), "--out", "heat.png"])
    assert done.exit_code == 2
    assert (
        "With 3 images, --out is a folder; got 'heat.png', a file name. Pass a folder, e.g. --out"
        in " ".join(done.output.split())
    )
    one = str(images / "dot" / "00.png")
    done = runner.invoke(
        app, ["explain", str(tiny_bundle), one, "--out", str(tmp_path / "h.png"), "--class", "Dot"]
    )
    assert done.exit_code == 2
    assert "Unknown class 'Dot'. Did you mean 'dot'? The model's classes are dot, hbar, vbar." in " ".join(
        done.output.split()
    )
    assert not (tmp_path / "h.png").exists()
