"""Experiment tracking: TensorBoard event files and MLflow, both optional, behind one small class.

One MLflow store serves training, ``kiln evaluate`` and the model registry: :func:`resolve_mlflow_uri` names
it (an explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<runs_dir>/mlflow.db``) and
:func:`mlflow_artifact_root` puts a SQLite store's artifacts in ``mlartifacts/`` beside the database file.
A run writes ``RUN_DIR/mlflow.json`` (its store and run id), so that :func:`log_evaluation` can add the test
metrics and the report to the same MLflow run later.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkiln.core.config import RunConfig, TrackingConfig
from torchkiln.core.errors import ConfigError
from torchkiln.core.io import atomic_write_text

log = logging.getLogger(__name__)
notes = logging.getLogger("torchkiln.tracking")  # what kiln prints as note:/warning: lines

RUN_FILE = "mlflow.json"  # in a run directory: {"tracking_uri": ..., "run_id": ...}
# A new run becomes a child of this MLflow run (its tag mlflow.parentRunId) when the variable is set:
# kiln tune sets it for its trials, whose runs nest under the study's run.
PARENT_RUN_ENV = "KILN_MLFLOW_PARENT_RUN_ID"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def default_mlflow_uri(runs_dir: str | Path) -> str:
    """The local store: ``sqlite:///<absolute runs_dir>/mlflow.db``."""
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def resolve_mlflow_uri(uri: str | None = None, *, runs_dir: str | Path = "runs") -> str:
    """The MLflow store to use: ``uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`default_mlflow_uri`.

    Training (``tracking.mlflow_uri``, ``runs_dir``), ``kiln registry`` (``--tracking-uri``, ``--runs-dir``)
    and ``kiln serve`` (``registry_uri``) all resolve it here, so by default they share one store.

    Example:
        >>> resolve_mlflow_uri()
        'sqlite:////home/me/project/runs/mlflow.db'
    """
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(runs_dir)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for any other store (or an in-memory one)."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return None
    return Path(uri.removeprefix("sqlite:///"))


def mlflow_artifact_root(uri: str) -> str | None:
    """Where experiments that torchkiln creates in ``uri`` keep their artifacts: ``mlartifacts/`` beside a
    SQLite file (MLflow's own default, ``./mlruns``, depends on the folder a command ran in); None (the
    store's own default) for any other store."""
    db = sqlite_path(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


class Tracker:
    """Scalars, histograms, images and the graph to TensorBoard; params, metrics, artifacts to MLflow."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, resume_run_id: str | None = None) -> None:
        t: TrackingConfig = cfg.tracking
        self.histograms = t.histograms
        self.tb = None
        self.mlflow = None
        self.mlflow_run_id: str | None = None
        if t.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tracking.tensorboard is on but TensorBoard is not installed. "
                    "Run: pip install 'torchkiln[tracking]', or set tracking.tensorboard: false."
                ) from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if t.mlflow:
            self._start_mlflow(cfg, run_dir, resume_run_id)

    def _start_mlflow(self, cfg: RunConfig, run_dir: Path, resume_run_id: str | None) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError(
                "tracking.mlflow is on but MLflow is not installed. "
                "Run: pip install 'torchkiln[tracking]', or set tracking.mlflow: false."
            ) from None
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        uri = resolve_mlflow_uri(cfg.tracking.mlflow_uri, runs_dir=cfg.runs_dir)
        mlflow.set_tracking_uri(uri)
        experiment = cfg.tracking.experiment or cfg.run_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            artifacts = mlflow_artifact_root(uri)
            if artifacts is not None and mlflow.get_experiment_by_name(experiment) is None:
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            exp = mlflow.set_experiment(experiment)
            if resume_run_id:
                run = mlflow.start_run(run_id=resume_run_id)
            else:
                parent = os.environ.get(PARENT_RUN_ENV) or None
                run = mlflow.start_run(
                    experiment_id=exp.experiment_id, run_name=run_dir.name, parent_run_id=parent
                )
                params = {k: str(v)[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()}
                mlflow.log_params(params)
                mlflow.set_tag("torchkiln.run_dir", str(run_dir))
        self.mlflow = mlflow
        self.mlflow_run_id = run.info.run_id
        db = sqlite_path(uri)  # absolute, so that kiln evaluate finds it from any folder
        stored = uri if db is None else f"sqlite:///{db.resolve()}"
        record = {"tracking_uri": stored, "run_id": run.info.run_id}
        atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.mlflow is not None:
            # Asynchronous: a SQLite or HTTP round trip per log would stall the training loop.
            metrics = {k.replace("/", "_"): float(v) for k, v in values.items()}
            self.mlflow.log_metrics(metrics, step=step, synchronous=False)

    @property
    def wants_histograms(self) -> bool:
        return self.tb is not None and self.histograms

    def param_histograms(self, params: Iterable[tuple[str, nn.Parameter]], step: int) -> None:
        """Weights and gradients by name; the engine calls it after unscaling, so fp16 grads are true."""
        if not self.wants_histograms:
            return
        for name, p in params:
            if p.requires_grad:
                self.tb.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
                if p.grad is not None:
                    self.tb.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    @property
    def wants_images(self) -> bool:
        return self.tb is not None

    def sample_grid(self, images: torch.Tensor, step: int = 0, *, tag: str = "inputs/train_batch") -> None:
        """``images``: uint8 ``(B, C, H, W)`` as the model receives them (or a generator draws them)."""
        if self.tb is None:
            return
        from torchvision.utils import make_grid

        self.tb.add_image(tag, make_grid(images[:64].cpu(), nrow=8), step)

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The model's graph to TensorBoard, traced in eval mode on ``example`` (a batch of two).

        ``torch.jit.trace``'s own check is off. It traces a second time and compares the two printed graphs,
        and on ``nn.TransformerEncoderLayer`` they differ in a value's name only (``%weight.9`` against
        ``%weight.5``), not in an op, so every Transformer failed it. Instead the traced graph must give the
        model's outputs on ``example`` and on its rows reversed. A model that branches on its input values
        or draws random numbers fails that and gets no graph, with one warning line; so does one that
        cannot be traced. Training never depends on the graph.
        """
        if self.tb is None:
            return
        training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.trace's deprecation and tracer warnings
                traced = torch.jit.trace(model, example, check_trace=False)
                same = all(_close(traced(x), model(x)) for x in (example, example.flip(0)))
                if same:
                    self.tb.add_graph(traced, example)  # tracing a traced module is a no-op
        except Exception as exc:  # tracing is best-effort: some models are not traceable
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning(
                "TensorBoard graph skipped: %s could not be traced (%s). Training and the other TensorBoard "
                "logs are unaffected.",
                type(model).__name__,
                reason,
            )
            return
        finally:
            model.train(training)
        if not same:
            log.warning(
                "TensorBoard graph skipped: the graph traced from %s gives other outputs than the model on a "
                "second batch (its forward branches on the input values or draws random numbers), so it "
                "would be wrong. Training and the other TensorBoard logs are unaffected.",
                type(model).__name__,
            )

    def artifacts(self, path: Path, subdir: str | None = None) -> None:
        if self.mlflow is not None and path.exists():
            if path.is_dir():
                self.mlflow.log_artifacts(str(path), artifact_path=subdir)
            else:
                self.mlflow.log_artifact(str(path), artifact_path=subdir)

    def close(self, status: str = "FINISHED") -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.flush_async_logging()
            self.mlflow.end_run(status=status)


def _close(actual: Any, expected: Any) -> bool:
    """Whether two outputs (tensors, or tuples and dicts of them) agree to float32 rounding."""
    try:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    except AssertionError:
        return False
    return True


def metric_prefix(split: str) -> str:
    """``test_`` for the test split; ``eval_<split>_`` for the others, which training logs as it goes."""
    return "test_" if split == "test" else f"eval_{split}_"


def evaluation_metrics(metrics_file: Path, split: str) -> dict[str, float]:
    """Every number in an evaluation's ``metrics.json`` (nested keys joined with ``.``), prefixed with
    :func:`metric_prefix`; lists, strings, booleans and nulls are left out.

    Example:
        >>> evaluation_metrics(Path("runs/digits-cnn/20261124-031936/eval/test/metrics.json"), "test")
        {'test_accuracy': 0.9721, 'test_macro_f1': 0.9715, ...}
    """
    data = json.loads(metrics_file.read_text(encoding="utf-8"))
    prefix = metric_prefix(split)
    return {
        # MLflow keys allow letters, digits, _ - . / space and colon; a class name may have anything.
        re.sub(r"[^\w\-./ :]", "_", f"{prefix}{key}")[:250]: float(value)
        for key, value in flatten(data).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_evaluation(run_dir: Path, out_dir: Path, *, split: str, step: int = 0) -> str | None:
    """Add an evaluation to the MLflow run that trained ``run_dir``: its numbers as metrics (see
    :func:`evaluation_metrics`) at ``step``, and the files in ``out_dir`` as artifacts under ``eval/<split>``.

    A failure never loses the evaluation, which is already written: it is a warning on the
    ``torchkiln.tracking`` logger, and so is a store that has gone. A run without ``mlflow.json`` (trained
    with ``tracking.mlflow`` off, or by a torchkiln that did not write it) is a note.

    Returns:
        The MLflow run id logged to, or None when nothing was logged.

    Example:
        >>> log_evaluation(run_dir, run_dir / "eval" / "test", split="test", step=1120)
        '4f0c1e7d9a9b4c55a1f3e0b6b8d2c901'
    """
    record_file = run_dir / RUN_FILE
    if not record_file.is_file():
        notes.info(
            "The evaluation is not logged to MLflow: '%s' has no %s, so its MLflow run is unknown (kiln "
            "train writes it when tracking.mlflow is on; older versions did not). Use --no-mlflow to skip "
            "this.",
            run_dir,
            RUN_FILE,
        )
        return None
    try:
        record = json.loads(record_file.read_text(encoding="utf-8"))
        uri, run_id = str(record["tracking_uri"]), str(record["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.warning(
            "The evaluation is not logged to MLflow: '%s' is not readable (%s); it should hold the run's "
            "tracking_uri and run_id as kiln train wrote them. Restore it, or use --no-mlflow.",
            record_file,
            exc,
        )
        return None
    db = sqlite_path(uri)
    if db is not None and not db.is_file():  # connecting would create an empty store
        notes.warning(
            "The evaluation is not logged to MLflow: the store this run was logged to, %s, does not exist "
            "any more. Move the database back (and its mlartifacts/ beside it), or use --no-mlflow.",
            uri,
        )
        return None
    try:
        from mlflow import MlflowClient
    except ImportError:
        notes.warning(
            "The evaluation is not logged to MLflow run %s: MLflow is not installed. Run: pip install "
            "'torchkiln[tracking]', or use --no-mlflow.",
            run_id,
        )
        return None
    for logger in ("alembic", "mlflow.store.db.utils"):  # their INFO lines are not news to a user
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        metrics = evaluation_metrics(out_dir / "metrics.json", split)
        _log_to_run(MlflowClient(tracking_uri=uri), run_id, metrics, out_dir, split, step)
    except Exception as exc:  # tracking must not cost the evaluation, which is written already
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        notes.warning(
            "The evaluation was written to '%s' but not logged to MLflow run %s in %s: %s. Check that the "
            "store is reachable and the run exists, then run kiln evaluate again (or use --no-mlflow).",
            out_dir,
            run_id,
            uri,
            reason,
        )
        return None
    notes.info("logged the %s metrics and report to MLflow run %s in %s", split, run_id, uri)
    return run_id


def _log_to_run(
    client: Any, run_id: str, metrics: Mapping[str, float], out_dir: Path, split: str, step: int
) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, step) for k, v in metrics.items()]
    for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=batch[i : i + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path=f"eval/{split}")
