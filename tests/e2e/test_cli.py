"""The `kiln` command as a user runs it: a real subprocess, a working folder, a small image folder.

Each `kiln` process spends seconds importing torch before it does anything, so the independent commands
are started together in a small thread pool when the first test asks for them; the tests then read their
results. That keeps this file near the cost of its slowest few commands instead of the sum of all.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from torchkiln import api
from torchkiln.cli.main import app

from ..conftest import KILN

CLASSES = ["dot", "hbar", "vbar"]

# Commands that need nothing but the project folder; all are started at once.
INDEPENDENT = {
    "train": ["train", "cfg.yaml", "--set", "train.epochs=1"],
    "config-show": ["config", "show", "cfg.yaml"],
    "bad-key": ["train", "typo.yaml"],
    "bad-set": ["train", "cfg.yaml", "--set", "train.epochs=zero"],
    "bad-image": ["train", "corrupt.yaml"],
    "bad-model": ["train", "badmodel.yaml"],
    "list-models": ["list", "models"],
}


def kiln(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # One thread per process: several run side by side on few cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "COLUMNS": "200"}
    return subprocess.run(
        [KILN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(proc.args[1:])
    return f"kiln {command} -> {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@dataclass
class Jobs:
    pool: ThreadPoolExecutor
    cwd: Path
    futures: dict[str, Future[subprocess.CompletedProcess[str]]]

    def start(self, name: str, *args: str) -> None:
        self.futures[name] = self.pool.submit(kiln, *args, cwd=self.cwd)

    def result(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.futures[name].result()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_image_folder, make_config) -> Path:
    """A working folder: images/, a config for them, and one broken config per bad-input case."""
    root = tmp_path_factory.mktemp("project")
    make_image_folder(root / "images")
    corrupt = make_image_folder(root / "corrupt", per_class=3)
    (corrupt / "hbar" / "broken.png").write_bytes(b"not a png at all")

    def write(name: str, cfg: dict) -> None:
        (root / name).write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")

    cfg = make_config("images", "runs")
    cfg["train"]["epochs"] = 3  # the command line sets 1: proves --set wins
    write("cfg.yaml", cfg)
    write("typo.yaml", {**cfg, "train": {"epoch": 1}})
    write("corrupt.yaml", {**cfg, "data": {**cfg["data"], "path": "corrupt"}})
    write("badmodel.yaml", {**cfg, "model": {"name": "resnet-18"}})
    return root


@pytest.fixture(scope="module")
def jobs(project: Path) -> Iterator[Jobs]:
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 2) + 1)) as pool:
        running = Jobs(pool, project, {})
        for name, args in INDEPENDENT.items():
            running.start(name, *args)
        yield running


@pytest.fixture(scope="module")
def run_dir(jobs: Jobs, project: Path) -> Path:
    """The run trained by `kiln train`; its evaluation and predictions are started as soon as it exists."""
    proc = jobs.result("train")
    assert proc.returncode == 0, explain(proc)
    path = project / proc.stdout.strip().splitlines()[-1]
    jobs.start("evaluate", "evaluate", str(path))
    jobs.start(
        "predict",
        "predict",
        str(path / "bundle"),
        "images/hbar/00.png",
        "images/vbar/01.png",
        "--top-k",
        "2",
        "--json",
    )
    jobs.start("export", "export", str(path), "--bench-seconds", "0.01")
    return path


# --- the happy path -----------------------------------------------------------------------------
def test_train_writes_a_complete_run(jobs: Jobs, run_dir: Path) -> None:
    assert run_dir.is_dir()
    assert run_dir.parent.name == "images-cnn" and run_dir.parent.parent.name == "runs"
    for f in (
        "bundle/model.safetensors",
        "bundle/bundle.json",
        "bundle/config.yaml",
        "config.yaml",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "history.json",
    ):
        assert (run_dir / f).is_file(), f
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["data"]["classes"] == CLASSES
    assert (resolved["data"]["image_size"], resolved["data"]["channels"]) == (16, 3)
    assert resolved["train"]["epochs"] == 1
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history) == 1 and {"train/loss", "val/accuracy"} <= set(history[0])
    meta = json.loads((run_dir / "bundle" / "bundle.json").read_text())
    assert meta["format"] == "torchkiln-bundle" and meta["labels"] == CLASSES
    assert "Traceback" not in jobs.result("train").stderr


def test_evaluate_writes_metrics_and_report(jobs: Jobs, run_dir: Path) -> None:
    proc = jobs.result("evaluate")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith("test: accuracy ")
    out = run_dir / "eval" / "test"
    assert (out / "report.html").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num_samples"] == 3


def test_predict_prints_one_json_line_per_image(jobs: Jobs, run_dir: Path) -> None:
    proc = jobs.result("predict")
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    answers = [json.loads(line) for line in lines]
    assert [a["input"] for a in answers] == ["images/hbar/00.png", "images/vbar/01.png"]
    for a in answers:
        assert a["label"] in CLASSES and 0.0 < a["score"] <= 1.0
        assert len(a["top_k"]) == 2
        assert a["top_k"][0] == {"label": a["label"], "score": a["score"]}
        assert a["top_k"][0]["score"] >= a["top_k"][1]["score"]


def test_export_writes_an_onnx_variant_that_predicts(jobs: Jobs, run_dir: Path, project: Path) -> None:
    proc = jobs.result("export")
    assert proc.returncode == 0, explain(proc)
    variant = Path(proc.stdout.strip().splitlines()[-1])
    assert variant == run_dir / "bundle-onnx"
    assert "pass numerical parity" in proc.stdout and "pass accuracy parity" in proc.stdout
    assert "onnx fp32" in proc.stdout and (run_dir / "exports/onnx/export_report.html").is_file()
    predicted = kiln("predict", str(variant), "images/hbar/00.png", "--json", cwd=project)
    assert predicted.returncode == 0, explain(predicted)
    assert json.loads(predicted.stdout)["label"] in CLASSES


def test_config_show_prints_the_resolved_config(jobs: Jobs) -> None:
    proc = jobs.result("config-show")
    assert proc.returncode == 0, explain(proc)
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["data"]["classes"] == CLASSES
    assert cfg["data"]["image_size"] == 16 and len(cfg["data"]["mean"]) == 3
    assert cfg["train"]["epochs"] == 3  # no --set here: the file's value


def test_list_models(jobs: Jobs) -> None:
    proc = jobs.result("list-models")
    assert proc.returncode == 0, explain(proc)
    for name in ("cnn", "mlp", "resnet18", "efficientnet_lite0"):
        assert f" {name} " in proc.stdout


# The other two lists run in-process: the same command code, without paying for another torch import.
@pytest.mark.parametrize(
    ("kind", "names"), [("tasks", ["image-classification"]), ("datasets", ["digits", "fashion-mnist"])]
)
def test_list_tasks_and_datasets(kind: str, names: list[str]) -> None:
    result = CliRunner().invoke(app, ["list", kind], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in names:
        assert f" {name} " in result.output


# --- bad input: exit code 2, the message, no traceback ------------------------------------------
@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("bad-key", "unknown key 'train.epoch'. Did you mean 'epochs'?"),
        ("bad-set", "'train.epochs': Input should be a valid integer, unable to parse string as an integer."),
        ("bad-image", "is corrupt or not an image"),
        ("bad-model", "Unknown model 'resnet-18'. Did you mean 'resnet18'? Run 'kiln list models'"),
    ],
)
def test_bad_input_exits_2_with_the_message(jobs: Jobs, job: str, expected: str) -> None:
    proc = jobs.result(job)
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert expected in proc.stderr


def test_corrupt_image_message_names_the_file_and_the_fix(jobs: Jobs, project: Path) -> None:
    stderr = jobs.result("bad-image").stderr
    assert f"Image '{Path('corrupt') / 'hbar' / 'broken.png'}' is corrupt or not an image" in stderr
    assert "set data.on_error: skip to leave such files out" in stderr


# In-process from here (CliRunner): the same command code, milliseconds instead of a torch import each.
# Square brackets in user data (file names, model names) must print as text, not be read as rich markup.
@pytest.mark.parametrize("case", ["file", "model"])
def test_error_text_with_square_brackets_is_printed_as_is(
    tmp_path: Path, make_image_folder, make_config, case: str
) -> None:
    cfg = make_config(make_image_folder(tmp_path / "images", per_class=2), tmp_path / "runs")
    if case == "file":
        (tmp_path / "images" / "dot" / "scan[copy].png").write_bytes(b"junk")
        expected = "scan[copy].png"
    else:
        cfg["model"] = {"name": "[/x]"}
        expected = "Unknown model '[/x]'."
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = CliRunner().invoke(app, ["config", "show", str(path)])
    assert result.exit_code == 2
    assert expected in result.output


def test_predict_on_a_missing_file_is_a_plain_error(run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(run_dir / "bundle"), str(tmp_path / "gone.png")])
    assert result.exit_code == 2
    assert f"Image file '{tmp_path / 'gone.png'}' does not exist." in result.output


def test_train_without_a_config_says_what_to_give() -> None:
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 2
    assert "error: give a CONFIG file, or --resume RUN_DIR. Example: kiln train kiln.yaml" in result.output


def test_datasets_fetch_writes_one_split_or_says_why_not(tmp_path: Path) -> None:
    def fetch(*args: str):
        return CliRunner().invoke(app, ["datasets", "fetch", "digits", *args], terminal_width=200)

    ok = fetch("--out", str(tmp_path / "d"))
    assert ok.exit_code == 0 and "wrote 1797 images" in ok.output
    bad = fetch("--out", str(tmp_path / "e"), "--split", "test")
    assert bad.exit_code == 2
    assert "This data set has no 'test' split (it has no splits)." in bad.output
    assert not (tmp_path / "e").exists()


def test_kiln_starts_without_the_heavy_optional_imports() -> None:
    """Every kiln command imports the CLI and the API; reports, baselines and BERT load only when used."""
    heavy = ("matplotlib", "torchmetrics", "transformers", "scipy", "pandas", "statsmodels", "mlflow")
    code = (
        "import sys, torchkiln.api, torchkiln.cli.main\n"
        "from torchkiln.tasks import TASKS\n"
        "TASKS.names()\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "serve"])
def test_a_device_that_is_not_here_exits_2_before_any_work(command: str, tiny_bundle: Path) -> None:
    """--device on predict, evaluate, export and serve: a name of another form, then CUDA on a CPU machine."""
    extra = {"predict": ["--text", "x"], "serve": ["--log-url", "off"]}.get(command, [])
    for device, message in [
        ("gpu", "--device is 'gpu'; expected auto, cpu, cuda, cuda:N (e.g. cuda:1), N for cuda:N, or mps."),
        ("cuda:0", "--device is 'cuda:0' but CUDA is not available on this machine. Use auto (or cpu)."),
    ]:
        if device.startswith("cuda") and torch.cuda.is_available():
            continue
        result = CliRunner().invoke(app, [command, str(tiny_bundle), *extra, "--device", device])
        assert result.exit_code == 2, (command, device, result.output, result.exception)
        if command == "serve" and device == "gpu":  # a setting, checked with the other serve settings
            message = "The serve settings are invalid (1 problem(s)):\n  - 'device': expected auto, "
            message += "cpu, cuda, cuda:N (e.g. cuda:1), N for cuda:N, or mps. Got 'gpu'.\n"
        assert result.stderr.startswith(f"error: {message}"), (command, device, result.stderr)


def test_predict_on_the_cpu_answers_as_the_default(run_dir: Path, project: Path) -> None:
    image = str(next((project / "images").rglob("*.png")))
    answers = [
        CliRunner().invoke(app, ["predict", str(run_dir / "bundle"), image, "--json", *args]).stdout
        for args in ([], ["--device", "cpu"])
    ]
    assert answers[0] == answers[1] and json.loads(answers[0])["label"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_and_evaluate_on_cuda_agree_with_the_cpu(tiny_bundle: Path, tmp_path: Path) -> None:
    images = sorted(Path(api.load_bundle(tiny_bundle).config.data.path).rglob("*.png"))[:6]
    answers = {
        device: [
            json.loads(line)
            for line in CliRunner()
            .invoke(app, ["predict", str(tiny_bundle), *map(str, images), "--json", "--device", device])
            .stdout.splitlines()
        ]
        for device in ("cpu", "cuda")
    }
    assert [a["label"] for a in answers["cuda"]] == [a["label"] for a in answers["cpu"]]
    assert [a["score"] for a in answers["cuda"]] == pytest.approx(
        [a["score"] for a in answers["cpu"]], abs=1e-4
    )
    metrics = {}
    for device in ("cpu", "cuda"):
        result = CliRunner().invoke(
            app, ["evaluate", str(tiny_bundle), "--device", device, "--out", str(tmp_path / device)]
        )
        assert result.exit_code == 0, (result.output, result.exception)
        metrics[device] = json.loads((tmp_path / device / "metrics.json").read_text())
    assert metrics["cuda"]["accuracy"] == pytest.approx(metrics["cpu"]["accuracy"])


def test_one_class_data_exits_2_before_any_compute(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    """One class used to train to loss 0 and accuracy 1, and then answer that class for any input."""
    make_image_folder(tmp_path / "one", classes=("dot",))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_config(tmp_path / "one", tmp_path / "runs")))
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.stderr.splitlines()[0] == (
        f"error: Data '{tmp_path / 'one'}': the training split has one class, 'dot'. A classifier needs at "
        "least two classes; with one it answers that class for any input, and its accuracy says nothing. Add "
        "images of another class (a folder per class, or another label in the CSV), or check data.path."
    )
    assert not (tmp_path / "runs").exists()  # refused before a run folder, let alone any compute


def test_a_class_missing_from_a_split_is_a_warning_with_its_fix(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    make_image_folder(tmp_path / "data" / "train")
    make_image_folder(tmp_path / "data" / "val", classes=("dot", "hbar"), per_class=3)
    cfg = make_config(tmp_path / "data", tmp_path / "runs")
    cfg["train"]["epochs"] = 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, (result.output, result.exception)
    warning = (
        f"warning: Data '{tmp_path / 'data'}': the val split has no images of class 'vbar', so its val "
        "metrics cannot measure it (its ROC AUC is undefined: null in metrics.json). Add images of 'vbar', "
        "or raise data.split.val so that the split takes some."
    )
    assert warning in result.stderr.splitlines(), result.stderr
    assert (Path(result.stdout.splitlines()[-1]) / "bundle" / "bundle.json").is_file()  # it trained


def test_version_and_env_say_what_this_machine_runs() -> None:
    from torchkiln.core._version import __version__
    from torchkiln.engine.precision import cpu_has_fast_bf16

    result = CliRunner().invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"torchkiln {__version__}\n")
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, (result.output, result.exception)
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if not line.startswith("bf16"))
    assert rows["torchkiln"] == __version__
    assert rows["torch"] == torch.__version__
    assert rows["cuda"].startswith(
        f"{torch.version.cuda} (" if torch.cuda.is_available() else "not available"
    )
    bf16 = next(line for line in result.stdout.splitlines() if line.startswith("bf16 on the cpu"))
    assert ("fast (AMX" in bf16) == cpu_has_fast_bf16()
    assert rows["[serve]"].startswith("fastapi ") and "[all]" not in rows  # [all] only names other extras


def test_a_corrupt_image_in_kiln_predict_gets_no_training_advice(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    result = CliRunner().invoke(app, ["predict", str(tiny_bundle), str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: Image '{bad}' is corrupt or not an image (")
    assert result.stderr.rstrip().endswith("Replace or delete the file.") and "on_error" not in result.stderr


def test_resume_says_where_it_resumes_leaves_a_complete_run_alone_and_extends_it_on_request(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    make_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path / "images", tmp_path / "runs")
    cfg["train"]["epochs"] = 2
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, (result.output, result.exception)
    run = Path(result.stdout.splitlines()[-1])
    bundle_json = run / "bundle" / "bundle.json"
    before = bundle_json.read_bytes(), bundle_json.stat().st_mtime_ns

    result = CliRunner().invoke(app, ["train", "--resume", str(run)])  # complete: nothing to do
    assert result.exit_code == 0, (result.output, result.exception)
    steps = json.loads((run / "history.json").read_text())  # two epochs
    assert len(steps) == 2
    assert result.stderr.splitlines()[0] == (
        f"{run} is complete (all 2 epochs done; its bundle is left as it is. To train it longer: kiln train "
        f"--resume {run} --epochs N, with N over 2)."
    )
    assert result.stdout.splitlines()[-1] == str(run)
    assert (bundle_json.read_bytes(), bundle_json.stat().st_mtime_ns) == before

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert result.exit_code == 0, (result.output, result.exception)
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"resuming {run} at epoch 3 of 3, step ") and first.split()[-1].isdigit()
    assert len(json.loads((run / "history.json").read_text())) == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert bundle_json.read_bytes() != before[0]  # the extended run wrote its new bundle

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", "train.lr=0.1"])
    assert result.exit_code == 2
    assert "takes no CONFIG and no setting but --epochs N" in result.stderr


def test_paths_are_never_wrapped_without_a_terminal(tiny_bundle: Path, tmp_path: Path) -> None:
    """Rich assumes 80 columns when stdout is not a terminal; a path split over two lines breaks grep."""
    out = tmp_path / ("a-folder-name-long-enough-that-the-line-passes-eighty-columns-" * 2)
    result = CliRunner().invoke(app, ["evaluate", str(tiny_bundle), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.splitlines()
    assert f"metrics: {out / 'metrics.json'}" in lines and f"report:  {out / 'report.html'}" in lines
    assert all(len(line) > 80 for line in lines if line.startswith(("metrics:", "report:")))


def test_an_image_manifest_with_its_own_column_names_trains(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    images = make_image_folder(tmp_path / "images")
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(images.rglob("*.png"))]
    (tmp_path / "labels.csv").write_text("file,category\n" + "\n".join(rows) + "\n")
    cfg = make_config(tmp_path / "labels.csv", tmp_path / "runs")
    cfg["train"]["epochs"] = 1
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 2
    assert "but not 'path' and 'label', which data.path_column and data.label_column name." in result.stderr
    assert "header line" not in result.stderr  # the file has one
    args = ["--set", "data.path_column=file", "--set", "data.label_column=category"]
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), *args])
    assert result.exit_code == 0, (result.output, result.exception)
    assert yaml.safe_load((Path(result.stdout.splitlines()[-1]) / "config.yaml").read_text())["data"][
        "classes"
    ] == ["dot", "hbar", "vbar"]


def test_train_log_epochs_prints_every_nth_epoch_and_the_last(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    make_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path / "images", tmp_path / "runs")
    cfg["train"] |= {"epochs": 5, "log_epochs": 2}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, (result.output, result.exception)
    shown = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert shown == ["2/5", "4/5", "5/5"]
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "--set", "train.log_epochs=0"])
    assert result.exit_code == 0 and not [ln for ln in result.stderr.splitlines() if ln.startswith("epoch ")]


def test_predict_takes_a_folder_and_a_glob_and_writes_csv_or_jsonl(tiny_bundle: Path, tmp_path: Path) -> None:
    images = sorted(Path(api.load_bundle(tiny_bundle).config.data.path).rglob("*.png"))
    folder = images[0].parent
    in_folder = sorted(folder.rglob("*.png"))
    pattern = str(folder.parent / "*" / "0[01].png")  # quoted: kiln expands it, not the shell
    by_glob = sorted(f for f in folder.parent.glob("*/0[01].png"))
    for given, expected in (([str(folder)], in_folder), ([pattern], by_glob)):
        result = CliRunner().invoke(app, ["predict", str(tiny_bundle), *given, "--json", "--device", "cpu"])
        assert result.exit_code == 0, (result.output, result.exception)
        assert [json.loads(line)["input"] for line in result.stdout.splitlines()] == list(map(str, expected))
    out = tmp_path / "predictions.csv"
    args = ["predict", str(tiny_bundle), str(folder), "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr.strip() == f"wrote {len(in_folder)} answer(s) to {out}" and result.stdout == ""
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["input"] for r in rows] == list(map(str, in_folder))
    assert list(rows[0]) == ["input", "label", "score", "top_k"]
    assert json.loads(rows[0]["top_k"])[0]["label"] == rows[0]["label"]
    result = CliRunner().invoke(app, args)  # the file exists now
    assert result.exit_code == 2 and "already exists" in result.stderr and "--overwrite" in result.stderr
    result = CliRunner().invoke(app, [*args[:-4], "--out", str(tmp_path / "p.jsonl"), "--device", "cpu"])
    assert result.exit_code == 0
    jsonl = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in jsonl] == list(map(str, in_folder))
    result = CliRunner().invoke(app, ["predict", str(tiny_bundle), str(tmp_path / "none-*.png")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: No file matches '{tmp_path / 'none-*.png'}'.")


def test_a_new_run_starts_from_an_earlier_bundle_with_model_init_from(
    tiny_bundle: Path, tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    """Fine-tuning on new data: same architecture, two classes instead of three (the head starts fresh)."""
    make_image_folder(tmp_path / "images", classes=("dot", "hbar"))
    cfg = make_config(tmp_path / "images", tmp_path / "runs")
    cfg["train"]["epochs"] = 1
    cfg["model"] = {**cfg.get("model", {}), "init_from": str(tiny_bundle)}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, (result.output, result.exception)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes[0].startswith(f"note: started from {tiny_bundle}: ") and "tensors loaded" in notes[0]
    assert notes[1].startswith("note: 2 tensor(s) of another shape start fresh: model.")  # the head's
    source = api.load_bundle(tiny_bundle).modules["model"].state_dict()
    trained = api.load_bundle(Path(result.stdout.splitlines()[-1]) / "bundle").modules["model"].state_dict()
    same_shape = [k for k in source if source[k].shape == trained[k].shape]
    assert len(same_shape) == len(source) - 2
    cfg["model"] = {"name": "mlp", "init_from": str(tiny_bundle)}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: model.init_from '{tiny_bundle}' holds a cnn model of the ")


def test_class_weights_auto_is_resolved_from_the_train_split(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    make_image_folder(tmp_path / "images" / "train", classes=("dot", "hbar"), per_class=4)
    make_image_folder(tmp_path / "images" / "train", classes=("vbar",), per_class=12, seed=1)
    cfg = make_config(tmp_path / "images", tmp_path / "runs")
    cfg["train"] |= {"epochs": 1, "class_weights": "auto", "monitor": "train/loss", "monitor_mode": "min"}
    cfg["data"]["split"] = {"val": 0.0, "test": 0.0}  # every image in train: known counts
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, (result.output, result.exception)
    saved = yaml.safe_load((Path(result.stdout.splitlines()[-1]) / "config.yaml").read_text())
    assert saved["train"]["class_weights"] == [1.666667, 1.666667, 0.555556]  # 20 / (3 x 4, 4, 12)
    result = CliRunner().invoke(
        app, ["train", str(tmp_path / "cfg.yaml"), "--set", "train.class_weights=[1,2]"]
    )
    assert result.exit_code == 2
    assert "train.class_weights has 2 value(s); the data has 3 classes (dot, hbar, vbar)." in result.stderr


def test_kiln_runs_lists_runs_and_compares_them(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    make_image_folder(tmp_path / "images")
    cfg = make_config(tmp_path / "images", tmp_path / "runs")
    cfg["train"]["epochs"] = 1
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    runs = []
    for name in ("first", "second"):
        result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "--set", f"name={name}"])
        assert result.exit_code == 0, (result.output, result.exception)
        runs.append(Path(result.stdout.splitlines()[-1]))
    result = CliRunner().invoke(app, ["evaluate", str(runs[0]), "--split", "val", "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)

    result = CliRunner().invoke(app, ["runs", "--runs-dir", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(row["run"] for row in listed) == sorted(map(str, runs))
    by_run = {row["run"]: row for row in listed}
    first = by_run[str(runs[0])]
    assert (first["task"], first["model"], first["epochs"], first["best epoch"]) == (
        "image-classification",
        "cnn",
        1,
        1,
    )
    metrics = json.loads((runs[0] / "eval" / "val" / "metrics.json").read_text())
    assert first["val/accuracy"] == metrics["accuracy"]  # the evaluation's, under the split's name
    assert "val/macro_f1" in first and not any(k.startswith("val/macro") for k in by_run[str(runs[1])])

    result = CliRunner().invoke(app, ["runs", "compare", *map(str, runs)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert any(
        line.split("│")[1].strip() == "val/macro_f1" for line in result.stdout.splitlines() if "│" in line
    )
    result = CliRunner().invoke(app, ["runs", "compare", str(runs[0]), str(tmp_path)])
    assert result.exit_code == 2 and f"'{tmp_path}' is not a run folder" in result.stderr
    result = CliRunner().invoke(app, ["runs", "--runs-dir", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "No runs under" in result.stderr


def test_the_common_training_keys_have_flags_of_their_own(
    tmp_path: Path, make_image_folder: Any, make_config: Any
) -> None:
    """--epochs, --batch-size, --lr, --device, --seed, --name and --runs-dir: each one --set, as saved."""
    make_image_folder(tmp_path / "images")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(make_config(tmp_path / "images", tmp_path / "runs")))
    flags = ["--epochs", "2", "--batch-size", "4", "--lr", "0.01", "--device", "cpu", "--seed", "7"]
    flags += ["--name", "2024", "--runs-dir", str(tmp_path / "elsewhere")]
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), *flags])
    assert result.exit_code == 0, (result.output, result.exception)
    run = Path(result.stdout.splitlines()[-1])
    assert run.parent == tmp_path / "elsewhere" / "2024"  # a name that looks like a number stays a name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["train"]["epochs"], saved["train"]["batch_size"], saved["train"]["device"]) == (2, 4, "cpu")
    assert (saved["train"]["optimizer"]["lr"], saved["seed"], saved["name"]) == (0.01, 7, "2024")

    both = ["train", str(tmp_path / "cfg.yaml"), "--epochs", "2", "--set", "train.epochs=3"]
    result = CliRunner().invoke(app, both)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --epochs 2 and --set train.epochs=... both set train.epochs; give it once, with either of "
        "them.\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_0_means_cuda_0(tmp_path: Path, make_image_folder: Any, make_config: Any) -> None:
    make_image_folder(tmp_path / "images")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(make_config(tmp_path / "images", tmp_path / "runs")))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml"), "--device", "0"])
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error: train.device is 'cuda:0' but CUDA is not available on this machine. Use auto (or cpu)."
    )
    assert not list((tmp_path / "runs").rglob("*"))  # no run folder is left behind
