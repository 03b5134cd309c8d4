"""`kiln` on a text CSV as a user runs it: train -> evaluate -> predict --text / --file, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from ..conftest import KILN


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "COLUMNS": "200"}
    return subprocess.run(
        [KILN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"kiln {' '.join(proc.args[1:])} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_sentiment_csv, make_text_config) -> Path:
    root = tmp_path_factory.mktemp("text-project")
    make_sentiment_csv(root / "reviews.csv")
    cfg = make_text_config("reviews.csv", "runs")
    (root / "text.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "nocol.yaml").write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "text_column": "body"}}))
    (root / "texts.txt").write_text("A superb and charming film.\n\nBoring, clumsy and dull.\n")
    return root


@pytest.fixture(scope="module")
def run_dir(project: Path) -> Path:
    proc = kiln("train", "text.yaml", cwd=project)
    assert proc.returncode == 0, explain(proc)
    return project / proc.stdout.strip().splitlines()[-1]


def test_train_evaluate_predict(project: Path, run_dir: Path) -> None:
    assert (run_dir / "bundle" / "state" / "tokenizer.json").is_file()
    commands = {  # independent: run side by side (each process spends seconds importing torch)
        "evaluate": ["evaluate", str(run_dir)],
        "text": ["predict", str(run_dir / "bundle"), "--text", "A wonderful, gripping film.", "--json"],
        "file": ["predict", str(run_dir), "--file", "texts.txt"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(commands, pool.map(lambda a: kiln(*a, cwd=project), commands.values()), strict=True))
    for proc in done.values():
        assert proc.returncode == 0, explain(proc)
    assert "test: accuracy" in done["evaluate"].stdout
    assert "<th>Text</th>" in (run_dir / "eval" / "test" / "report.html").read_text()
    answer = json.loads(done["text"].stdout.strip())
    assert answer["input"] == "A wonderful, gripping film." and answer["label"] == "positive"
    lines = done["file"].stdout.strip().splitlines()
    assert len(lines) == 2 and "positive" in lines[0] and "negative" in lines[1]


def test_bad_input_gets_a_clear_message(project: Path, run_dir: Path) -> None:
    commands = [
        ["train", "nocol.yaml"],
        ["predict", str(run_dir), "images/a.png"],
        ["predict", str(run_dir)],
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        nocol, a_file, nothing = pool.map(lambda a: kiln(*a, cwd=project), commands)
    for proc in (nocol, a_file, nothing):
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, explain(proc)
    assert "has no column 'body'" in nocol.stdout + nocol.stderr, explain(nocol)
    assert (
        "This bundle is a text-classification model, which does not take file arguments. "
        "It takes --text, --file and --top-k."
    ) in a_file.stderr, explain(a_file)
    assert "No texts were given. Use --text" in nothing.stdout + nothing.stderr, explain(nothing)
