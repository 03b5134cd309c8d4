"""Image classification: folders/CSV/arrays of images -> class probabilities."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field
from torch import nn
from torch.utils.data import DataLoader

from torchkiln.components.augment import build_augment
from torchkiln.components.classification import (
    ClassPrediction,
    MulticlassMetrics,
    answer_lines,
    class_signals,
    classification_loss,
    top_k_answers,
)
from torchkiln.components.classification_baseline import (
    MAX_TRAIN,
    MAX_VAL,
    BaselineInputs,
    sample_indices,
)
from torchkiln.components.classification_threshold import (
    check_threshold_split,
    decision_of,
    scoring_decision,
)
from torchkiln.components.doctor_data import DoctorData
from torchkiln.components.gradcam import CamResult, Target, class_activation_maps, last_conv_block
from torchkiln.components.image_requests import ImagesRequest, check_image, decode_base64
from torchkiln.components.images import ImageLike, expand_inputs, to_model_input
from torchkiln.components.models import Classifier, check_model
from torchkiln.components.penultimate import forward_with_features, last_linear
from torchkiln.components.splits import resolve_class_weights
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, PredictError
from torchkiln.core.io import absolute_if_exists
from torchkiln.engine.distributed import local_device
from torchkiln.engine.precision import resolve_device
from torchkiln.engine.supervised import Supervised
from torchkiln.tasks.base import (
    InputWarning,
    ParamGroup,
    PredictArgs,
    PrimaryMetric,
    RequestLimits,
    checked_request,
    validate,
)
from torchkiln.tasks.image_classification import simple_models  # noqa: F401  (registers cnn and mlp)
from torchkiln.tasks.image_classification.config import ImageRunConfig
from torchkiln.tasks.image_classification.data import ImageData, load_image_data, raw_images
from torchkiln.tasks.image_classification.loader import data_device, make_loader
from torchkiln.tasks.image_classification.models import create_model
from torchkiln.tasks.image_classification.profile import image_warnings


class ImageClassifierModel(nn.Module):
    """uint8 images ``(B, C, S, S)`` -> logits ``(B, K)``; normalization lives inside the model.

    Keeping ``(x / 255 - mean) / std`` in the module means the bundle, the exported ONNX graph and
    the server all take the same raw pixels, so preprocessing cannot drift between them.
    """

    def __init__(
        self, net: Classifier, mean: Sequence[float], std: Sequence[float], frozen_blocks: int = 0
    ) -> None:
        super().__init__()
        self.net = net
        self.frozen_blocks = frozen_blocks
        c = len(mean)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, c, 1, 1)))
        self.register_buffer(
            "shift", -torch.tensor(mean).view(1, c, 1, 1) / torch.tensor(std).view(1, c, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() * self.scale + self.shift)

    def train(self, mode: bool = True) -> ImageClassifierModel:
        super().train(mode)
        # Frozen blocks keep their pretrained BatchNorm statistics.
        for block in list(self.net.blocks)[: self.frozen_blocks]:
            block.eval()
        return self


def _example_png() -> str:
    """A real 28x28 grayscale PNG (a bright square on dark noise), base64-encoded, for the API docs."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 60, (28, 28)).astype(np.uint8)
    img[7:21, 7:21] = 230
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ImagePredictRequest(ImagesRequest):
    """Images as base64 strings: one in ``image`` or several in ``images``."""

    top_k: int | None = Field(None, ge=1, le=1000, description="How many classes to return per image.")


def _check_resolved(d: Any, fields: Sequence[str], what: str) -> None:
    """Refuse a data section that ``prepare`` has not filled in: ``fields`` it left unset or empty."""
    missing = [f"data.{name}" for name in fields if not getattr(d, name, None)]
    if missing:
        verb, them = ("is", "it") if len(missing) == 1 else ("are", "them")
        raise ConfigError(
            f"{what} needs a resolved config, but {', '.join(missing)} {verb} not set; expected the config "
            f"that task.prepare returns, which fills {them} in from the data (a bundle's config is resolved "
            f"too). Fix: pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
        )


class ImageClassificationTask:
    kind = "image-classification"
    config_type = ImageRunConfig
    summary = "Images -> one of K classes"
    primary_metric = PrimaryMetric("accuracy")
    image_input = True
    cli_options = frozenset({"paths", "top_k"})
    request_only_fields = frozenset()
    input_dynamic_axes = (0,)  # (B, C, H, W): only the batch varies
    baseline_kind = "pixels"  # logistic regression on the images (tasks.base.Baselined)

    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, ImageData]:
        spec = check_model(
            cfg.model.name, args=cfg.model.args, pretrained=cfg.model.pretrained, task=self.kind
        )
        pretrained = bool(cfg.model.pretrained)
        data = load_image_data(
            cfg.data,
            seed=cfg.seed,
            default_size=spec.default_image_size,
            need_channels=spec.in_channels if pretrained else None,
            stats=spec.pretrained_stats if pretrained else None,
            only_splits=splits,
        )
        weights = resolve_class_weights(
            cfg.train.class_weights, data.classes, data.splits["train"].labels.numpy()
        )
        resolved = cfg.model_copy(
            update={
                "train": cfg.train.model_copy(update={"class_weights": weights}),
                "data": cfg.data.model_copy(
                    update={
                        # Absolute, so evaluate/resume work from any directory.
                        "path": absolute_if_exists(cfg.data.path),
                        "classes": data.classes,
                        "image_size": data.size,
                        "channels": data.channels,
                        "mean": list(data.mean),
                        "std": list(data.std),
                    }
                ),
            }
        )
        # Validate again: the filled-in values meet the config's own rules (e.g. one mean per channel).
        checked = validate(resolved.model_dump(mode="json"))
        if splits is None:  # a training run: its val split must be able to choose task.threshold's value
            check_threshold_split(checked.task, data.classes, data.splits["val"].labels)
        return checked, data

    def train_module(self, cfg: RunConfig) -> Supervised:
        return Supervised(self, cfg)

    def build_model(self, cfg: RunConfig) -> ImageClassifierModel:
        d, m = cfg.data, cfg.model
        _check_resolved(d, ("classes", "image_size", "channels", "mean", "std"), "build_model")
        net = create_model(
            m.name,
            num_classes=len(d.classes),
            in_channels=d.channels,
            image_size=d.image_size,
            pretrained=m.pretrained,
            args=m.args,
        )
        frozen = 0
        if m.freeze_backbone:
            frozen = max(0, len(net.blocks) - m.unfreeze_last)
            for block in list(net.blocks)[:frozen]:
                block.requires_grad_(False)
        return ImageClassifierModel(net, d.mean, d.std, frozen_blocks=frozen)

    def loader(self, cfg: RunConfig, data: ImageData, split: str, *, train: bool) -> DataLoader:
        augment = build_augment(cfg.data.augment) if train else None
        try:
            device: torch.device | None = local_device(resolve_device(cfg.train.device))  # a rank's own GPU
        except ConfigError:  # a bundle from a GPU evaluated where there is none: batches on the CPU
            device = None
        on_device = data_device(cfg.data.on_device, device, data.splits[split])
        return make_loader(
            data.splits[split],
            batch_size=cfg.train.batch_size if train else cfg.evaluate.batch_size,
            size=data.size,
            channels=data.channels,
            augment=augment,
            shuffle=train,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            balanced=train and cfg.data.sampler == "balanced",
            device=on_device,
        )

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        x, y = batch
        # From the CPU, uint8 (4x less to copy than float) and without waiting; device-resident batches
        # are already there. A copy back to the CPU must wait, or the model could read it half done.
        non_blocking = x.device.type == "cpu"
        x = x.to(device, non_blocking=non_blocking)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(device, non_blocking=non_blocking)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return classification_loss(cfg)

    def metrics(self, cfg: RunConfig) -> MulticlassMetrics:
        # A trained bundle with task.threshold is scored at its operating point, as it answers.
        return MulticlassMetrics(scoring_decision(cfg.task, cfg.data.classes))

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        model = cast(ImageClassifierModel, model)  # build_model wraps every network in one
        backbone = [p for p in model.net.blocks.parameters() if p.requires_grad]
        head = [p for p in model.net.head.parameters() if p.requires_grad]
        return [ParamGroup("backbone", backbone, cfg.model.backbone_lr_mult), ParamGroup("head", head, 1.0)]

    def state_files(self, data: ImageData) -> dict[str, bytes]:
        return {}  # normalization and sizes are plain numbers: the config holds them

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> None:
        return None

    def preprocess(self, cfg: RunConfig, inputs: Sequence[ImageLike], state: Any = None) -> torch.Tensor:
        if not inputs:
            raise PredictError("No images were given. Pass at least one image path, bytes or array.")
        d = cfg.data
        _check_resolved(d, ("image_size", "channels"), "preprocess")
        return torch.stack(
            [to_model_input(x, size=d.image_size, channels=d.channels, clahe=d.clahe) for x in inputs]
        )

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(list(parts))

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        # A two-class model with task.threshold answers at its operating point (chosen on val), not argmax.
        classes = cfg.data.classes or []
        return top_k_answers(classes, outputs, top_k, decision_of(cfg.task, classes))

    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        """Choose the threshold task.threshold asks for on the val split; ``{}`` without one (argmax)."""
        from torchkiln.tasks.classification_eval import choose_operating_point

        return choose_operating_point(cfg, self, model, loader, device)

    def calibrated_config(self, cfg: RunConfig, calibration: Mapping[str, Any]) -> RunConfig:
        """The bundle's config: the chosen threshold filled in, so predict, serve and exports all use it."""
        from torchkiln.tasks.classification_eval import with_operating_point

        return with_operating_point(cfg, calibration)

    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Any:
        """Per-class metrics, curves, calibration and the worst mistakes on ``split``."""
        from torchkiln.tasks.classification_eval import evaluate_classifier

        return evaluate_classifier(bundle, split=split, out_dir=out_dir, device=device)

    def baseline_inputs(self, cfg: RunConfig, data: ImageData, split: str) -> BaselineInputs:
        """The split's images as the model sees them, uint8 ``(N, C, S, S)``. Images read from files are
        decoded here: for train and val only the stratified sample the baseline fits on."""
        part = data.splits[split]
        labels = part.labels.numpy()
        if part.images is not None:
            return BaselineInputs(part.images.numpy(), labels)
        limit = {"train": MAX_TRAIN, "val": MAX_VAL}.get(split, len(labels))
        keep = sample_indices(labels, limit, cfg.seed)
        paths = part.paths or ()
        images = [
            self.preprocess(cfg, [paths[i] for i in keep[j : j + 256]]) for j in range(0, len(keep), 256)
        ]
        return BaselineInputs(torch.cat(images).numpy() if images else np.zeros((0,)), labels[keep])

    def example_config(self, root: Path) -> dict[str, Any]:
        from torchkiln.tasks.image_classification.example import example_config

        return example_config(root)

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        if not args.paths:
            raise PredictError(
                "No inputs were given. Pass image files, a folder of images or a quoted glob after the "
                "bundle."
            )
        items = [str(p) for p in expand_inputs(args.paths)]
        answers = predictor.predict(items, top_k=args.top_k)
        answers = predictor.flag_inputs(items, answers, names=items)  # warns of images unlike training's
        return answer_lines(items, answers, as_json=as_json)

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        d = cfg.data
        return {
            "labels": d.classes,
            "preprocessing": {
                "input": "uint8 image tensor (B, C, S, S); normalization is inside the model",
                "image_size": d.image_size,
                "channels": d.channels,
                "color_mode": "L" if d.channels == 1 else "RGB",
                "resize": "shorter side to image_size (bilinear), then center crop",
                "contrast": "none"
                if d.clahe is None
                else f"CLAHE (scikit-image equalize_adapthist, clip_limit {d.clahe}) on the cropped square",
                "mean": d.mean,
                "std": d.std,
            },
        }

    # Serving -------------------------------------------------------------------------------------
    request_schema = ImagePredictRequest
    response_schema = ClassPrediction
    upload_media = "image/*"

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[bytes]:
        request = checked_request(request, ImagePredictRequest)
        limits.check_count(len(request.encoded))  # count first: decoding every item costs CPU
        return [check_image(decode_base64(t, i), i, limits.max_pixels) for i, t in enumerate(request.encoded)]

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[bytes]:
        limits.check_count(len(files))
        return [check_image(raw, i, limits.max_pixels) for i, raw in enumerate(files)]

    def input_profile(self, data: ImageData) -> dict[str, Any]:
        return data.profile

    def input_warnings(self, profile: Mapping[str, Any], raw: Any) -> list[InputWarning]:
        return image_warnings(profile, raw)

    def reference_inputs(self, cfg: RunConfig, data: ImageData, split: str) -> Sequence[Any]:
        return raw_images(data.splits[split])

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The input of the head's last Linear: the cnn's hidden layer, a ResNet's pooled features.
        head = model.net.head if isinstance(model, ImageClassifierModel) else model
        return forward_with_features(model, x, last_linear(head, "the image model's head"))

    def explain(
        self,
        cfg: RunConfig,
        model: nn.Module,
        inputs: torch.Tensor,
        *,
        target: Target = None,
        method: str = "gradcam",
    ) -> CamResult:
        """Grad-CAM (or Grad-CAM++) over the network's last convolutional block; heatmaps at image_size.

        Without a ``target`` it explains the answered class: at ``task.threshold``'s operating point for
        a two-class model that has one, else the argmax."""
        decision = decision_of(cfg.task, cfg.data.classes)
        if target is None and decision is not None:
            target = lambda outputs: decision.predict(outputs.float().softmax(dim=1))  # noqa: E731
        net = model.net if isinstance(model, ImageClassifierModel) else model
        layer = last_conv_block(getattr(net, "blocks", ()), cfg.model.name)
        return class_activation_maps(model, inputs, layer, target=target, method=method)

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return class_signals(outputs, decision_of(cfg.task, cfg.data.classes))

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        # In NumPy float64: exact sums of the integer pixels, and a few microseconds per call where the
        # same reductions as torch ops cost ~10 us each (dispatch); the server runs this per batch.
        n, c = model_inputs.shape[:2]
        a = model_inputs.detach().cpu().numpy().reshape(n, c, -1).astype(np.float64)
        pixels = a.shape[2]
        sums, squares = a.sum(axis=2), (a * a).sum(axis=(1, 2))  # (B, C), (B,)
        total, count = sums.sum(axis=1), c * pixels
        mean = total / count
        std = np.sqrt(np.maximum(squares - total * mean, 0.0) / max(count - 1, 1))  # correction=1
        channel_means = sums / pixels
        out = []
        for r, m, sd, cm in zip(raw, mean.tolist(), std.tolist(), channel_means.tolist(), strict=True):
            summary: dict[str, Any] = {
                "mean": round(m, 3),
                "std": round(sd, 3),
                "channel_means": [round(c, 3) for c in cm],
            }
            if isinstance(r, bytes):
                summary |= {"sha256": hashlib.sha256(r).hexdigest(), "bytes": len(r)}
            out.append(summary)
        return out

    def example_request(self) -> dict[str, Any]:
        return {"images": [_example_png()], "top_k": 3}

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: ImageData | None) -> DoctorData:
        """The data as kiln doctor's checks read it (``components.doctor_data.DoctorSource``)."""
        from torchkiln.tasks.image_classification.doctor import doctor_data

        return doctor_data(cfg, resolved, data)


TASK = ImageClassificationTask()  # the ``torchkiln.tasks`` entry point
