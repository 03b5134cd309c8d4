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


# --- docs/learn.md: its links and the script functions it names --------------------------------------------
LEARN = ROOT / "docs" / "learn.md"
LINK = re.compile(r"\]\(([^)#\s]+)?(?:#([^)\s]+))?\)")
SCRIPT_CELL = re.compile(r"\]\(\.\./examples/(ch\d_\w+\.py)\)([^|[]*)")  # up to the next link or cell


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["learn.md", "reproducibility.md"])
def test_the_pages_links_resolve(page: str) -> None:
    doc = ROOT / "docs" / page
    for target, anchor in LINK.findall(doc.read_text()):
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"docs/{page} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
            assert anchor in {slug(h) for h in headings}, f"docs/{page}: no heading #{anchor} in {target}"


def test_learn_md_names_functions_its_scripts_define() -> None:
    """A `name()` or a `ClassName` in a script's cell is defined (or imported) by that script."""
    defined = 0
    for script, cell in SCRIPT_CELL.findall(LEARN.read_text()):
        source = (ROOT / "examples" / script).read_text()
        for name, call in re.findall(r"`(\w+)(\(\))?`", cell):
            if not call and not name[0].isupper():
                continue  # an attribute or a setting (`fc1`, `detach`), not a function of the script
            if re.search(rf"^(?:def|class) {name}\b", source, re.M):
                defined += 1
            else:
                imported = re.search(rf"^(?:from|import) .*\b{name}\b", source, re.M)
                assert imported, (
                    f"docs/learn.md names {name} for {script}, which neither defines nor imports it"
                )
    assert defined >= 30, defined
