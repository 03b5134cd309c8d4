"""kiln retrain end to end on the tiny drawn shapes: a champion trained on clean images, new data that it
gets wrong (inverted images), or a challenger trained on shuffled labels; a registry in tmp_path."""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import random
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageOps
from typer.testing import CliRunner

from torchkiln.cli.main import app
from torchkiln.core.errors import ServeError
from torchkiln.monitor.decision import RetrainSettings
from torchkiln.monitor.retrain import retrain
from torchkiln.serve import registry
from torchkiln.serve.app import create_app
from torchkiln.serve.settings import load_settings
from torchkiln.tasks.base import load_config
from torchkiln.tasks.training import train_new_run

from ..conftest import running

pytest.importorskip("mlflow")
pytest.importorskip("scipy")

MODEL = "shapes"


@pytest.fixture(scope="module")
def champion_run(tmp_path_factory: pytest.TempPathFactory, make_image_folder: Any, make_config: Any) -> Path:
    """The champion's config and its bundle, ``champion-bundle``: 3 epochs on 3 x 12 clean 16x16 images (right
    on clean data). Challengers' runs land in its runs_dir too, so tests take the bundle by this name."""
    root = tmp_path_factory.mktemp("champion")
    cfg = make_config(make_image_folder(root / "orig", per_class=12), root / "runs")
    cfg["train"]["epochs"] = 3
    (root / "kiln.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    shutil.copytree(train_new_run(load_config(root / "kiln.yaml")) / "bundle", root / "champion-bundle")
    return root


@pytest.fixture
def loop(champion_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh registry in tmp_path whose champion (version 1) is the champion run's bundle."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    bundle = champion_run / "champion-bundle"
    registry.register_bundle(bundle, name=MODEL, alias="champion", tracking_uri=uri)
    return {"config": champion_run / "kiln.yaml", "uri": uri, "tmp": tmp_path}


def inverted(root: Path, make_image_folder: Any, *, per_class: int = 40) -> Path:
    """Drawn shapes with inverted colours: the champion never saw such images."""
    folder = make_image_folder(root, per_class=per_class, seed=1)
    for p in folder.rglob("*.png"):
        ImageOps.invert(Image.open(p).convert("RGB")).save(p)
    return folder


def test_a_better_challenger_is_promoted_with_its_record_and_lineage_and_rollback_undoes_it(
    loop: dict[str, Any], make_image_folder: Any
) -> None:
    new = inverted(loop["tmp"] / "new", make_image_folder)
    out = loop["tmp"] / "retrain"
    result = retrain(
        loop["config"],
        model=MODEL,
        data=[new],
        settings=RetrainSettings(epochs=5),
        tracking_uri=loop["uri"],
        out_dir=out,
        device="cpu",
    )
    assert result.record.outcome == "promoted", result.record.reason
    assert registry.current_version(MODEL, "champion", tracking_uri=loop["uri"]) == "2"
    assert registry.current_version(MODEL, "challenger", tracking_uri=loop["uri"]) == "2"

    record = json.loads((out / "decision.json").read_text())
    assert record["outcome"] == "promoted" and record["champion"]["version"] == "1"
    assert record["challenger"]["version"] == "2"
    assert record["challenger"]["init_from"]  # fine-tuned from the champion's bundle
    assert record["test"]["c"] > record["test"]["b"] and record["test"]["p_value"] < 0.05
    assert record["challenger"]["metrics"]["accuracy"] > record["champion"]["metrics"]["accuracy"] + 0.01
    n_test = record["data"]["test_items"]
    assert n_test == record["data"]["counts"][str(new)]["test"] == 36  # 30 % of each class of 40
    # The fresh test set was never training data: it is split "test" in the merged manifest.
    rows = list(csv.DictReader((out / "merged.csv").open()))
    assert sum(r["split"] == "test" for r in rows) == n_test
    assert all(r["split"] in ("train", "val") for r in rows if "/orig/" in r["path"])

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=loop["uri"], registry_uri=loop["uri"])
    tags = client.get_model_version(MODEL, "2").tags
    assert tags["torchkiln.retrain.parent_version"] == "1"
    assert tags["torchkiln.retrain.data_sha256"] == record["data"]["data_sha256"]
    assert tags["torchkiln.previous_champion"] == "1"
    assert tags["torchkiln.decision"].endswith("decision.json")
    decision_run = client.search_runs(
        [client.get_experiment_by_name(registry.RETRAIN_EXPERIMENT).experiment_id]
    )[0]
    assert decision_run.data.tags["torchkiln.retrain.test_sha256"] == record["data"]["test_sha256"]

    result = CliRunner().invoke(app, ["registry", "rollback", MODEL, "--tracking-uri", loop["uri"]])
    assert result.exit_code == 0, result.output
    assert f"models:/{MODEL}@champion -> version 1" in result.output
    assert registry.current_version(MODEL, "champion", tracking_uri=loop["uri"]) == "1"


def test_a_challenger_trained_on_shuffled_labels_is_rejected_and_the_champion_stays(
    loop: dict[str, Any], make_image_folder: Any
) -> None:
    # Clean new images; its own split: the train rows' labels are shuffled, the test rows keep the truth.
    folder = make_image_folder(loop["tmp"] / "new", per_class=30, seed=2)
    files = sorted(folder.rglob("*.png"))
    labels = [p.parent.name for p in files]
    shuffled = labels[:]
    random.Random(0).shuffle(shuffled)
    manifest = loop["tmp"] / "new.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for i, (p, lab, wrong) in enumerate(zip(files, labels, shuffled, strict=True)):
            w.writerow([p, lab, "test"] if i % 3 == 0 else [p, wrong, "train"])
    result = retrain(
        loop["config"],
        model=MODEL,
        data=[manifest],
        settings=RetrainSettings(epochs=4, from_scratch=True),
        tracking_uri=loop["uri"],
        out_dir=loop["tmp"] / "retrain",
        device="cpu",
    )
    assert result.record.outcome == "rejected"
    assert result.record.reason.startswith("offline gate: not significantly better")
    assert result.challenger_version is None
    versions = registry.list_versions(MODEL, tracking_uri=loop["uri"])
    assert [(v.version, v.aliases) for v in versions] == [("1", ("champion",))]
    record = json.loads((loop["tmp"] / "retrain" / "decision.json").read_text())
    assert record["outcome"] == "rejected" and record["test"]["p_value"] >= 0.05
    assert record["data"]["test_items"] == 30


def test_dry_run_prints_the_plan_and_gates_and_changes_nothing(
    loop: dict[str, Any], make_image_folder: Any
) -> None:
    new = make_image_folder(loop["tmp"] / "new", per_class=3)
    result = CliRunner().invoke(
        app,
        [
            "retrain",
            str(loop["config"]),
            "--model",
            MODEL,
            "--data",
            str(new),
            "--tracking-uri",
            loop["uri"],
            "--set",
            "alpha=0.01",
            "--set",
            "min_effect=0.02",
            "--out",
            str(loop["tmp"] / "out"),
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "champion version 1" in result.output
    assert "McNemar one-sided mid-p p < 0.01 AND accuracy gain >= 2.00 points" in result.output
    assert "then a canary answering 10% of request keys, judged by a sequential test" in result.output
    assert not (loop["tmp"] / "out").exists()
    assert len(registry.list_versions(MODEL, tracking_uri=loop["uri"])) == 1


def test_bad_gates_and_a_rollback_without_history_exit_2_with_the_fix(loop: dict[str, Any]) -> None:
    runner = CliRunner()
    bad = runner.invoke(
        app,
        [
            "retrain",
            str(loop["config"]),
            "--model",
            MODEL,
            "--set",
            "alpah=0.1",
            "--tracking-uri",
            loop["uri"],
            "--dry-run",
        ],
    )
    assert bad.exit_code == 2 and "alpha" in bad.output
    did_you_mean = "  - unknown key 'alpah'. Did you mean 'alpha'? Valid keys here: alpha, canary_alpha,"
    assert did_you_mean in bad.stderr
    missing = loop["tmp"] / "gates.yaml"
    bad = runner.invoke(
        app, ["retrain", str(loop["config"]), "--model", MODEL, "--settings", str(missing), "--dry-run"]
    )
    assert (bad.exit_code, bad.stderr) == (
        2,
        f"error: Retrain settings file '{missing}' does not exist. Check the path, or leave --settings out "
        "for the defaults (docs/monitoring.md lists them).\n",
    )
    result = runner.invoke(app, ["registry", "rollback", MODEL, "--tracking-uri", loop["uri"]])
    assert result.exit_code == 2
    assert "records no previous champion" in result.output
    assert f"kiln registry alias {MODEL} VERSION champion" in result.output


def test_new_labels_outside_the_champions_classes_fail_before_training(
    loop: dict[str, Any], make_image_folder: Any
) -> None:
    new = make_image_folder(loop["tmp"] / "new", per_class=3, classes=("dot", "ring", "vbar"))
    shutil.rmtree(new / "dot")
    with pytest.raises(Exception, match=r"labels \['ring'\] that the champion does not know"):
        retrain(loop["config"], model=MODEL, data=[new], tracking_uri=loop["uri"], out_dir=loop["tmp"] / "o")


async def serve_and_label(bundle: Path, db: Path, images: list[Path], *, keep_bodies: float) -> None:
    """Serve ``bundle`` in process as MODEL, one request per image, each with its true label as feedback."""
    s = load_settings(
        models=[{"uri": str(bundle), "name": MODEL}],
        log_url=f"sqlite:///{db}",
        log_payload_sample_rate=keep_bodies,
    )
    app = create_app(s)
    async with running(app) as client:
        for p in images:
            body = {"images": [base64.b64encode(p.read_bytes()).decode()]}
            r = await client.post(f"/v1/models/{MODEL}/predict", json=body)
            assert r.status_code == 200, r.text
            f = await client.post(
                "/v1/feedback", json={"request_id": r.json()["request_id"], "label": p.parent.name}
            )
            assert f.status_code == 201, f.text


def test_feedback_labelled_logged_inputs_retrain_and_replay(
    loop: dict[str, Any], champion_run: Path, make_image_folder: Any
) -> None:
    bundle = champion_run / "champion-bundle"
    shown = sorted(inverted(loop["tmp"] / "shown", make_image_folder).rglob("*.png"))
    db = loop["tmp"] / "p.db"
    asyncio.run(serve_and_label(bundle, db, shown, keep_bodies=1.0))
    result = retrain(
        loop["config"],
        model=MODEL,
        feedback_from=f"sqlite:///{db}",
        tracking_uri=loop["uri"],
        settings=RetrainSettings(epochs=5, replay_items=200),
        out_dir=loop["tmp"] / "retrain",
        device="cpu",
    )
    record = result.record
    assert record.outcome == "promoted", record.reason
    assert record.data["counts"]["feedback"] == {"train": 72, "val": 12, "test": 36}
    replay = record.replay
    assert replay is not None
    assert (replay["requests"], replay["inputs"], replay["labelled"], replay["without_payload"]) == (
        120,
        120,
        120,
        0,
    )
    acc = replay["accuracy_on_labelled"]
    assert acc["challenger"] > acc["champion"]
    assert 0 <= replay["agreement"] < 1  # they disagree where the champion was wrong


def test_a_log_without_bodies_says_so(
    loop: dict[str, Any], champion_run: Path, make_image_folder: Any
) -> None:
    bundle = champion_run / "champion-bundle"
    shown = sorted(make_image_folder(loop["tmp"] / "shown", per_class=2).rglob("*.png"))
    db = loop["tmp"] / "p.db"
    asyncio.run(serve_and_label(bundle, db, shown, keep_bodies=0.0))
    with pytest.raises(
        ServeError,
        match=r"no request bodies with a feedback label for model .shapes. .* log_payload_sample_rate > 0",
    ):
        retrain(loop["config"], model=MODEL, feedback_from=f"sqlite:///{db}", tracking_uri=loop["uri"])


def test_a_server_that_cannot_be_reached_fails_the_run_with_its_record_written(
    loop: dict[str, Any], make_image_folder: Any
) -> None:
    new = inverted(loop["tmp"] / "new", make_image_folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    out = loop["tmp"] / "retrain"
    with pytest.raises(ServeError, match=f"Cannot reach the server at http://127.0.0.1:{port}"):
        retrain(
            loop["config"],
            model=MODEL,
            data=[new],
            settings=RetrainSettings(epochs=5),
            tracking_uri=loop["uri"],
            server=f"http://127.0.0.1:{port}",
            log_url=f"sqlite:///{loop['tmp']}/p.db",
            out_dir=out,
            device="cpu",
        )
    record = json.loads((out / "decision.json").read_text())
    assert record["outcome"] == "failed" and "Cannot reach the server" in record["reason"]
    assert registry.current_version(MODEL, "champion", tracking_uri=loop["uri"]) == "1"  # never promoted


def test_the_challenger_keeps_all_the_new_data_under_a_limit_per_class(
    champion_run: Path, tmp_path: Path
) -> None:
    """The merge applies the champion's data.limit_per_class to the original data only; the challenger's
    config must not apply it again to the merged train split, or the new data is cut."""
    from torchkiln.monitor.data_merge import MergedData
    from torchkiln.monitor.retrain import _challenger_config

    cfg = load_config(champion_run / "kiln.yaml", ["data.limit_per_class=5"])
    columns = {"format": "csv", "path_column": "path", "label_column": "label", "split_column": "split"}
    overrides = {"path": str(tmp_path / "merged.csv")} | columns
    merged = MergedData(tmp_path / "merged.csv", [], {}, "0" * 64, "0" * 64, overrides)
    ccfg = _challenger_config(
        cfg, champion_run / "bundle", merged, RetrainSettings(), ["dot", "hbar", "vbar"]
    )
    assert cfg.data.limit_per_class == 5 and ccfg.data.limit_per_class is None
    assert ccfg.data.path == str(tmp_path / "merged.csv") and ccfg.model.init_from == str(
        champion_run / "bundle"
    )
