"""`export()` end to end on a tiny trained run: variants, gates, reports and the bad-input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from torchkiln import api
from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.cli.main import app
from torchkiln.core.errors import BundleError, ExportError
from torchkiln.exporter import pipeline
from torchkiln.exporter.quantize import quantize_onnx

FAST = {"bench_seconds": 0.01}  # latency numbers are not under test here; 100 runs still happen


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, make_image_folder, make_config) -> Path:
    """A CNN trained on 3 easy classes (120 images, 12 held out for test) until it is near-perfect."""
    root = tmp_path_factory.mktemp("export")
    make_image_folder(root / "images", per_class=40)
    cfg = make_config(root / "images", root / "runs")
    cfg["model"]["args"] = {"channels": [8, 16], "hidden": 32}  # a hidden Linear for dynamic int8
    cfg["train"]["epochs"] = 4
    return api.train(api.load_config(cfg))


@pytest.fixture
def run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the run, so each test's variants and reports start from nothing."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def test_onnx_variant_passes_serves_and_reports(run: Path) -> None:
    result = api.export(run, **FAST)
    assert result.passed and result.variant == run / "bundle-onnx"
    assert [c.name for c in result.checks] == ["numerical parity", "accuracy parity"]
    assert result.rows[1].max_abs_diff is not None and result.rows[1].max_abs_diff <= 1e-4
    assert result.rows[1].metric == result.rows[0].metric

    meta = json.loads((result.variant / "bundle.json").read_text())
    assert meta["runtime"] == "onnxruntime" and meta["model_file"] == "model.onnx"
    assert meta["variant"]["passed"] and meta["variant"]["source"] == str(run / "bundle")
    assert meta["exporter"] in ("dynamo", "torchscript")
    assert {"export_report.json", "export_report.html", "config.yaml"} <= {
        p.name for p in result.variant.iterdir()
    }
    # The source's reference profile comes along, still naming the torch model it was computed with.
    source_ref, variant_ref = load_bundle(run).reference(), load_bundle(result.variant).reference()
    assert variant_ref.meta == source_ref.meta
    assert variant_ref.meta["weights_sha256"] == load_bundle(run).meta["weights_sha256"]

    images = [str(p) for p in sorted((Path(load_bundle(run).config.data.path) / "hbar").glob("*.png"))[:5]]
    eager = api.load_predictor(run).predict(images)
    onnx = api.load_predictor(result.variant).predict(images)
    assert [a["label"] for a in onnx] == [a["label"] for a in eager]
    assert np.allclose([a["score"] for a in onnx], [a["score"] for a in eager], atol=1e-5)

    evaluated = api.evaluate(result.variant)  # the evaluator runs the ONNX variant like any bundle
    assert evaluated.metrics.accuracy * 100 == pytest.approx(result.rows[1].metric)

    report = json.loads(result.report_json.read_text())
    assert [r["name"] for r in report["rows"]] == ["torch fp32 (eager)", "onnx fp32"]
    for row in report["rows"]:
        assert set(row["latency"]) == {"1", "32"} and row["latency"]["1"]["runs"] >= 100
        assert row["latency"]["1"]["p99_ms"] >= row["latency"]["1"]["p50_ms"] > 0
    html = result.report_html.read_text()
    assert "<table>" in html and "Passed" in html and "onnx fp32" in html
    assert leftovers(run) == []
    # params are the network's, the same for both; stored values are what each file holds
    eager, onnx_row = report["rows"]
    assert (
        onnx_row["params"] == eager["params"] == sum(p.numel() for p in load_bundle(run).model.parameters())
    )
    assert eager["stored_values"] > eager["params"]  # + BatchNorm statistics, input scale and shift
    assert onnx_row["stored_values"] != eager["stored_values"]  # BatchNorm folded into the convolutions
    options = report["variant"]["options"]
    assert options["budget"] == 0.1 and options["out"] == str(run / "bundle-onnx")  # resolved
    assert "<h2>Options</h2>" in html and '<th class="text">tolerance</th>' in html


def test_a_variant_slower_than_eager_is_flagged_in_the_report_and_by_the_cli(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timings are made up (the ONNX model is made 3x slower than eager): no test waits on a clock."""

    def measure(fn, batch, *, seconds):  # type: ignore[no-untyped-def]
        fn(batch)
        ms = 3.0 if isinstance(getattr(fn, "__self__", None), OnnxModel) else 1.0
        return {"p50_ms": ms, "p99_ms": ms, "mean_ms": ms, "runs": 100, "items_per_s": len(batch) / ms * 1e3}

    monkeypatch.setattr(pipeline, "measure", measure)
    cli = CliRunner().invoke(app, ["export", str(run), "--bench-seconds", "0.01"], terminal_width=200)
    assert cli.exit_code == 0, cli.output
    assert (
        "note onnx fp32 is slower than eager PyTorch on this CPU at batch 1 (p50 3.000 ms vs 1.000 ms) and "
        "batch 32 (p50 3.000 ms vs 1.000 ms)." in " ".join(cli.output.split())
    )
    report = run / "exports" / "onnx"
    assert json.loads((report / "export_report.json").read_text())["rows"][1]["slower_than_eager"] == [1, 32]
    assert (
        '<span class="badge">slower than eager at batch 1 and 32</span>'
        in (report / "export_report.html").read_text()
    )


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_variant_with_real_calibration_passes(run: Path, mode: str) -> None:
    result = api.export(run, quantize=mode, **FAST)
    assert result.passed, [c.detail for c in result.checks]
    assert [r.name for r in result.rows] == ["torch fp32 (eager)", "onnx fp32", f"onnx int8 {mode}"]
    assert result.rows[-1].file_bytes < result.rows[1].file_bytes
    assert json.loads((result.variant / "bundle.json").read_text())["runtime"] == "onnxruntime"


def test_int8_variant_that_misses_the_budget_is_rejected(run: Path, tmp_path: Path) -> None:
    # Calibrating on blank images sets every activation range to almost nothing: int8 saturates.
    blank = np.zeros((64, 3, 16, 16), np.uint8)
    np.save(tmp_path / "blank.npy", blank)
    result = api.export(run, quantize="static", calibration_data=tmp_path / "blank.npy", **FAST)
    assert not result.passed and result.variant is None
    check = result.checks[-1]
    assert check.name == "accuracy parity" and not check.passed and check.value > 1.0
    assert f"missed by {check.value - 1.0:.2f} points" in check.detail
    assert not (run / "bundle-onnx-int8-static").exists()
    report = json.loads(result.report_json.read_text())
    assert report["variant"]["passed"] is False
    assert "Rejected" in result.report_html.read_text()
    assert leftovers(run) == []

    # The CLI says so and exits with 1 (not 2: the input was fine, the variant was not good enough).
    args = ["export", str(run), "--quantize", "static", "--calibration-data", str(tmp_path / "blank.npy")]
    cli = CliRunner().invoke(app, [*args, "--bench-seconds", "0.01"], terminal_width=200)
    assert cli.exit_code == 1, cli.output
    assert "FAIL accuracy parity" in cli.output
    assert "rejected: onnx-int8-static was not written (see the report)" in cli.output


def test_structured_pruning_shrinks_the_model_and_reloads(run: Path) -> None:
    result = api.export(run, format="torch", prune=0.5, finetune_epochs=1, budget=100, **FAST)
    assert result.passed
    meta = json.loads((result.variant / "bundle.json").read_text())
    pruning = meta["pruning"]
    assert pruning["structured"] and pruning["params_after"] < 0.5 * pruning["params_before"]
    assert pruning["channel_sparsity"] == pytest.approx(0.5, abs=0.05)
    original, pruned = load_bundle(run), load_bundle(result.variant)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pruned.model) == pruning["params_after"] < count(original.model)
    assert result.rows[1].file_bytes < result.rows[0].file_bytes
    assert any("removed 50.0% of the output channels" in n for n in result.notes)


def test_unstructured_pruning_reports_sparsity_and_says_size_is_unchanged(run: Path) -> None:
    result = api.export(run, prune=0.6, prune_method="l1-unstructured", finetune_epochs=1, budget=100, **FAST)
    assert result.passed and result.variant == run / "bundle-pruned-l1-unstructured-60-onnx"
    report = json.loads(result.report_json.read_text())
    assert report["pruning"]["weight_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert report["pruning"]["params_after"] == report["pruning"]["params_before"]
    assert any("the file" in n and "stay" in n for n in result.notes)


# --- bad input ------------------------------------------------------------------------------------
def test_calibration_data_of_the_wrong_shape(run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "rgb32.npy", np.zeros((8, 3, 32, 32), np.uint8))
    with pytest.raises(ExportError) as err:
        api.export(run, quantize="static", calibration_data=tmp_path / "rgb32.npy", **FAST)
    assert str(err.value) == (
        f"Calibration data from '{tmp_path / 'rgb32.npy'}' has shape (8, 3, 32, 32) and dtype uint8, but "
        f"the model takes (N, 3, 16, 16) uint8 batches. Fix: save inputs preprocessed as the model sees "
        f"them (the bundle's preprocessing), or calibrate on the bundle's own data with "
        f"--calibration-split val."
    )
    assert leftovers(run) == [] and not (run / "exports").exists()


def test_bundle_from_another_version(run: Path) -> None:
    meta_file = run / "bundle" / "bundle.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(BundleError, match=r"has format 'torchkiln-bundle' version 99; this torchkiln"):
        api.export(run, **FAST)


def test_bundle_with_a_missing_file(run: Path) -> None:
    (run / "bundle" / "model.safetensors").unlink()
    with pytest.raises(BundleError) as err:
        api.export(run, **FAST)
    assert str(err.value) == (
        f"'{run / 'bundle'}' is not a complete torchkiln bundle: model.safetensors missing. Expected "
        f"bundle.json, config.yaml and the model file (model.safetensors or model.onnx). Restore the "
        f"file, or retrain (or re-export) to rewrite the bundle."
    )


def test_exporting_an_exported_variant(run: Path) -> None:
    variant = api.export(run, **FAST).variant
    with pytest.raises(ExportError, match=r"is already an exported onnxruntime variant\. Export from the"):
        api.export(variant, **FAST)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"prune": 1.5}, "'prune': Input should be less than 1. Got 1.5."),
        ({"quantize": "int4"}, "'quantize': Input should be 'dynamic' or 'static'. Got 'int4'."),
        ({"format": "torch"}, "--format torch without --prune would copy the bundle unchanged"),
        ({"format": "torch", "quantize": "static"}, "int8 quantization produces an ONNX Runtime model"),
    ],
)
def test_bad_options_fail_before_any_work(run: Path, options: dict, expected: str) -> None:
    with pytest.raises(ExportError) as err:
        api.export(run, **options)
    assert str(err.value).startswith("The export options are invalid (1 problem(s)):")
    assert expected in str(err.value)


def test_static_quantization_without_calibration_inputs_is_refused(tmp_path: Path) -> None:
    """A check, not an assert: it holds under python -O, and before ONNX Runtime is imported."""
    src = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as exc:
        quantize_onnx(src, tmp_path / "model.int8.onnx", mode="static", input_name="input")
    assert str(exc.value) == (
        f"Static int8 quantization of '{src}' got no calibration inputs; expected real model inputs (an "
        f"array like the model's input batch) to measure activation ranges on. Fix: pass calibration= "
        f"(checked with check_calibration), or use mode='dynamic'."
    )
