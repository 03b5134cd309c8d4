"""Object detection: images with boxes -> a detector that answers ``[{box, label, score}]`` per image."""

from __future__ import annotations

import base64
import hashlib
import io
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader

from torchkiln.components.doctor_data import DoctorData
from torchkiln.components.image_requests import ImagesRequest, check_image, decode_base64
from torchkiln.components.images import ImageLike, image_tensor, peek_image
from torchkiln.components.models import check_model
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, PredictError
from torchkiln.core.io import absolute_if_exists
from torchkiln.engine.step import StepContext
from torchkiln.engine.supervised import Supervised
from torchkiln.tasks.base import (
    ParamGroup,
    PredictArgs,
    PrimaryMetric,
    RawItems,
    RequestLimits,
    checked_request,
    validate,
)
from torchkiln.tasks.object_detection.config import DetectionRunConfig
from torchkiln.tasks.object_detection.data import (
    DetectionData,
    box_sizes,
    build_augment,
    load_detection_data,
    make_loader,
    pad_batch,
)
from torchkiln.tasks.object_detection.metrics import DetectionAP, rows_to_predictions
from torchkiln.tasks.object_detection.models import IMAGENET_STATS, DetectorModel, anchor_sizes_for
from torchkiln.tasks.object_detection.models import TASK as KIND

LOSSES = ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


@dataclass(frozen=True)
class DetectInput:
    """One image to detect in, with its request's answer options (None: the config's defaults)."""

    image: ImageLike
    score_threshold: float | None = None
    max_detections: int | None = None


def _image_of(item: Any) -> ImageLike:
    return item.image if isinstance(item, DetectInput) else item


def _example_png() -> str:
    """A real 96x96 RGB PNG (two bright squares on dark noise), base64-encoded, for the API docs."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (96, 96, 3)).astype(np.uint8)
    img[12:36, 14:38] = (230, 200, 40)
    img[50:80, 52:84] = (40, 200, 230)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class DetectRequest(ImagesRequest):
    """Images as base64 strings (``image`` or ``images``), and per-request answer options."""

    score_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Keep boxes scoring at least this (default: the model's)."
    )
    max_detections: int | None = Field(
        None, ge=1, le=1000, description="Return at most this many boxes per image (default: the model's)."
    )


class Detection(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in the original image's pixels.")
    label: str
    score: float


class DetectAnswer(BaseModel):
    """The boxes found in one image, best first."""

    detections: list[Detection]
    count: int = Field(description="How many boxes passed the score threshold (after max_detections).")
    classes: dict[str, int] = Field(description="The boxes per class label, most frequent first.")
    width: int
    height: int


class DetectionTraining(Supervised):
    """The engine's view: one model, one optimizer; the step calls ``model(images, targets)`` and sums
    torchvision's loss dict; validation runs the model as it serves (tiles, merged boxes) into the AP."""

    losses = LOSSES

    def training_step(self, ctx: StepContext, modules: nn.ModuleDict, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = batch
        images = [i.to(ctx.device, non_blocking=True) for i in images]
        targets = [{k: v.to(ctx.device) for k, v in t.items()} for t in targets]
        with ctx.autocast():
            parts = modules["model"](images, targets)
            loss = self._loss(ctx.device)(parts)
        ctx.backward(loss)
        ctx.step()
        return {"loss": loss.detach(), **{k: v.detach().float() for k, v in parts.items()}}

    def validation_step(
        self, ctx: StepContext, modules: nn.ModuleDict, batch: Any
    ) -> dict[str, torch.Tensor]:
        x, targets = batch
        with ctx.autocast():
            rows = modules["model"](x.to(ctx.device))
        ctx.metrics.update(rows.float(), targets)
        return {}

    def batch_size(self, batch: Any) -> int:
        return len(batch[1])

    def example_input(self, batch: Any) -> torch.Tensor | None:
        images = batch[0]
        return pad_batch(images) if isinstance(images, list) else images


class SummedLoss(nn.Module):
    """torchvision's detection losses (classifier, box regression, objectness, RPN boxes), summed."""

    def forward(self, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([v.float() for v in parts.values()]).sum()


class ObjectDetectionTask:
    kind = KIND
    config_type = DetectionRunConfig
    summary = "Images -> boxes with labels and scores (Faster R-CNN)"
    primary_metric = PrimaryMetric("map_50")
    image_input = True
    cli_options = frozenset({"paths", "out_dir"})
    request_only_fields = frozenset({"width", "height"})
    # The detector's per-image loops (tiles, proposals, NMS) do not trace to ONNX: the exporter says so.
    input_dynamic_axes = None
    export_unsupported = (
        "a Faster R-CNN detector predicts large images tile by tile and keeps a data-dependent number of "
        "boxes per tile, which ONNX export cannot trace"
    )

    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, DetectionData]:
        cfg = cast(DetectionRunConfig, cfg)
        spec = check_model(
            cfg.model.name, args=cfg.model.args, pretrained=cfg.model.pretrained, task=self.kind
        )
        # The normalization goes into the config: a bundle rebuilds its model without the pretrained
        # weights (model.pretrained false), and must still normalize as training did.
        stats = spec.pretrained_stats if cfg.model.pretrained and spec.pretrained_stats else IMAGENET_STATS
        data = load_detection_data(cfg.data, seed=cfg.seed, only_splits=splits)
        # In the detector's pixels: after the zoom of data.scale.
        anchors = cfg.data.anchor_sizes or anchor_sizes_for(box_sizes(data.splits["train"]) * cfg.data.scale)
        path = cfg.data.path if cfg.data.format == "catalog" or not Path(cfg.data.path).exists() else None
        resolved = cfg.model_copy(
            update={
                "data": cfg.data.model_copy(
                    update={
                        "path": path or absolute_if_exists(cfg.data.path),
                        "classes": data.classes,
                        "anchor_sizes": anchors,
                        "mean": cfg.data.mean or list(stats[0]),
                        "std": cfg.data.std or list(stats[1]),
                    }
                )
            }
        )
        return validate(resolved.model_dump(mode="json")), data

    def train_module(self, cfg: RunConfig) -> DetectionTraining:
        return DetectionTraining(self, cfg)

    def build_model(self, cfg: RunConfig) -> DetectorModel:
        cfg = cast(DetectionRunConfig, cfg)
        d, m = cfg.data, cfg.model
        if not d.classes or not d.anchor_sizes or not d.mean or not d.std:
            raise ConfigError(
                "build_model needs a resolved config, but data.classes, anchor_sizes, mean or std is not "
                "set; expected the config that task.prepare returns (a bundle's config is resolved too). "
                "Fix: pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
            )
        spec = check_model(m.name, args=m.args, pretrained=m.pretrained, task=self.kind)
        net = spec.builder(
            num_classes=len(d.classes),
            anchor_sizes=d.anchor_sizes,
            pretrained=m.pretrained,
            max_detections=cfg.task.max_detections,
            tile_size=d.tile_size,
            **m.args,
        )
        net.transform.scale = d.scale
        net.transform.image_mean, net.transform.image_std = list(d.mean), list(d.std)
        return DetectorModel(
            net, tile_size=d.tile_size, tile_overlap=d.tile_overlap, max_detections=cfg.task.max_detections
        )

    def loader(self, cfg: RunConfig, data: DetectionData, split: str, *, train: bool) -> DataLoader:
        cfg = cast(DetectionRunConfig, cfg)
        workers = cfg.data.num_workers
        return make_loader(
            data,
            split,
            train=train,
            batch_size=cfg.train.batch_size if train else cfg.evaluate.batch_size,
            tile=cfg.data.tile_size,
            augment=build_augment(cfg.data.augment) if train else None,
            seed=cfg.seed,
            num_workers=0 if workers == "auto" else workers,
        )

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, Any]:
        x, targets = batch
        if isinstance(x, list):
            return [i.to(device) for i in x], targets
        return x.to(device), targets

    def loss(self, cfg: RunConfig) -> nn.Module:
        return SummedLoss()

    def metrics(self, cfg: RunConfig) -> DetectionAP:
        cfg = cast(DetectionRunConfig, cfg)
        return DetectionAP(
            len(cfg.data.classes or []) or 1,
            score_threshold=cfg.task.score_threshold,
            iou_threshold=cfg.task.iou_threshold,
        )

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        model = cast(DetectorModel, model)
        body = {id(p) for p in model.net.backbone.body.parameters()}
        trainable = [p for p in model.parameters() if p.requires_grad]
        backbone = [p for p in trainable if id(p) in body]
        rest = [p for p in trainable if id(p) not in body]
        return [ParamGroup("backbone", backbone, cfg.model.backbone_lr_mult), ParamGroup("head", rest, 1.0)]

    def state_files(self, data: DetectionData) -> dict[str, bytes]:
        return {}

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> None:
        return None

    def preprocess(self, cfg: RunConfig, inputs: Sequence[Any], state: Any = None) -> torch.Tensor:
        if not inputs:
            raise PredictError("No images were given. Pass at least one image path, bytes or array.")
        return pad_batch([image_tensor(_image_of(item)) for item in inputs])

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        return pad_batch([image for part in parts for image in part])

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        cfg = cast(DetectionRunConfig, cfg)
        classes = cfg.data.classes or []
        out = []
        for i, pred in enumerate(rows_to_predictions(outputs)):
            item = raw[i] if raw is not None else None
            threshold, limit = cfg.task.score_threshold, cfg.task.max_detections
            if isinstance(item, DetectInput):
                threshold = item.score_threshold if item.score_threshold is not None else threshold
                limit = item.max_detections or limit
            size = peek_image(_image_of(item)) if item is not None else None
            width, height = (size[0], size[1]) if size else (int(outputs.shape[-1]), 0)
            keep = (pred["scores"] >= threshold).nonzero().squeeze(1)[:limit]
            boxes = pred["boxes"][keep]
            if size:
                boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height]))
            found = []
            scores, labels = pred["scores"][keep].tolist(), pred["labels"][keep].tolist()
            for box, score, label in zip(boxes.tolist(), scores, labels, strict=True):
                if box[2] - box[0] <= 0 or box[3] - box[1] <= 0:
                    continue  # wholly in the padding of a smaller image of the batch
                found.append(
                    {"box": [round(v, 1) for v in box], "label": classes[label], "score": round(score, 4)}
                )
            mix = Counter(d["label"] for d in found).most_common()
            out.append(
                {
                    "detections": found,
                    "count": len(found),
                    "classes": dict(mix),
                    "width": width,
                    "height": height,
                }
            )
        return out

    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        return {}

    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Any:
        """COCO mAP, precision/recall/F1 at the score threshold, the P-R curve and drawn test images."""
        from torchkiln.tasks.object_detection.evaluate import evaluate_detector

        return evaluate_detector(bundle, split=split, out_dir=out_dir, device=device)

    def example_config(self, root: Path) -> dict[str, Any]:
        from torchkiln.tasks.object_detection.example import example_config

        return example_config(root)

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        from torchkiln.tasks.object_detection.predict import predict_files

        return predict_files(predictor, args, as_json=as_json)

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        cfg = cast(DetectionRunConfig, cfg)
        d = cfg.data
        return {
            "labels": d.classes,
            "preprocessing": {
                "input": "uint8 RGB images (B, 3, H, W), padded at the bottom and right; no resize",
                "tile_size": d.tile_size,
                "tile_overlap": d.tile_overlap,
                "scale": d.scale,
                "mean": d.mean,
                "std": d.std,
                "anchor_sizes": d.anchor_sizes,
                "output": "(B, max_detections, 6) rows x1, y1, x2, y2, score, label (label -1: padding)",
            },
        }

    # Serving -------------------------------------------------------------------------------------
    request_schema = DetectRequest
    response_schema = DetectAnswer
    upload_media = "image/*"

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[DetectInput]:
        request = checked_request(request, DetectRequest)
        limits.check_count(len(request.encoded))
        return [
            DetectInput(
                check_image(decode_base64(t, i), i, limits.max_pixels, resized=False),
                request.score_threshold,
                request.max_detections,
            )
            for i, t in enumerate(request.encoded)
        ]

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[DetectInput]:
        limits.check_count(len(files))
        return [
            DetectInput(check_image(raw, i, limits.max_pixels, resized=False)) for i, raw in enumerate(files)
        ]

    def reference_inputs(self, cfg: RunConfig, data: DetectionData, split: str) -> Sequence[Any]:
        records = data.splits[split]
        return RawItems(len(records), lambda i: records[i].path.read_bytes())

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(model, DetectorModel):
            raise PredictError(
                f"Penultimate features need the torch detector; got {type(model).__name__}. Load the trained "
                f"bundle to embed inputs."
            )
        rows, features = model.detect(x, features=True)
        return rows, cast(torch.Tensor, features)

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: ``box_count`` (boxes at or above the score threshold), their ``mean_score`` (0 without
        any) and the ``top_score``: what the prediction log and the drift monitor watch."""
        cfg = cast(DetectionRunConfig, cfg)
        scores = outputs[:, :, 4].float()
        kept = (outputs[:, :, 5] >= 0) & (scores >= cfg.task.score_threshold)
        count = kept.sum(dim=1).float()
        mean = (scores * kept).sum(dim=1) / count.clamp(min=1)
        top = torch.where(outputs[:, :, 5] >= 0, scores, torch.zeros_like(scores)).amax(dim=1)
        return {"box_count": count, "mean_score": mean, "top_score": top}

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        out = []
        for i, item in enumerate(raw):
            image = _image_of(item)
            size = peek_image(image)
            w, h = (size[0], size[1]) if size else (model_inputs.shape[-1], model_inputs.shape[-2])
            a = model_inputs[i, :, :h, :w].reshape(3, -1).numpy().astype(np.float64)
            summary: dict[str, Any] = {
                "mean": round(float(a.mean()), 3),
                "std": round(float(a.std(ddof=1)) if a.size > 1 else 0.0, 3),
                "channel_means": [round(float(c), 3) for c in a.mean(axis=1)],
                "width": int(w),
                "height": int(h),
            }
            if isinstance(image, bytes):
                summary |= {"sha256": hashlib.sha256(image).hexdigest(), "bytes": len(image)}
            out.append(summary)
        return out

    def example_request(self) -> dict[str, Any]:
        return {"images": [_example_png()], "score_threshold": 0.05}

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData:
        """The data as kiln doctor's checks read it (``components.doctor_data.DoctorSource``)."""
        from torchkiln.tasks.object_detection.doctor import doctor_data

        return doctor_data(cfg, resolved, data)


TASK = ObjectDetectionTask()  # the ``torchkiln.tasks`` entry point
