"""One MLflow store: `kiln train`, `kiln evaluate` and `kiln registry` with their defaults all write
`runs/mlflow.db`, which is what the README's `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` opens.

The commands run in-process (CliRunner) in a project folder, as a user would type them there.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from torchkiln.cli.main import app

mlflow = pytest.importorskip("mlflow")

README_URI = "sqlite:///runs/mlflow.db"  # README.md: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db


def kiln(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_image_folder, make_config) -> Iterator[Path]:
    """A project folder with one run trained by `kiln train` with MLflow on and the default store."""
    root = tmp_path_factory.mktemp("mlflow-project")
    make_image_folder(root / "images", per_class=6)
    cfg = make_config("images", "runs")  # relative, as in the README
    cfg["tracking"]["mlflow"] = True
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_dir = Path(kiln("train", "cfg.yaml").stdout.strip().splitlines()[-1])
        assert (root / run_dir / "mlflow.json").is_file()
        yield root
    mlflow.set_tracking_uri(previous)  # training sets MLflow's global URI


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KILN_CACHE_DIR", str(project / "cache"))
    return project


def the_run(root: Path) -> Path:
    """The trained run (its folder is a timestamp; the copies the tests break have names)."""
    (run_dir,) = (p.parent.relative_to(root) for p in root.glob("runs/*/[0-9]*/mlflow.json"))
    return run_dir


def copy_run(root: Path, name: str) -> Path:
    """A copy of the run directory (its mlflow.json included) to break without touching the original."""
    src = the_run(root)
    dst = src.with_name(name)
    shutil.copytree(root / src, root / dst)
    return dst


def client() -> Any:
    return mlflow.MlflowClient(tracking_uri=README_URI, registry_uri=README_URI)


def test_the_readme_store_shows_the_run_its_test_metrics_and_the_registered_model(in_project: Path) -> None:
    run_dir = the_run(in_project)
    evaluated = kiln("evaluate", str(run_dir))
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    uri = f"sqlite:///{in_project / 'runs' / 'mlflow.db'}"
    assert f"note: logged the test metrics and report to MLflow run {run_id} in {uri}" in evaluated.stderr
    registered = kiln("registry", "register", str(run_dir / "bundle"), "--name", "shapes")  # all defaults
    assert registered.stdout.strip().splitlines()[-1] == "models:/shapes/1"

    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["torchkiln.run_dir"] == str(run_dir)
    metrics = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert run.data.metrics["test_num_samples"] == metrics["num_samples"]
    assert {"val_accuracy", "train_loss"} <= run.data.metrics.keys()  # training's own, untouched
    logged = {a.path for a in client().list_artifacts(run_id, "eval/test")}
    assert {"eval/test/metrics.json", "eval/test/report.html"} <= logged
    (version,) = client().search_model_versions("name = 'shapes'")
    assert str(version.version) == "1" and version.tags["torchkiln.source"] == str(
        (run_dir / "bundle").resolve()
    )
    # One store, its artifacts beside it; nothing in the project folder itself.
    assert (in_project / "runs" / "mlartifacts").is_dir()
    assert not (in_project / "mlflow.db").exists() and not (in_project / "mlartifacts").exists()
    # kiln serve's default registry (registry_uri unset) is the same store.
    from torchkiln.serve.registry import resolve_model_uri

    assert (resolve_model_uri("models:/shapes/1").path / "bundle.json").is_file()
    listed = kiln("registry", "list")
    assert f"registry: {uri}" in listed.stdout and " shapes " in listed.stdout


def test_another_split_is_prefixed_and_no_mlflow_logs_nothing(in_project: Path) -> None:
    run_dir = the_run(in_project)
    run_id = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    kiln("evaluate", str(run_dir), "--split", "val")
    kiln("evaluate", str(run_dir), "--split", "train", "--no-mlflow")
    run = client().get_run(run_id)
    assert "eval_val_accuracy" in run.data.metrics  # never mixed with training's val_accuracy series
    assert not any(k.startswith("eval_train_") for k in run.data.metrics)
    assert (run_dir / "eval" / "train" / "metrics.json").is_file()
    folders = {a.path for a in client().list_artifacts(run_id, "eval")}
    assert "eval/val" in folders and "eval/train" not in folders


def test_a_store_that_is_gone_is_a_warning_and_the_evaluation_is_kept(in_project: Path) -> None:
    run_dir = copy_run(in_project, "store-gone")
    gone = in_project / "moved" / "mlflow.db"
    record = {"tracking_uri": f"sqlite:///{gone}", "run_id": "0" * 32}
    (run_dir / "mlflow.json").write_text(json.dumps(record))
    result = kiln("evaluate", str(run_dir))
    assert result.stderr.splitlines() == [
        "warning: The evaluation is not logged to MLflow: the store this run was logged to, "
        f"sqlite:///{gone}, does not exist any more. Move the database back (and its mlartifacts/ beside "
        "it), or use --no-mlflow."
    ]
    assert (run_dir / "eval" / "test" / "report.html").is_file()
    assert not gone.parent.exists()  # no empty store created in its place


def test_an_mlflow_failure_is_a_warning_and_the_evaluation_is_kept(in_project: Path) -> None:
    run_dir = copy_run(in_project, "unknown-run")
    uri = f"sqlite:///{in_project / 'runs' / 'mlflow.db'}"
    (run_dir / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "run_id": "0" * 32}))
    result = kiln("evaluate", str(run_dir))
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"warning: The evaluation was written to '{run_dir / 'eval' / 'test'}' but not logged to MLflow run "
        f"{'0' * 32} in {uri}: "
    )
    assert line.endswith(
        ". Check that the store is reachable and the run exists, then run kiln evaluate again (or use "
        "--no-mlflow)."
    )
    assert (run_dir / "eval" / "test" / "metrics.json").is_file()


def test_a_run_without_mlflow_json_gets_a_note(in_project: Path) -> None:
    run_dir = copy_run(in_project, "no-record")
    (run_dir / "mlflow.json").unlink()
    result = kiln("evaluate", str(run_dir))
    assert result.stderr.splitlines() == [
        f"note: The evaluation is not logged to MLflow: '{run_dir}' has no mlflow.json, so its MLflow run is "
        "unknown (kiln train writes it when tracking.mlflow is on; older versions did not). Use --no-mlflow "
        "to skip this."
    ]


def test_a_run_trained_without_mlflow_never_touches_it(tiny_bundle: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"  # a copy: the session's tiny bundle stays as it is
    shutil.copytree(tiny_bundle.parent, run_dir)
    result = kiln("evaluate", str(run_dir))
    assert result.stderr == ""
    assert (run_dir / "eval" / "test" / "metrics.json").is_file()
    assert not (run_dir / "mlflow.json").exists()
    assert not (tiny_bundle.parents[2] / "mlflow.db").exists()  # its runs_dir: no store was made


def test_registry_runs_dir_and_the_environment_pick_the_store(in_project: Path, monkeypatch) -> None:
    other = in_project / "elsewhere"
    listed = CliRunner().invoke(app, ["registry", "list", "--runs-dir", str(other)])
    assert listed.exit_code == 0, listed.output
    assert listed.stderr.strip() == (
        f"no registered models in sqlite:///{other / 'mlflow.db'}. Register one with: kiln registry register "
        "BUNDLE --name NAME"
    )
    env = f"sqlite:///{in_project / 'env' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env)  # wins over --runs-dir; --tracking-uri wins over both
    listed = CliRunner().invoke(app, ["registry", "list", "--runs-dir", str(other)])
    assert listed.stderr.strip().startswith(f"no registered models in {env}.")
