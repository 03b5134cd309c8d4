"""The README's commands run as written, so the quick tour cannot drift from the code.

A fenced block runs when an HTML comment right above it says so (GitHub does not show the comment):

- ``<!-- docs-test: run -->`` above a ``bash`` block runs it; above a ``python`` block runs it with this
  Python; above a plain block of ``$ command`` lines (a transcript) runs those commands.
- ``<!-- docs-test: check -->`` above a transcript also runs each ``$`` command and requires every line
  shown after it to appear in its output, in order (a line ending in ``...`` matches as a prefix). Its
  exit code may be non-zero: the errors shown are part of what is checked.
- ``with "OLD" -> "NEW"`` in a run comment replaces text before running, to run on less data or fewer
  epochs than the README shows (for instance ``with "train.epochs=10" -> "train.epochs=2"``).
- ``alone`` in a run comment (``<!-- docs-test: run alone with ... -->``) marks a side trip that needs
  nothing the tour made: it runs as its own test, in its own empty folder, so the test processes share
  the README's minutes.

The other marked blocks run in order, in one bash session, in an empty folder: a later block uses what an
earlier one made (``$RUN``, ``data/digits``), as a reader following the tour would. ``kiln serve``
blocks a terminal, so here it runs in the background on a free port and each serve command waits
until ``/readyz`` answers; the next ``kiln serve``, or the end, stops it. ``curl`` fails on an HTTP error.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"

MARK = re.compile(r"<!--\s*docs-test:\s*(run|check)\b(.*?)-->\s*\n```(\w*)[^\n]*\n(.*?)\n```", re.S)
ALONE = re.compile(r"^\s*alone\b")
WITH = re.compile(r'"((?:[^"\\]|\\.)*)"\s*->\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Block:
    mode: str  # "run" or "check"
    lang: str  # "bash", "python" or "" (a transcript of "$ command" lines)
    body: str
    line: int  # where the block starts in README.md
    alone: bool = False  # a side trip: its own test in its own folder


def readme_blocks(text: str) -> list[Block]:
    blocks = []
    for m in MARK.finditer(text):
        mode, opts, lang, body = m.groups()
        for old, new in WITH.findall(opts):
            assert old in body, (
                f"README line {text[: m.start()].count(chr(10)) + 1}: {old!r} is not in its block"
            )
            body = body.replace(old, new)
        line = text[: m.start()].count("\n") + 1
        blocks.append(Block(mode, lang, body, line, alone=bool(ALONE.match(opts))))
    return blocks


def transcript(body: str) -> list[tuple[str, list[str]]]:
    """The ``$ command`` lines of a transcript, each with the output lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return steps


def appears_in_order(expected: list[str], output: str) -> str | None:
    """None when every expected line is in ``output`` in order; else the first line that is not."""
    lines = iter(output.splitlines())
    for want in (w.rstrip() for w in expected if w.strip()):
        prefix = want[:-3] if want.endswith("...") else None
        if not any((got.startswith(prefix) if prefix is not None else got.rstrip() == want) for got in lines):
            return want
    return None


PRELUDE = r"""
set -euo pipefail
SERVER_PID=
stop_server() {
  if [ -z "$SERVER_PID" ]; then return; fi
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}
trap stop_server EXIT
curl() { command curl --silent --show-error --fail-with-body "$@"; echo; }  # an HTTP error fails the block
kiln() {
  if [ "${1-}" != serve ]; then command kiln "$@"; return; fi
  stop_server
  command kiln "$@" --port "$KILN_DOCS_PORT" > serve.log 2>&1 &
  SERVER_PID=$!
  until command curl -sf "http://127.0.0.1:$KILN_DOCS_PORT/readyz" > /dev/null; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat serve.log; SERVER_PID=; return 1; fi
    sleep 0.2
  done
}
"""


def as_bash(block: Block, index: int) -> str:
    head = f"echo '### README.md block at line {block.line}'\n"
    if block.lang == "python":
        return head + f"python - <<'KILN_DOCS_PY_{index}'\n{block.body}\nKILN_DOCS_PY_{index}\n"
    if block.lang in ("bash", "sh", "shell"):
        return head + block.body.replace("127.0.0.1:8000", "127.0.0.1:$KILN_DOCS_PORT") + "\n"
    steps = transcript(block.body)
    assert steps, f"README line {block.line}: a marked plain block needs '$ command' lines"
    if block.mode == "run":
        return head + "\n".join(cmd for cmd, _ in steps) + "\n"
    out = []
    for i, (cmd, _) in enumerate(steps):
        out.append(f"{cmd} > check-{index}-{i}.out 2>&1 || true")
    return head + "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_marks_the_tour_runnable() -> None:
    blocks = readme_blocks(README.read_text())
    langs = [b.lang for b in blocks]
    assert len(blocks) >= 6 and "python" in langs and "" in langs, [(b.line, b.lang) for b in blocks]
    assert any(b.mode == "check" for b in blocks)


def test_transcript_matching() -> None:
    out = "error: bad\n  - unknown key 'x'. Valid keys here: a, b, c.\nFix it.\n"
    assert appears_in_order(["error: bad", "  - unknown key 'x'. Valid keys here: a, ..."], out) is None
    assert appears_in_order(["Fix it.", "error: bad"], out) == "error: bad"
    assert appears_in_order(["error: worse"], out) == "error: worse"


def chains() -> dict[str, list[tuple[int, Block]]]:
    """The tour (every block not marked ``alone``, in order) and each side trip, by README line."""
    blocks = list(enumerate(readme_blocks(README.read_text())))
    out = {"tour": [(i, b) for i, b in blocks if not b.alone]}
    out |= {f"line-{b.line}": [(i, b)] for i, b in blocks if b.alone}
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("chain", list(chains()))
def test_readme_commands_run(chain: str, tmp_path: Path) -> None:
    blocks = chains()[chain]
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))  # the README's "source .venv/bin/activate"
    script = PRELUDE + "".join(as_bash(b, i) for i, b in blocks)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "KILN_DOCS_PORT": str(free_port()),
        "COLUMNS": "200",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, f"a README command failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    for i, block in blocks:
        if block.mode != "check":
            continue
        for j, (cmd, expected) in enumerate(transcript(block.body)):
            output = (tmp_path / f"check-{i}-{j}.out").read_text()
            missing = appears_in_order(expected, output)
            assert missing is None, (
                f"README line {block.line}: `{cmd}` did not print {missing!r}; it printed:\n{output}"
            )
