"""The public Python API. Each CLI command is a thin wrapper over one of these functions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from torchkiln.artifacts.bundle import load_bundle
from torchkiln.artifacts.predictor import Explanation, Predictor, load_predictor
from torchkiln.components.splits import SPLITS
from torchkiln.core.config import RunConfig
from torchkiln.core.config_io import format_errors
from torchkiln.core.errors import DataError, ExportError, PredictError
from torchkiln.core.io import atomic_write
from torchkiln.engine.precision import resolve_device
from torchkiln.engine.tracking import log_evaluation
from torchkiln.exporter import ExportOptions, ExportResult, export_bundle
from torchkiln.tasks import get_task
from torchkiln.tasks.base import Evaluation, load_config
from torchkiln.tasks.lr_range import lr_find
from torchkiln.tasks.training import resume_run, train_new_run
from torchkiln.tune import TuneResult, tune

if TYPE_CHECKING:
    from torchkiln.doctor import DoctorReport
    from torchkiln.serve.settings import ServeSettings

__all__ = [
    "Evaluation",
    "ExplainedImage",
    "ExportResult",
    "Predictor",
    "TuneResult",
    "doctor",
    "evaluate",
    "explain",
    "export",
    "load_config",
    "load_predictor",
    "lr_find",
    "resolve",
    "serve",
    "serve_settings",
    "train",
    "tune",
]


def resolve(cfg: RunConfig) -> RunConfig:
    """The config with every data-dependent default filled in from the data (what a run saves).

    Example:
        >>> resolve(load_config("kiln.yaml")).data.classes
    """
    return get_task(cfg.task.kind).prepare(cfg)[0]


def train(
    cfg: RunConfig | str | Path | None = None, *, resume: str | Path | None = None, epochs: int | None = None
) -> Path:
    """Train a model; returns the run directory (``runs/<name>/<timestamp>/``).

    Args:
        cfg: a config, or a YAML path. Not needed with ``resume``.
        resume: a run directory to continue from its last checkpoint (same config, same data). A
            complete run is left as it is.
        epochs: with ``resume``, raise ``train.epochs`` first: this extends a run that finished.

    Returns:
        The run directory; the bundle is ``run_dir / "bundle"``.

    Raises:
        ConfigError, DataError: before any compute, if the config or data is bad.
        CheckpointError: ``resume`` has no usable checkpoint.

    Example:
        >>> run_dir = train(load_config("kiln.yaml", ["train.epochs=2"]))
    """
    if resume is not None:
        return resume_run(Path(resume), epochs=epochs)
    if cfg is None:
        raise TypeError("train() needs a config or resume=RUN_DIR")
    return train_new_run(cfg if isinstance(cfg, RunConfig) else load_config(cfg))


def evaluate(
    path: str | Path,
    *,
    split: str | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    mlflow: bool = True,
    baseline: bool | None = None,
) -> Evaluation:
    """Evaluate a run directory or bundle on a split; writes ``metrics.json`` and ``report.html``.

    A classifier's report has per-class metrics, curves and the worst mistakes. A forecaster's puts the
    network beside naive, seasonal naive, ETS and ARIMA (fitted on the train part) on the same windows:
    metrics per horizon step and overall, and plots of the series and the forecasts.

    When the run was trained with ``tracking.mlflow`` on, its numbers also go to the run's MLflow run
    (``test_accuracy``, ...; ``eval_val_...`` for another split) with the report files as artifacts
    under ``eval/<split>``. A failure there is a warning: the evaluation is written all the same.

    Args:
        path: a run directory or a bundle.
        split: ``train``, ``val`` or ``test``; default: the config's ``evaluate.split``.
        out_dir: where to write; default ``RUN_DIR/eval/<split>/`` (``<bundle>-eval/<split>/``
            for a bundle outside a run directory).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        mlflow: log to the run's MLflow run (only the bundle of a run directory has one, and only when
            the run was trained with ``tracking.mlflow`` on); ``False`` never touches MLflow.
        baseline: a classifier beside its linear baseline (TF-IDF or pixels + logistic regression) on the
            same split; default: the config's ``evaluate.baseline`` (on unless the run turned it off).

    Returns:
        The task's :class:`~torchkiln.tasks.base.Evaluation`: its figures (a classifier's accuracy, ECE...;
        a forecaster's scores beside the baselines) and the paths of ``metrics.json`` and ``report.html``.

    Raises:
        BundleError: ``path`` holds no usable bundle.
        DataError: the split is unknown or has no samples (or no forecast windows).

    Example:
        >>> evaluate("runs/fashion-mnist-cnn/20261124-101500").metrics.accuracy
        >>> evaluate("runs/air-passengers-lstm-forecaster/20261124-201525").metrics["model"]["mase"]
    """
    bundle = load_bundle(path)
    if baseline is not None:
        cfg = bundle.config
        evaluate = cfg.evaluate.model_copy(update={"baseline": baseline})
        bundle = replace(bundle, config=cfg.model_copy(update={"evaluate": evaluate}))
    split = split or bundle.config.evaluate.split
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'. Expected one of {', '.join(SPLITS)}.")
    if out_dir is None:
        base = (
            bundle.path.parent / "eval"
            if bundle.path.name == "bundle"
            else bundle.path.with_name(f"{bundle.path.name}-eval")
        )
        out_dir = base / split
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    result = bundle.task.evaluate(
        bundle, split=split, out_dir=Path(out_dir), device=resolve_device(device, setting="--device")
    )
    if mlflow and bundle.config.tracking.mlflow and bundle.path.name == "bundle":  # a run's own bundle
        steps = (bundle.meta.get("trained") or {}).get("steps", 0)
        log_evaluation(bundle.path.parent, Path(out_dir), split=split, step=int(steps))
    return result


def export(path: str | Path, **options: Any) -> ExportResult:
    """Write a gated variant of a trained bundle: ONNX, int8, pruned, or a combination.

    Args:
        path: a run directory or its bundle.
        **options: the fields of :class:`~torchkiln.exporter.ExportOptions`: ``format`` ("onnx" or
            "torch"), ``quantize`` ("dynamic" or "static"), ``prune`` (a fraction in (0, 1)),
            ``prune_method`` ("l1-structured" or "l1-unstructured"), ``finetune_epochs``,
            ``calibration_split``, ``calibration_data`` (a .npy/.npz of model inputs), ``split``,
            ``budget`` (metric points the variant may lose), ``tolerance``, ``bench_seconds``, ``out``.

    Returns:
        An :class:`ExportResult`: ``passed``, the ``variant`` bundle (``None`` when rejected), the
        checks, the benchmark rows and the paths of ``export_report.json`` and ``.html``.

    Raises:
        ExportError: bad options, an unsupported operator, or calibration data of the wrong shape.
        BundleError: the bundle is incomplete or from another version.

    Example:
        >>> result = export("runs/fashion-mnist-cnn/20261124-101500", quantize="static")
        >>> result.passed, result.variant
        (True, PosixPath('runs/fashion-mnist-cnn/20261124-101500/bundle-onnx-int8-static'))
    """
    try:
        opts = ExportOptions(**options)
    except ValidationError as exc:
        what, fix = "The export options are invalid", "Fix the option; 'kiln export --help' lists them."
        raise ExportError(format_errors(exc, ExportOptions, what=what, fix=fix)) from None
    return export_bundle(path, opts)


def serve_settings(config: str | Path | None = None, **values: Any) -> ServeSettings:
    """Serve settings from ``values`` (e.g. ``models=[{"uri": ...}]``), ``KILN_SERVE_*`` and a YAML file.

    Raises:
        ServeError: a setting is unknown, unsafe or invalid; the message lists each problem.

    Example:
        >>> serve_settings(models=[{"uri": "runs/fashion/20261124-0800/bundle"}]).host
        '127.0.0.1'
    """
    from torchkiln.serve.settings import load_settings

    return load_settings(config, **values)


def serve(settings: ServeSettings) -> None:
    """Run the model server until SIGTERM or Ctrl-C (``kiln serve``); see :func:`serve_settings`.

    For your own ASGI server or tests, build the app instead: ``torchkiln.serve.app.create_app(settings)``.
    """
    from torchkiln.serve.server import run

    run(settings)


@dataclass(frozen=True)
class ExplainedImage:
    """One image of :func:`explain`: the file, its explanation (answer, class, heatmap), the PNG written."""

    source: Path
    explanation: Explanation
    written: Path


def explain(
    path: str | Path,
    images: list[str | Path],
    *,
    out: str | Path,
    method: str = "gradcam",
    target: str | None = None,
    device: str = "auto",
    min_side: int = 224,
) -> list[ExplainedImage]:
    """Grad-CAM heatmaps of a bundle's answers, drawn over the images and written as PNG files.

    Args:
        path: a run directory or a bundle of a task that explains (an image classifier, eager weights).
        images: image files, folders (their images, recursively) or globs (``"xrays/*.png"``).
        out: with one image, the PNG file to write (``heat.png``); with several, or a name without
            ``.png``, a folder that gets one ``<image name>.png`` per image.
        method: ``"gradcam"`` or ``"gradcam++"``.
        target: the class to explain, by name; None for each image's predicted class.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        min_side: small images are enlarged (crisp pixels) to at least this many pixels a side.

    Returns:
        Per image (folders and globs expanded), in order: the file, its
        :class:`~torchkiln.artifacts.predictor.Explanation` (the answer, the explained class, the heatmap)
        and the PNG written.

    Raises:
        BundleError: the bundle is an exported (ONNX) variant: explain the trained bundle it came from.
        PredictError: the task or model cannot explain, the class is unknown, or ``out`` names a file
            for several images.
        DataError: an image cannot be read.

    Example:
        >>> explain("runs/chest-xray/20261201-101500", ["xray.png"], out="heat.png", method="gradcam++")
    """
    from torchkiln.components.images import expand_inputs

    files = expand_inputs([Path(p) for p in images])
    target_path = Path(out)
    if len(files) > 1 and target_path.suffix.lower() == ".png":
        raise PredictError(
            f"With {len(files)} images, --out is a folder; got '{out}', a file name. Pass a folder, e.g. "
            f"--out heatmaps/."
        )
    found = load_predictor(path, device=device).explain([str(f) for f in files], target=target, method=method)
    if target_path.suffix.lower() == ".png":
        written = [target_path]
    else:
        written, taken = [], set()
        for f in files:  # image names, made unique: two folders may hold the same name
            name, n = f"{f.stem}.png", 1
            while name in taken:
                n += 1
                name = f"{f.stem}-{n}.png"
            taken.add(name)
            written.append(target_path / name)
    for e, dest in zip(found, written, strict=True):
        dest.parent.mkdir(parents=True, exist_ok=True)
        png = e.png(min_side=min_side)
        atomic_write(dest, lambda fh, data=png: fh.write(data))
    return [ExplainedImage(*parts) for parts in zip(files, found, written, strict=True)]


def doctor(
    cfg: RunConfig | str | Path,
    *,
    quick: bool = False,
    label_noise: bool = False,
    noise_epochs: int = 2,
) -> DoctorReport:
    """Check the data and the config before any compute (``kiln doctor``): each finding has its severity,
    what was found (counts and an example item) and the fix.

    Args:
        cfg: a config as loaded (``load_config``: what the user set must be known), or a YAML path.
        quick: only the cheap checks, as ``kiln train`` runs them before training (seconds).
        label_noise: also fit the task's model on 2 folds of train and flag the training labels it
            confidently contradicts (confident learning): it trains, so it takes longer.
        noise_epochs: epochs of each fold's fit.

    Returns:
        A :class:`~torchkiln.doctor.DoctorReport`: the findings, errors first, and each check's seconds.

    Raises:
        ConfigError: the config is invalid (a refused data set is a finding, not an exception).

    Example:
        >>> report = doctor("examples/fashion-mnist.yaml")
        >>> [(f.severity, f.check) for f in report.findings]
    """
    from torchkiln.doctor import DoctorOptions, run_checks

    return run_checks(
        cfg if isinstance(cfg, RunConfig) else load_config(cfg),
        cheap_only=quick,
        opt_in=("label-noise",) if label_noise else (),
        options=DoctorOptions(noise_epochs=noise_epochs),
    )
