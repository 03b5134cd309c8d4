"""Predict from a bundle with exactly the training preprocessing."""

from __future__ import annotations

import copy
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchkiln.artifacts.bundle import Bundle, load_bundle
from torchkiln.artifacts.profile import Reference
from torchkiln.components.gradcam import check_method, overlay_png
from torchkiln.core.errors import BundleError, ConfigError, PredictError, did_you_mean
from torchkiln.engine.precision import resolve_device
from torchkiln.tasks.base import InputProfiler, InputWarning, explainer

log = logging.getLogger("torchkiln.predict")  # kiln predict prints it as warning: lines


@dataclass(frozen=True)
class Explanation:
    """One input's heatmap: where the model found its evidence for ``explained`` (:meth:`Predictor.explain`).

    ``answer`` is the task's usual answer (``label``, ``score``, ``top_k``), so ``explained`` differs from
    ``answer["label"]`` only when another class was asked for.
    """

    answer: dict[str, Any]
    explained: str  # the class the heatmap is for
    method: str
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], at the model's input size
    image: np.ndarray  # (H, W) or (H, W, 3) uint8: the input as the model saw it (resized, cropped)

    def png(self, *, alpha: float = 0.45, min_side: int = 0) -> bytes:
        """The heatmap in jet colours over the image, as PNG bytes (``min_side``: enlarge small images)."""
        return overlay_png(self.image, self.heatmap, alpha=alpha, min_side=min_side)


class Predictor:
    """Wraps a loaded bundle; ``predict`` takes raw inputs (for images: paths, bytes, arrays, PIL).

    Example:
        >>> p = Predictor(load_bundle("runs/x/bundle"))
        >>> p.predict(["boot.png"], top_k=3)[0]["label"]
        'Ankle boot'
    """

    def __init__(self, bundle: Bundle, *, device: str = "auto", batch_size: int = 64) -> None:
        self.bundle = bundle
        self.device = predictor_device(bundle, device)
        self.model = bundle.model.to(self.device).eval()
        self.batch_size = batch_size
        self._explaining = threading.Lock()  # one explanation at a time, on a copy of the model (explain)

    @property
    def labels(self) -> list[str]:
        return list(self.bundle.meta.get("labels") or [])

    @property
    def version(self) -> str:
        """A short content version: the first 12 hex digits of the model file's SHA-256."""
        return str(self.bundle.meta.get("weights_sha256") or "unknown")[:12]

    def preprocess(self, inputs: Sequence[Any]) -> torch.Tensor:
        """Raw inputs -> the model's input batch, exactly as in training (on the CPU)."""
        return self.bundle.task.preprocess(self.bundle.config, inputs, self.bundle.state)

    def collate(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Several ``preprocess`` results -> one model batch (texts are padded to the longest)."""
        return self.bundle.task.collate_inputs(self.bundle.config, parts)

    def summarize(self, raw: Sequence[Any], x: torch.Tensor) -> list[dict[str, Any]]:
        """JSON-ready descriptions of preprocessed inputs, for the prediction log and drift monitoring."""
        return self.bundle.task.summarize_inputs(self.bundle.config, raw, x)

    def input_warnings(self, raw: Sequence[Any]) -> list[list[InputWarning]]:
        """Per input, why it is far from the inputs the model was trained on (``[]``: it is not).

        The task's check (:class:`~torchkiln.tasks.base.InputProfiler`) against the bundle's profile; a
        bundle without a profile (written before them) or a task without the check flags nothing.

        Example:
            >>> p.input_warnings(["photo.jpg"])[0][0].message
            'mode RGB, trained on L'
        """
        task, profile = self.bundle.task, self.bundle.profile.get("raw")
        if not profile or not isinstance(task, InputProfiler):
            return [[] for _ in raw]
        out = []
        for item in raw:
            try:
                out.append(task.input_warnings(profile, item))
            except Exception:  # a warning must never cost an answer (nor the server a 500)
                log.debug("input check of %s failed", task.kind, exc_info=True)
                out.append([])
        return out

    def flag_inputs(
        self, raw: Sequence[Any], answers: list[dict[str, Any]], *, names: Sequence[str]
    ) -> list[dict[str, Any]]:
        """``kiln predict``'s check: log a warning per input far from training's, then a count; return the
        answers, a flagged one with its reasons under ``"warnings"``.

        Example:
            >>> answers = p.flag_inputs(paths, p.predict(paths), names=paths)
            warning: photo.jpg: mode RGB, trained on L; size 640x480, trained on 8x8
            warning: 1 input of 2 is far from the inputs the model was trained on (mode, size); its ...
        """
        found = self.input_warnings(raw)
        for name, reasons in zip(names, found, strict=True):
            if reasons:
                log.warning("%s: %s", name, "; ".join(r.message for r in reasons))
        flagged = sum(1 for reasons in found if reasons)
        if flagged:
            kinds = ", ".join(Counter(r.kind for reasons in found for r in reasons))
            many = flagged > 1
            log.warning(
                "%d input%s of %d %s far from the inputs the model was trained on (%s); %s may be wrong, "
                "even with a high score.",
                *(flagged, "s" if many else "", len(found), "are" if many else "is", kinds),
                "their answers" if many else "its answer",
            )
        return [
            {**a, "warnings": [r.message for r in reasons]} if reasons else a
            for a, reasons in zip(answers, found, strict=True)
        ]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One model call on a preprocessed batch; the outputs come back on the CPU."""
        return self.model(x.to(self.device)).cpu()

    @cached_property
    def reference(self) -> Reference:
        """The bundle's reference profile (read once).

        Raises:
            BundleError: the bundle has none; the message gives the ``kiln monitor profile`` command.
        """
        return self.bundle.reference()

    @torch.inference_mode()
    def forward_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call on a preprocessed batch: ``(outputs, embeddings (B, k))``, both on the CPU.

        The embeddings are the penultimate-layer features (``task.forward_features``) projected with the
        reference's stored PCA, so they compare with the reference's ``embedding`` rows: the same input gives
        the same row.

        Raises:
            BundleError: the bundle has no reference profile, or is an exported (ONNX) variant, whose model
                gives outputs only.

        Example:
            >>> outputs, emb = p.forward_embed(p.preprocess(images))  # emb: (B, 16)
        """
        runtime = self.bundle.meta.get("runtime", "torch")
        if runtime != "torch":
            source = self.bundle.meta.get("variant", {}).get("source", "RUN_DIR/bundle")
            raise BundleError(
                f"Bundle '{self.bundle.path}' is an exported {runtime} variant: its model gives outputs "
                f"only, not the penultimate features an embedding needs. Load the trained bundle it came "
                f"from ({source}) to embed inputs."
            )
        reference = self.reference  # before the forward pass: a bundle without one fails at once
        outputs, features = self.bundle.task.forward_features(self.model, x.to(self.device))
        return outputs.cpu(), reference.project(features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, k)`` of a preprocessed batch; see :meth:`forward_embed`."""
        return self.forward_embed(x)[1]

    def output_signals(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per input, what the outputs say, as the reference records it: ``predicted`` and ``confidence``
        for a classifier, ``forecast_level`` and ``forecast_spread`` for a forecaster; each ``(B,)``."""
        return self.bundle.task.output_signals(self.bundle.config, outputs)

    def postprocess(
        self, outputs: torch.Tensor, *, top_k: int | None = None, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Model outputs -> one JSON-ready answer per input; ``top_k`` defaults to ``task.top_k``.

        ``raw``: the inputs of ``outputs``, for tasks whose answers need them (forecast timestamps).
        """
        cfg = self.bundle.config
        default = getattr(cfg.task, "top_k", 1)  # tasks without classes (forecasting) have no top_k
        return self.bundle.task.postprocess(cfg, outputs, top_k=top_k or default, raw=raw)

    def predict(self, inputs: Sequence[Any], *, top_k: int | None = None) -> list[dict[str, Any]]:
        """Preprocess, run the model in batches, and return one answer per input.

        ``top_k`` defaults to the config's ``task.top_k``.
        """
        out: list[dict[str, Any]] = []
        for start in range(0, len(inputs), self.batch_size) if inputs else [0]:
            chunk = inputs[start : start + self.batch_size]
            out += self.postprocess(self.forward(self.preprocess(chunk)), top_k=top_k, raw=chunk)
        return out

    def explain_refusal(self, *, public: bool = False) -> str | None:
        """Why this predictor cannot explain (an exported bundle, a task without ``explain``); None if it can.

        The server asks before it predicts, so a refused ``explain=true`` costs no model call; ``public``
        leaves out file-system paths (the answer goes to anonymous callers).
        """
        runtime = self.bundle.meta.get("runtime", "torch")
        if runtime != "torch":
            source = self.bundle.meta.get("variant", {}).get("source", "RUN_DIR/bundle")
            which, origin = ("This model", "") if public else (f"Bundle '{self.bundle.path}'", f" ({source})")
            return (
                f"{which} is an exported {runtime} variant: ONNX Runtime computes no gradients, so it cannot "
                f"draw Grad-CAM heatmaps. Explain with the trained (eager) bundle it came from{origin}."
            )
        try:
            explainer(self.bundle.task)
        except PredictError as exc:
            return str(exc)
        return None

    def explain(
        self, inputs: Sequence[Any], *, target: str | int | None = None, method: str = "gradcam"
    ) -> list[Explanation]:
        """Heatmaps of where the model found its answer for each input, with the answer itself.

        The task's preprocessing, then its ``explain`` (Grad-CAM over the last convolutional block for an
        image classifier) on a private copy of the eager model, made on the first call: hooks on it never
        meet the batched predictions a server runs on the original in its model thread. Calls are taken one
        at a time.

        Args:
            inputs: raw inputs, as :meth:`predict` takes them.
            target: the class to explain, by name or index; None for each input's predicted class.
            method: ``"gradcam"`` or ``"gradcam++"``.

        Raises:
            BundleError: the bundle is an exported (ONNX) variant, which has no gradients.
            PredictError: the task cannot explain, the model has no convolutional layer, the class is
                unknown, or an input cannot be read.

        Example:
            >>> e = p.explain(["xray.png"], method="gradcam++")[0]
            >>> e.answer["label"], Path("heat.png").write_bytes(e.png(min_side=224))
        """
        refusal = self.explain_refusal()
        if refusal is not None:
            exported = self.bundle.meta.get("runtime", "torch") != "torch"
            raise (BundleError if exported else PredictError)(refusal)
        index, method = self._class_index(target), check_method(method)
        out: list[Explanation] = []
        for start in range(0, len(inputs), self.batch_size) if inputs else [0]:
            chunk = inputs[start : start + self.batch_size]
            out += self.explain_batch(self.preprocess(chunk), chunk, target=index, method=method)
        return out

    def explain_batch(
        self, x: torch.Tensor, raw: Sequence[Any], *, target: int | None = None, method: str = "gradcam"
    ) -> list[Explanation]:
        """:meth:`explain` of an already preprocessed batch ``x`` of the raw inputs ``raw`` (the server's).

        Raises:
            PredictError: the task or model cannot explain (call :meth:`explain_refusal` first for why).
        """
        task = explainer(self.bundle.task)
        with self._explaining:
            cams = task.explain(
                self.bundle.config, self._explain_model, x.to(self.device), target=target, method=method
            )
        answers = self.postprocess(cams.outputs, raw=raw)
        images = x.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C) uint8, as the model saw them
        out = []
        for answer, t, heat, img in zip(answers, cams.targets.tolist(), cams.heatmaps, images, strict=True):
            shown = img[:, :, 0] if img.shape[2] == 1 else img
            out.append(Explanation(answer, self._label(t), method, heat.numpy(), shown))
        return out

    @cached_property
    def _explain_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.model).eval()
        # A copy made while the server's model thread had a hook on the original (its penultimate
        # features) would carry that hook: the copy starts with none.
        for m in model.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        return model

    def _class_index(self, target: str | int | None) -> int | None:
        labels = self.labels
        if target is None or isinstance(target, int):
            return target
        if target.isdigit() and target not in labels:
            return int(target)
        if target not in labels:
            raise PredictError(
                f"Unknown class '{target}'.{did_you_mean(target, labels)} The model's classes are "
                f"{', '.join(labels)}. Pass one of them, spelled exactly, or its index."
            )
        return labels.index(target)

    def _label(self, index: int) -> str:
        labels = self.labels
        return labels[index] if 0 <= index < len(labels) else str(index)


def predictor_device(bundle: Bundle, device: str) -> torch.device:
    """Where ``bundle``'s model runs for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    A torch bundle runs on the device; an exported bundle (ONNX Runtime) runs on the CPU, so ``auto``
    means the CPU for it, and asking it for CUDA is an error.

    Raises:
        ConfigError: an unknown device name, a CUDA device this machine lacks, or CUDA for an ONNX bundle.
    """
    runtime = bundle.meta.get("runtime", "torch")
    if runtime != "torch":
        resolved = resolve_device(device, setting="--device")
        if resolved.type != "cpu":
            raise ConfigError(
                f"'{bundle.path}' is a {runtime} bundle, which runs on ONNX Runtime's CPU provider; it "
                f"cannot run on {device}. Use --device cpu (or auto), or serve the trained torch bundle on "
                f"the GPU."
            )
        return resolved
    return resolve_device(device, setting="--device")


def load_predictor(path: str | Path, *, device: str = "auto") -> Predictor:
    """Load a bundle (or a run directory holding ``bundle/``) for prediction.

    Args:
        path: the bundle folder or run directory.
        device: ``auto`` (CUDA when available; the CPU for ONNX bundles), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        BundleError: the bundle is incomplete, from another version, or corrupt.
        ConfigError: the device does not exist here, or cannot run this bundle.
    """
    return Predictor(load_bundle(path), device=device)
