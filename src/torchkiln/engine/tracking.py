"""Experiment tracking: TensorBoard event files and MLflow, both optional, behind one small class."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchkiln.core.config import RunConfig, TrackingConfig
from torchkiln.core.errors import ConfigError

log = logging.getLogger(__name__)


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
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


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
        mlflow.set_tracking_uri(cfg.tracking.mlflow_uri or default_mlflow_uri(cfg.runs_dir))
        experiment = cfg.tracking.experiment or cfg.run_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cfg.tracking.mlflow_uri is None and mlflow.get_experiment_by_name(experiment) is None:
                # With the default local store, keep artifacts beside it in runs_dir (MLflow's own
                # default is ./mlruns in whatever directory kiln was started from).
                artifacts = (Path(cfg.runs_dir) / "mlartifacts").resolve().as_uri()
                mlflow.create_experiment(experiment, artifact_location=artifacts)
            exp = mlflow.set_experiment(experiment)
            if resume_run_id:
                run = mlflow.start_run(run_id=resume_run_id)
            else:
                run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_dir.name)
                params = {k: str(v)[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()}
                mlflow.log_params(params)
                mlflow.set_tag("torchkiln.run_dir", str(run_dir))
        self.mlflow = mlflow
        self.mlflow_run_id = run.info.run_id

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

    def sample_grid(self, images: torch.Tensor, step: int = 0) -> None:
        """``images``: uint8 ``(B, C, H, W)`` as the model receives them."""
        if self.tb is None:
            return
        from torchvision.utils import make_grid

        self.tb.add_image("inputs/train_batch", make_grid(images[:64].cpu(), nrow=8), step)

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        if self.tb is None:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.tb.add_graph(model, example)
        except Exception as exc:  # tracing is best-effort: some models are not traceable
            log.warning("TensorBoard graph skipped: %s", str(exc).splitlines()[0][:200])

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
