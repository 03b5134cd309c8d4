"""Image generation: images -> a DCGAN whose bundle serves the generator (seeded PNGs per request).

The engine trains both networks through :class:`~torchkiln.tasks.image_generation.train.GANTraining`; the
bundle holds both and serves the generator, whose input is the noise (with the one-hot class when
conditional) that ``preprocess`` draws from each request's seeds. Neural style transfer, which trains
nothing, is this family's ``stylize`` action and ``kiln stylize`` command.
"""

from __future__ import annotations

import base64
import io
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from torchkiln.components.doctor_data import DoctorData
from torchkiln.components.metric import Metric
from torchkiln.components.models import check_model
from torchkiln.core.config import RunConfig
from torchkiln.core.errors import ConfigError, PredictError, did_you_mean
from torchkiln.core.io import absolute_if_exists
from torchkiln.tasks.base import (
    ParamGroup,
    PredictArgs,
    PrimaryMetric,
    RawItems,
    RequestLimits,
    TaskAction,
    checked_request,
    validate,
)
from torchkiln.tasks.image_generation.config import GenerationRunConfig
from torchkiln.tasks.image_generation.data import (
    GenerationData,
    GenerationSplit,
    load_generation_data,
    make_loader,
    seeded_noise,
)
from torchkiln.tasks.image_generation.models import TASK as KIND
from torchkiln.tasks.image_generation.models import Generator
from torchkiln.tasks.image_generation.train import GANTraining, NoQuality, generator_input, to_uint8

MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class GenerateInput:
    """One image to draw: the seed of its noise, and the class asked for (None: unconditional, or any)."""

    seed: int
    label: str | None = None


class GenerateRequest(BaseModel):
    """How many images to draw, from which seed, of which class."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(1, ge=1, le=256, description="Images to draw; image i uses seed + i.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED - 256, description="The first image's seed (default: a random one, returned)."
    )
    label: str | None = Field(
        None, max_length=200, description="The class to draw (conditional models; default: classes in turn)."
    )


class GeneratedImage(BaseModel):
    image: str = Field(description="The image as a base64 PNG.")
    seed: int = Field(description="Its noise seed: the same seed (and label) draws the same image again.")
    label: str | None = Field(description="The class it was drawn as (conditional models), else null.")
    width: int
    height: int


def png_base64(image: torch.Tensor) -> str:
    """A uint8 ``(C, H, W)`` image as a base64 PNG."""
    arr = image.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ImageGenerationTask:
    kind = KIND
    config_type = GenerationRunConfig
    summary = "Images -> a DCGAN that draws new ones (and neural style transfer: kiln stylize)"
    primary_metric = PrimaryMetric("fid", higher_is_better=False, scale=1.0, unit="FID")
    image_input = True
    cli_options: frozenset[str] = frozenset()
    request_only_fields = frozenset({"seed"})
    input_dynamic_axes = (0,)

    def prepare(
        self, cfg: RunConfig, *, splits: Collection[str] | None = None, state: Any = None
    ) -> tuple[RunConfig, GenerationData]:
        cfg = cast(GenerationRunConfig, cfg)
        check_model(cfg.model.name, args=cfg.model.args, pretrained=cfg.model.pretrained, task=self.kind)
        if "latent_dim" in cfg.model.args:
            raise ConfigError(
                "model.args sets 'latent_dim', which is a task setting. Move it to task.latent_dim."
            )
        if cfg.task.features != "none":
            _features(cfg.task.features)  # a wrong feature classifier fails here, before the data loads
        data = load_generation_data(cfg.data, seed=cfg.seed, only_splits=splits)
        train = cfg.train
        if cfg.task.features == "none" and train.monitor == "val/fid":  # no quality figures to pick by
            train = train.model_copy(update={"monitor": "train/g_loss", "monitor_mode": "min"})
        resolved = cfg.model_copy(
            update={
                "train": train,
                "data": cfg.data.model_copy(
                    update={
                        "path": absolute_if_exists(cfg.data.path),
                        "classes": data.classes,
                        "image_size": data.size,
                        "channels": data.channels,
                    }
                ),
            }
        )
        return validate(resolved.model_dump(mode="json")), data

    # Training ----------------------------------------------------------------------------------------
    def train_module(self, cfg: RunConfig) -> GANTraining:
        return GANTraining(cfg, self.build_modules, self.metrics)

    def build_modules(self, cfg: RunConfig) -> nn.ModuleDict:
        """Both networks for a resolved config (a bundle rebuilds them so)."""
        cfg = cast(GenerationRunConfig, cfg)
        d, m = cfg.data, cfg.model
        if not d.classes or d.image_size is None or d.channels is None:
            raise ConfigError(
                "build_modules needs a resolved config, but data.classes, image_size or channels is not set; "
                "expected the config that task.prepare returns (a bundle's config is resolved too). Fix: "
                "pass the config from `cfg, data = task.prepare(cfg)`, or the bundle's."
            )
        spec = check_model(m.name, args=m.args, pretrained=m.pretrained, task=self.kind)
        return spec.builder(
            image_size=d.image_size,
            in_channels=d.channels,
            num_classes=cfg.label_classes,
            latent_dim=cfg.task.latent_dim,
            **m.args,
        )

    def build_model(self, cfg: RunConfig) -> nn.Module:
        return self.build_modules(cfg)["generator"]

    def loader(self, cfg: RunConfig, data: GenerationData, split: str, *, train: bool) -> DataLoader:
        cfg = cast(GenerationRunConfig, cfg)
        part = data.splits[split]
        if not train and len(part) > cfg.task.eval_samples:  # the first eval_samples of a seeded order
            keep = torch.randperm(len(part), generator=torch.Generator().manual_seed(cfg.seed))
            keep = keep[: cfg.task.eval_samples].sort().values
            part = GenerationSplit(part.images[keep], part.labels[keep])
        return make_loader(
            part,
            batch_size=cfg.train.batch_size if train else cfg.evaluate.batch_size,
            latent_dim=cfg.task.latent_dim,
            num_classes=cfg.label_classes,
            seed=cfg.seed,
            train=train,
            flip=cfg.data.flip,
        )

    def to_device(self, batch: Any, device: torch.device, *, channels_last: bool) -> tuple[Any, torch.Tensor]:
        """(the generator's inputs: the batch's noise, with the one-hot fake labels when conditional; the
        real images)."""
        real, _, z, _ = batch
        return z.to(device), real.to(device)

    def loss(self, cfg: RunConfig) -> nn.Module:
        return nn.BCEWithLogitsLoss()

    def metrics(self, cfg: RunConfig) -> Metric:
        """FID, KID and precision/recall of each validation epoch, on ``task.features``' classifier."""
        cfg = cast(GenerationRunConfig, cfg)
        if cfg.task.features == "none":
            return NoQuality()
        from torchkiln.tasks.image_generation.quality import GenerationQuality

        return GenerationQuality(_features(cfg.task.features), max_items=cfg.task.eval_samples)

    def param_groups(self, cfg: RunConfig, model: nn.Module) -> list[ParamGroup]:
        return [ParamGroup("generator", [p for p in model.parameters() if p.requires_grad])]

    def state_files(self, data: GenerationData) -> dict[str, bytes]:
        return {}

    def load_state(self, cfg: RunConfig, files: Mapping[str, bytes]) -> None:
        return None

    def calibrate(
        self, cfg: RunConfig, model: nn.Module, loader: DataLoader | None, device: torch.device
    ) -> dict[str, Any]:
        return {}

    # Predicting --------------------------------------------------------------------------------------
    def preprocess(self, cfg: RunConfig, inputs: Sequence[Any], state: Any = None) -> torch.Tensor:
        """Each input's seed -> its noise (``(B, Z)``, with the one-hot class when conditional)."""
        cfg = cast(GenerationRunConfig, cfg)
        if not inputs:
            raise PredictError("No images were asked for. Ask for at least one (n >= 1).")
        items = [i if isinstance(i, GenerateInput) else GenerateInput(int(i)) for i in inputs]
        z = seeded_noise([i.seed for i in items], cfg.task.latent_dim)
        if not cfg.task.conditional:
            for item in items:
                if item.label is not None:
                    raise PredictError(
                        f"label '{item.label}' was given, but this generator is unconditional: it draws "
                        f"from every class at once. Leave the label out, or train with task.conditional: "
                        f"true."
                    )
            return z
        classes = list(cfg.data.classes or [])
        labels = torch.tensor([self._class_index(classes, item) for item in items])
        return generator_input(z, labels, len(classes))

    @staticmethod
    def _class_index(classes: list[str], item: GenerateInput) -> int:
        if item.label is None:
            return item.seed % len(classes)  # classes in turn along the seeds: a grid shows them all
        if item.label not in classes:
            raise PredictError(
                f"label '{item.label}' is not a class of this model.{did_you_mean(item.label, classes)} "
                f"Expected one of {', '.join(classes)}."
            )
        return classes.index(item.label)

    def collate_inputs(self, cfg: RunConfig, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))

    def postprocess(
        self, cfg: RunConfig, outputs: torch.Tensor, *, top_k: int, raw: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        cfg = cast(GenerationRunConfig, cfg)
        images = to_uint8(outputs.cpu())
        classes = list(cfg.data.classes or [])
        answers = []
        for i, image in enumerate(images):
            item = raw[i] if raw is not None else None
            seed = item.seed if isinstance(item, GenerateInput) else None
            label = None
            if cfg.task.conditional and isinstance(item, GenerateInput):
                label = classes[self._class_index(classes, item)]
            answers.append(
                {
                    "image": png_base64(image),
                    "seed": seed,
                    "label": label,
                    "width": int(image.shape[-1]),
                    "height": int(image.shape[-2]),
                }
            )
        return answers

    def bundle_meta(self, cfg: RunConfig) -> dict[str, Any]:
        cfg = cast(GenerationRunConfig, cfg)
        d = cfg.data
        k = cfg.label_classes
        return {
            "labels": d.classes,
            "preprocessing": {
                "input": f"(B, {cfg.task.latent_dim + k}) standard normal noise z from each image's seed"
                + (f", then the one-hot class ({k})" if k else ""),
                "latent_dim": cfg.task.latent_dim,
                "conditional": cfg.task.conditional,
                "output": f"(B, {d.channels}, {d.image_size}, {d.image_size}) images in [-1, 1]",
            },
        }

    # Serving -----------------------------------------------------------------------------------------
    request_schema = GenerateRequest
    response_schema = GeneratedImage
    upload_media = None

    def decode_request(self, request: BaseModel, *, limits: RequestLimits) -> list[GenerateInput]:
        request = checked_request(request, GenerateRequest)
        limits.check_count(request.n)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - 256)
        return [GenerateInput(seed + i, request.label) for i in range(request.n)]

    def decode_uploads(self, files: Sequence[bytes], *, limits: RequestLimits) -> list[Any]:
        raise PredictError(
            "A generator takes no uploaded files. Send a JSON body such as "
            '{"n": 4, "seed": 0} (and "label" for a conditional model).'
        )

    def example_request(self) -> dict[str, Any]:
        return {"n": 2, "seed": 7}

    def doctor_data(self, cfg: RunConfig, resolved: RunConfig | None, data: Any) -> DoctorData:
        """The data as kiln doctor's checks read it (``components.doctor_data.DoctorSource``)."""
        from torchkiln.tasks.image_generation.doctor import doctor_data

        return doctor_data(cfg, resolved, data)

    @property
    def actions(self) -> tuple[TaskAction, ...]:
        from torchkiln.tasks.image_generation.style_serve import STYLIZE

        return (STYLIZE,)

    # Monitoring --------------------------------------------------------------------------------------
    def reference_inputs(self, cfg: RunConfig, data: GenerationData, split: str) -> Sequence[Any]:
        """Typical requests: one seeded image per item, of the item's class when conditional."""
        cfg = cast(GenerationRunConfig, cfg)
        labels, classes = data.splits[split].labels, data.classes
        conditional = cfg.task.conditional

        def item(i: int) -> GenerateInput:
            return GenerateInput(i, classes[int(labels[i])] if conditional else None)

        return RawItems(len(labels), item)

    def forward_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(model, Generator):
            raise PredictError(
                f"Generator features need the torch generator; got {type(model).__name__}. Load the trained "
                f"bundle to embed inputs."
            )
        return model.features(x)

    def output_signals(self, cfg: RunConfig, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per image: its ``brightness`` (mean pixel in [0, 1]) and ``contrast`` (their std): a generator that
        collapses or saturates moves them."""
        pixels = outputs.float().add(1).div(2).flatten(1)
        return {"brightness": pixels.mean(dim=1), "contrast": pixels.std(dim=1)}

    def summarize_inputs(
        self, cfg: RunConfig, raw: Sequence[Any], model_inputs: torch.Tensor
    ) -> list[dict[str, Any]]:
        cfg = cast(GenerationRunConfig, cfg)
        z = model_inputs[:, : cfg.task.latent_dim].float()
        norms = (z.norm(dim=1) / np.sqrt(z.shape[1])).tolist()
        out = []
        for item, norm in zip(raw, norms, strict=True):
            seed = item.seed if isinstance(item, GenerateInput) else int(item)
            label = item.label if isinstance(item, GenerateInput) else None
            out.append({"seed": seed, "z_norm": round(norm, 4), **({"label": label} if label else {})})
        return out

    # Evaluation and the command line -----------------------------------------------------------------
    def evaluate(self, bundle: Any, *, split: str, out_dir: Path, device: torch.device) -> Any:
        """FID, KID and precision/recall against the split and the real-versus-real floor; sample grids and
        each sample's nearest training images (does the generator copy?)."""
        from torchkiln.tasks.image_generation.evaluate import evaluate_generator

        return evaluate_generator(bundle, split=split, out_dir=out_dir, device=device)

    def example_config(self, root: Path) -> dict[str, Any]:
        from torchkiln.tasks.image_generation.example import example_config

        return example_config(root)

    def cli_predict(self, predictor: Any, args: PredictArgs, *, as_json: bool) -> list[Any]:
        raise PredictError(
            "A generator has no inputs to predict from. Draw images with: kiln generate BUNDLE --n 64 "
            "--out grid.png"
        )


@cache
def _features(source: str) -> nn.Module:
    """The feature classifier, loaded once per process (every validation epoch measures with it)."""
    from torchkiln.tasks.image_generation.quality import load_features

    return load_features(source)


TASK = ImageGenerationTask()  # the ``torchkiln.tasks`` entry point
