"""``kiln export``: prune (+ fine-tune) -> ONNX -> int8, every step measured, the result gated.

Each candidate model becomes a row: file size, parameters (and the values its file stores), latency
at batch 1 and 32, the task metric on held-out data, and its distance from the model it was made
from. A row slower than the eager model is flagged, and noted. The last row is the variant; it is
written as a bundle only if it passes the parity gate, and the report says why or why not either way.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from torchkiln.artifacts.bundle import Bundle, load_bundle, save_bundle, without_pretrained
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.core.errors import ExportError
from torchkiln.engine.precision import cpu_name, resolve_device
from torchkiln.exporter.bench import measure
from torchkiln.exporter.gate import (
    BENCH_BATCHES,
    Check,
    Row,
    eager_notes,
    int8_notes,
    metric_check,
    numeric_check,
    prune_notes,
    slower_batches,
)
from torchkiln.exporter.onnx import INPUT_NAME, export_onnx
from torchkiln.exporter.options import ExportOptions
from torchkiln.exporter.prune import (
    PruneResult,
    add_unstructured_masks,
    count_params,
    make_permanent,
    prune_structured,
    weight_sparsity,
)
from torchkiln.exporter.quantize import check_calibration, load_calibration_file, quantize_onnx
from torchkiln.exporter.report import write_reports
from torchkiln.tasks.base import validate
from torchkiln.tasks.training import train_task

EVAL_BATCH = 256


@dataclass(frozen=True)
class ExportResult:
    """What ``export`` did: the variant (``None`` if rejected), the checks, the table and reports."""

    passed: bool
    variant: Path | None
    name: str
    checks: list[Check]
    rows: list[Row]
    notes: list[str]
    report_html: Path
    report_json: Path


@dataclass
class _Eval:
    inputs: np.ndarray  # (N, ...) raw model inputs of the held-out split
    targets: torch.Tensor  # (N,)


def _collect(bundle: Bundle, data: Any, split: str) -> _Eval:
    cfg, task = bundle.config, bundle.task
    xs, ys = [], []
    for batch in task.loader(cfg, data, split, train=False):
        x, y = task.to_device(batch, torch.device("cpu"), channels_last=False)
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ExportError(
            f"The {split} split of '{cfg.data.path}' is empty, so the export cannot be checked. "
            f"Use --split val, or give the data a {split} split."
        )
    # One array for the whole split, joined as the server joins requests (texts: padded to the longest).
    return _Eval(task.collate_inputs(cfg, xs).numpy(), torch.cat(ys))


def _eager(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.cpu().eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def _outputs(predict: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([predict(inputs[i : i + EVAL_BATCH]) for i in range(0, len(inputs), EVAL_BATCH)])


def _metric(bundle: Bundle, outputs: np.ndarray, targets: torch.Tensor) -> float:
    metrics = bundle.task.metrics(bundle.config)
    metrics.update(torch.from_numpy(outputs), targets)
    pm = bundle.task.primary_metric
    return metrics.compute()[pm.name] * pm.scale


class _Measurer:
    """Runs each candidate over the held-out split and the latency benchmark; collects the rows."""

    def __init__(self, bundle: Bundle, ev: _Eval, opts: ExportOptions) -> None:
        self.bundle, self.ev, self.opts = bundle, ev, opts
        self.rows: list[Row] = []
        self.outputs: list[np.ndarray] = []

    def add(
        self,
        name: str,
        file: Path,
        sizes: tuple[int, int],
        predict: Callable[[np.ndarray], np.ndarray],
        *,
        source: int | None,
    ) -> Row:
        """Measure a candidate; ``sizes`` is (params, stored values) (see :class:`Row`), ``source``
        the index of the row it was converted from."""
        out = _outputs(predict, self.ev.inputs)
        baseline = self.outputs[0] if self.outputs else out
        row = Row(
            name=name,
            runtime="onnxruntime" if file.suffix == ".onnx" else "torch",
            file_bytes=file.stat().st_size,
            params=sizes[0],
            stored_values=sizes[1],
            metric=_metric(self.bundle, out, self.ev.targets),
            max_abs_diff=None if source is None else float(np.abs(out - self.outputs[source]).max()),
            agreement=None if source is None else float((out.argmax(1) == baseline.argmax(1)).mean()),
        )
        for b in BENCH_BATCHES:
            batch = np.ascontiguousarray(np.resize(self.ev.inputs, (b, *self.ev.inputs.shape[1:])))
            row.latency[str(b)] = measure(predict, batch, seconds=self.opts.bench_seconds)
        if self.rows:
            row.slower_than_eager = slower_batches(self.rows[0], row)
        self.rows.append(row)
        self.outputs.append(out)
        return row


def _finetune(bundle: Bundle, model: nn.Module, data: Any, opts: ExportOptions, work: Path) -> None:
    """A short fine-tune of ``model`` (in place) on the training split, lr scaled down."""
    t = bundle.config.train
    raw = without_pretrained(bundle.config).model_dump(mode="json")
    raw["train"] |= {
        "epochs": opts.finetune_epochs,
        "optimizer": t.optimizer.model_dump(mode="json") | {"lr": t.optimizer.lr * opts.finetune_lr_mult},
        "scheduler": {"name": "cosine"},
        "early_stopping": {"patience": None},
        "max_minutes": None,
        "checkpoint_every": 0,
        "compile": False,
        "device": opts.device,
    }
    raw["tracking"] |= {"tensorboard": False, "mlflow": False}
    cfg = validate(raw)
    run_dir = work / "finetune"
    run_dir.mkdir()
    train_task(cfg, bundle.task, data, run_dir, modules=nn.ModuleDict({bundle.serves: model}), bundle=False)
    model.cpu().eval()


def _prune(
    bundle: Bundle, data: Any, ev: _Eval, opts: ExportOptions, amount: float, work: Path
) -> tuple[nn.Module, PruneResult]:
    """Prune ``amount`` (``opts.prune``, which the caller has checked is set) of a copy of the model."""
    model = copy.deepcopy(bundle.model).cpu().eval()
    before = count_params(model)
    channel_sparsity = 0.0
    if opts.prune_method == "l1-structured":
        channel_sparsity = prune_structured(model, amount, torch.from_numpy(ev.inputs[:2]))
    else:
        add_unstructured_masks(model, amount)
    if opts.finetune_epochs:
        _finetune(bundle, model, data, opts, work)
    make_permanent(model)
    result = PruneResult(
        method=opts.prune_method,
        requested=amount,
        params_before=before,
        params_after=count_params(model),
        weight_sparsity=weight_sparsity(model),
        channel_sparsity=channel_sparsity,
    )
    return model, result


def _calibration(bundle: Bundle, data: Any, ev: _Eval, opts: ExportOptions) -> np.ndarray:
    if opts.calibration_data is not None:
        calib = load_calibration_file(opts.calibration_data)
        source = f"'{opts.calibration_data}'"
    else:
        calib = _collect(bundle, data, opts.calibration_split).inputs
        source = f"the {opts.calibration_split} split"
    check_calibration(calib, ev.inputs, source, dynamic_axes=bundle.task.input_dynamic_axes)
    pick = np.random.default_rng(0).permutation(len(calib))[: opts.calibration_size]
    return calib[np.sort(pick)]


def _needed_splits(opts: ExportOptions) -> set[str]:
    splits = {opts.split}
    if opts.prune is not None and opts.finetune_epochs:
        splits |= {"train", "val"}
    if opts.quantize == "static" and opts.calibration_data is None:
        splits.add(opts.calibration_split)
    return splits


def export_bundle(path: str | Path, opts: ExportOptions) -> ExportResult:
    """Make one variant of a trained bundle and gate it; see :func:`torchkiln.api.export`."""
    resolve_device(opts.device, setting="--device")  # a bad name fails before any work
    bundle = load_bundle(path)
    if bundle.meta.get("runtime", "torch") != "torch":
        raise ExportError(
            f"'{bundle.path}' is already an exported {bundle.meta['runtime']} variant. Export from the "
            f"trained bundle it came from: {bundle.meta.get('variant', {}).get('source', 'RUN_DIR/bundle')}."
        )
    task = bundle.task
    if task.input_dynamic_axes is None:
        why = getattr(task, "export_unsupported", "its model does not trace to ONNX")
        raise ExportError(
            f"'{bundle.path}' is {'an' if task.kind[0] in 'aeiou' else 'a'} {task.kind} model, which kiln "
            f"export does not export: {why}. Serve the trained bundle itself: kiln serve {bundle.path} runs "
            f"it on the torch runtime (CPU or CUDA)."
        )
    name = opts.variant_name
    out = opts.out or bundle.path.with_name(f"{bundle.path.name}-{name}")
    _, data = bundle.task.prepare(
        without_pretrained(bundle.config), splits=_needed_splits(opts), state=bundle.state
    )
    ev = _collect(bundle, data, opts.split)
    calib = _calibration(bundle, data, ev, opts) if opts.quantize == "static" else None
    m = _Measurer(bundle, ev, opts)
    checks: list[Check] = []
    notes: list[str] = []
    extra: dict[str, Any] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # beside out: rename is atomic
    try:
        m.add(
            "torch fp32 (eager)",
            bundle.path / "model.safetensors",
            _torch_sizes(bundle.model),
            _eager(bundle.model),
            source=None,
        )
        model, model_file = bundle.model, None
        if opts.prune is not None:
            model = _prune_step(bundle, data, ev, opts, opts.prune, work, m, extra, notes)
        if opts.format == "onnx":
            axes = bundle.task.input_dynamic_axes
            model_file = _onnx_step(model, ev, axes, opts, work, m, extra, checks)
            if opts.quantize:
                model_file = _quantize_step(model_file, calib, opts.quantize, m, notes)
        pm, budget = bundle.task.primary_metric, opts.metric_budget
        checks.append(metric_check(pm, m.rows[0], m.rows[-1], budget=budget, split=opts.split))
        passed = all(c.passed for c in checks)
        notes += eager_notes(m.rows)
        summary = _summary(bundle, opts, out, passed, checks, m.rows, notes, extra, len(ev.inputs))
        report_json, report_html = write_reports(bundle.path.parent / "exports" / name, summary)
        variant = None
        if passed:
            variant = save_bundle(
                out,
                cfg=bundle.config,
                task=bundle.task,
                model=None if model_file else model,
                serves=bundle.serves,
                model_file=model_file,
                extra={"trained": bundle.meta.get("trained"), **extra, "variant": summary["variant"]},
                attachments={"export_report.json": report_json, "export_report.html": report_html},
                state_files=bundle.state_files,
                profile=bundle.profile,  # a variant checks inputs against what its source was trained on
                # ... and is monitored against its source's reference (computed with the torch model)
                reference=bundle.reference() if bundle.profile.get("reference") else None,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(passed, variant, name, checks, m.rows, notes, report_html, report_json)


def _prune_step(
    bundle: Bundle,
    data: Any,
    ev: _Eval,
    opts: ExportOptions,
    amount: float,
    work: Path,
    m: _Measurer,
    extra: dict[str, Any],
    notes: list[str],
) -> nn.Module:
    model, pruned = _prune(bundle, data, ev, opts, amount, work)
    extra["pruning"] = pruned.as_json()
    weights = work / "pruned.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    label = f"torch fp32 pruned {opts.prune_method} {amount:.0%}"
    row = m.add(label, weights, _torch_sizes(model), _eager(model), source=0)
    notes += prune_notes(pruned, row)
    return model


def _onnx_step(
    model: nn.Module,
    ev: _Eval,
    axes: tuple[int, ...],
    opts: ExportOptions,
    work: Path,
    m: _Measurer,
    extra: dict[str, Any],
    checks: list[Check],
) -> Path:
    model_file = work / "model.onnx"
    extra["exporter"] = export_onnx(model, torch.from_numpy(ev.inputs[:2]), model_file, dynamic_axes=axes)
    source = len(m.rows) - 1  # the eager model it was exported from (pruned or not)
    sizes = (m.rows[source].params, _onnx_values(model_file))
    row = m.add("onnx fp32", model_file, sizes, OnnxModel(model_file).run, source=source)
    largest = float(np.abs(m.outputs[source]).max())
    checks.append(numeric_check(row, opts.tolerance, largest))
    return model_file


def _quantize_step(fp32: Path, calib: np.ndarray | None, mode: str, m: _Measurer, notes: list[str]) -> Path:
    model_file = fp32.with_name("model.int8.onnx")
    quantize_onnx(fp32, model_file, mode=mode, input_name=INPUT_NAME, calibration=calib)
    predict = OnnxModel(model_file).run
    source = len(m.rows) - 2  # the eager model the fp32 ONNX row came from
    sizes = (m.rows[source].params, _onnx_values(model_file))
    row = m.add(f"onnx int8 {mode}", model_file, sizes, predict, source=source)
    notes += int8_notes(m.rows[-2], row)
    return model_file


def _torch_sizes(model: nn.Module) -> tuple[int, int]:
    """(learned parameters, values its state dict stores: the parameters and the buffers)."""
    return count_params(model), sum(t.numel() for t in model.state_dict().values())


def _onnx_values(path: Path) -> int:
    """The values an ONNX file stores: the elements of its initializers (see :class:`Row`)."""
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def _summary(
    bundle: Bundle,
    opts: ExportOptions,
    out: Path,
    passed: bool,
    checks: list[Check],
    rows: list[Row],
    notes: list[str],
    extra: dict[str, Any],
    items: int,
) -> dict[str, Any]:
    pm = bundle.task.primary_metric
    return {
        "variant": {
            "name": opts.variant_name,
            "passed": passed,
            "source": str(bundle.path),
            "source_sha256": bundle.meta.get("weights_sha256"),
            "options": opts.resolved(out),
            "unused_options": opts.unused(),
            "metric": {"name": pm.name, "unit": pm.unit, "split": opts.split, "items": items},
            "checks": [c.__dict__ for c in checks],
            "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads()},
        },
        "rows": [r.__dict__ for r in rows],
        "notes": notes,
        **extra,
    }
