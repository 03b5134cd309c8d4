"""Every command's help reads like a command line, and one idea has one spelling across commands."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from torchkiln.cli.help import describe_range, placeholder
from torchkiln.cli.main import app


def commands(cmd: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    cmd = cmd or typer.main.get_command(app)
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from commands(sub, (*path, name))


COMMANDS = [path for path, _ in commands()]


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "kiln" for p in COMMANDS])
def test_help_shows_no_python_types(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    text = result.output
    for python in ("<bool>", "<str>", "<int", "<float>", "<path>", "list[", "x>=", "x<=", "range>"):
        assert python not in text, (python, text)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and not re.search(r"\[[a-z_]+\]", usage), usage  # BUNDLE and [CONFIG]


def test_train_help_names_its_placeholders() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ --")}
    assert "KEY=VALUE" in rows["--set"] and "INT [at least 1]" in rows["--epochs"]
    assert "FLOAT" in rows["--lr"] and "RUN" in rows["--resume"] and "TEXT" in rows["--device"]
    assert "Usage: kiln train [OPTIONS] [CONFIG]" in result.output


def test_every_flag_has_a_no_form() -> None:
    for path, cmd in commands():
        for param in cmd.params:
            if getattr(param, "is_flag", False) and param.opts != ["--version"]:
                assert param.secondary_opts == [f"--no-{param.opts[0][2:]}"], (path, param.opts)


def test_one_spelling_for_one_idea() -> None:
    """--out for every output (file or folder), --overwrite to replace, --runs-dir for the runs folder."""
    spelled = {opt for _, cmd in commands() for param in cmd.params for opt in param.opts}
    assert not spelled & {"--to", "--out-dir", "--output", "--force", "--dir", "--runs"}
    assert {"--out", "--overwrite", "--runs-dir", "--epochs", "--batch-size", "--lr", "--seed"} <= spelled


def test_placeholders() -> None:
    assert [placeholder(t) for t in ("<str>", "<int>", "<float>", "<path>", "<int range>")] == [
        "TEXT",
        "INT",
        "FLOAT",
        "PATH",
        "INT",
    ]
    assert placeholder("<list[str]>") == "TEXT" and placeholder("<dynamic|static>") == "[dynamic|static]"
    assert placeholder("<bool>") is None and placeholder(None) is None
    assert describe_range(1, None) == "at least 1" and describe_range(0, 1) == "0 to 1"
    assert describe_range(None, 8) == "at most 8" and describe_range(None, None) is None
