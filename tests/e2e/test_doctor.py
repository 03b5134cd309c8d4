"""`kiln doctor` and the quick pass `kiln train` runs first, as a user meets them: the table and its exit
code, --json, --list; a warning printed before training, an error that stops it, --no-doctor to skip it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from torchkiln.cli.main import app

from ..doctor.planted import clean_splits, image_config, write_npz


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clean.yaml, leak.yaml (6 train images copied into test) and bad.yaml (monitored on test)."""
    root = tmp_path_factory.mktemp("doctor")
    splits = clean_splits()
    clean = write_npz(root / "clean.npz", splits)
    test_x, test_y = (a.copy() for a in splits["test"])
    test_x[:6], test_y[:6] = splits["train"][0][:6], 0
    leak = write_npz(root / "leak.npz", {**splits, "test": (test_x, test_y)})
    for name, data, extra in [
        ("clean", clean, {}),
        ("leak", leak, {}),
        ("bad", clean, {"train": {"monitor": "test/accuracy"}}),
    ]:
        raw = image_config(data, root, seed=0, **extra)
        (root / f"{name}.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    return root


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def test_a_clean_config_prints_no_finding_and_exits_0(project: Path) -> None:
    result = invoke("doctor", project / "clean.yaml")
    assert result.exit_code == 0, result.output
    # The one finding is what a linear baseline reaches on val: what a model of this data must beat.
    found = json.loads(invoke("doctor", project / "clean.yaml", "--json").stdout)["findings"]
    assert [(f["check"], f["severity"]) for f in found] == [("baseline", "info")]
    assert found[0]["message"].startswith("A linear baseline reaches ")
    assert result.stderr.startswith("kiln doctor: 0 errors, 0 warnings, 1 info in ")


def test_findings_as_a_table_and_as_json(project: Path) -> None:
    table = invoke("doctor", project / "leak.yaml")
    assert table.exit_code == 0, table.output  # warnings only
    assert "duplicates" in table.stdout and "6 of 36 (17%) test images" in table.stdout
    assert table.stderr.startswith("kiln doctor: 0 errors, 1 warning, 1 info in ")  # the info: the baseline
    found = json.loads(invoke("doctor", project / "leak.yaml", "--json").stdout)
    assert found["counts"] == {"error": 0, "warning": 1, "info": 1}
    (leak,) = [f for f in found["findings"] if f["check"] != "baseline"]
    assert (leak["check"], leak["severity"], leak["count"], len(leak["items"])) == (
        "duplicates",
        "warning",
        6,
        6,
    )
    assert set(found["seconds"]) >= {"data-loads", "duplicates", "class-balance"}


def test_an_error_exits_1(project: Path) -> None:
    result = invoke("doctor", project / "bad.yaml")
    assert result.exit_code == 1
    assert "train.monitor is 'test/accuracy'" in result.stdout
    assert result.stderr.startswith("kiln doctor: 1 error, 0 warnings, 1 info in ")  # the info: the baseline


def test_the_list_of_checks_and_a_missing_config() -> None:
    listed = invoke("doctor", "--list")
    assert listed.exit_code == 0
    assert (
        "label-noise" in listed.stdout and "--label-noise" in listed.stdout and "duplicates" in listed.stdout
    )
    missing = invoke("doctor")
    assert missing.exit_code == 2
    assert missing.stderr.startswith("error: give a CONFIG file. Example: kiln doctor kiln.yaml")


def test_train_prints_the_warnings_then_trains(project: Path) -> None:
    result = invoke("train", project / "leak.yaml", "--name", "leak")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: [duplicates] 6 of 36 (17%) test images copy a train item")
    assert lines[1].startswith("doctor: 1 warning(s) in ")
    assert Path(result.stdout.strip().splitlines()[-1]).is_dir()


def test_train_stops_at_an_error_unless_told_not_to_check(project: Path) -> None:
    runs = project / "runs" / "stopped"
    stopped = invoke("train", project / "bad.yaml", "--name", "stopped")
    assert stopped.exit_code == 2
    assert stopped.stderr.startswith("error: train.monitor is 'test/accuracy': the best checkpoint")
    assert not runs.exists()
    unchecked = invoke("train", project / "bad.yaml", "--name", "stopped", "--no-doctor")
    assert unchecked.exit_code == 2  # now the engine refuses it, after the data was loaded
    assert unchecked.stderr.startswith(
        "error: train.monitor is 'test/accuracy', which this run does not report."
    )
    assert not runs.exists()  # refused before the run folder was made
