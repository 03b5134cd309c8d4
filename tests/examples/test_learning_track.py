"""The learning track runs as a reader runs it: every ``examples/ch*_*.py`` exits 0 (each script asserts
what it teaches: the loss goes down, the gradient matches a finite difference, the int8 model is smaller,
...) and ends with a kiln command that exists, with options that command takes and files that are there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from torchkiln.cli.main import app

ROOT = Path(__file__).parents[2]
SCRIPTS = sorted((ROOT / "examples").glob("ch*_*.py"))
KILN_LINE = re.compile(r"kiln equivalent: (kiln .+)")
SUBSHELL = re.compile(r"\$\([^)]*\)")  # $(ls -d runs/... | tail -1): a run directory the reader has


def test_one_script_per_chapter() -> None:
    chapters = sorted(p.name.split("_")[0] for p in SCRIPTS)
    assert chapters == ["ch1", "ch2", "ch3", "ch4", "ch5"], chapters


def check_kiln_command(line: str) -> None:
    """``kiln A B ... --opt x`` names a real (sub)command, options it declares and files that exist."""
    words = shlex.split(SUBSHELL.sub("RUN", line))[1:]
    cmd: Any = typer.main.get_command(app)
    while words and words[0] in getattr(cmd, "commands", {}):
        cmd = cmd.commands[words.pop(0)]
    assert not hasattr(cmd, "commands"), f"'{line}' stops at a command group"
    declared = {opt for param in cmd.params for opt in param.opts}
    for word in words:
        if word.startswith("--"):
            assert word.split("=")[0] in declared, f"'{line}': {word} is not an option of this command"
        elif word.startswith("examples/"):
            assert (ROOT / word).is_file(), f"'{line}': {word} does not exist"


def test_the_check_catches_a_wrong_command() -> None:
    check_kiln_command("kiln export $(ls -d runs/x/* | tail -1) --quantize dynamic")
    for wrong in ("kiln trian examples/fashion-mnist.yaml", "kiln export RUN --quantise dynamic",
                  "kiln train examples/no-such.yaml", "kiln config"):  # fmt: skip
        with pytest.raises(AssertionError):
            check_kiln_command(wrong)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_script_runs_and_ends_with_its_kiln_command(script: Path, tmp_path: Path) -> None:
    # One intra-op thread: the suite runs one pytest process per core, and these models are small enough
    # that a second thread only fights the other workers (ch2 took 37 s with 2 threads on a busy
    # 2-core machine, 9 s with one).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    last = done.stdout.strip().splitlines()[-1]
    match = KILN_LINE.fullmatch(last)
    assert match, f"{script.name} must end by printing 'kiln equivalent: kiln ...'; its last line: {last!r}"
    check_kiln_command(match.group(1))
    assert not list(tmp_path.iterdir()), "a script wrote into the folder it was run from"
