"""The image generation config: its ``task`` and ``data`` sections and its run config."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from torchkiln.core.config import DataConfig, ModelConfig, RunConfig, SplitConfig, TaskConfig

# Radford et al. (2016): Adam with lr 2e-4 and beta1 0.5, no weight decay, a constant rate. A GAN run
# gets these unless its config says otherwise (the classifiers' AdamW 3e-3 with one-cycle diverges).
GAN_OPTIMIZER = {"name": "adam", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0}


class GenerationTaskConfig(TaskConfig):
    kind: Literal["image-generation"] = "image-generation"
    latent_dim: Annotated[int, Field(ge=2, le=512)] = Field(64, description="Size of the noise vector z.")
    conditional: bool = Field(
        False,
        description="Condition both networks on the class label: the generator draws the class asked for "
        "(kiln generate --label Bag).",
    )
    features: str = Field(
        "fashion-mnist-cnn",
        description="The classifier bundle whose penultimate features FID, KID and precision/recall are "
        "measured on: the built-in 'fashion-mnist-cnn', a bundle path, or 'none' (no quality figures).",
    )
    eval_samples: Annotated[int, Field(ge=16, le=100_000)] = Field(
        5000, description="At most this many real and as many generated images per validation epoch."
    )
    grid: Annotated[int, Field(ge=1, le=256)] = Field(
        64, description="Images drawn from the same fixed noise every epoch for TensorBoard's sample grid."
    )
    d_lr_mult: Annotated[float, Field(gt=0, le=10)] = Field(
        1.0, description="The discriminator's learning rate as a multiple of train.optimizer.lr (TTUR)."
    )


class GenerationDataConfig(DataConfig):
    path: str = Field(
        description="A catalog name (fashion-mnist, digits), an image folder (one subfolder per class, "
        "optionally inside train/val/test), an .npz file or an IDX file."
    )
    image_size: Literal[28, 32, 56, 64] | None = Field(
        None, description="Generated images are this square size (default: the data's, if one of these)."
    )
    channels: Literal[1, 3] | None = Field(None, description="1 (grayscale) or 3 (RGB); default: the data's.")
    classes: list[str] | None = Field(
        None, description="Train on these classes only, in label order (default: every class)."
    )
    split: SplitConfig = SplitConfig()
    limit_per_class: Annotated[int, Field(ge=1)] | None = None
    flip: bool = Field(False, description="Flip training images left-right at random (not for digits).")


class GenerationModelConfig(ModelConfig):
    name: str = "dcgan"


class GenerationRunConfig(RunConfig):
    task: GenerationTaskConfig
    data: GenerationDataConfig
    model: GenerationModelConfig = GenerationModelConfig()
    default_monitor: ClassVar[tuple[str, str]] = ("val/fid", "min")

    @property
    def label_classes(self) -> int:
        """How many classes the networks are conditioned on: 0 for an unconditional GAN."""
        return len(self.data.classes or []) if self.task.conditional else 0

    @model_validator(mode="before")
    @classmethod
    def _gan_defaults(cls, raw: Any) -> Any:
        """The DCGAN paper's optimizer and a constant learning rate where the config sets none."""
        if isinstance(raw, dict) and isinstance(raw.get("train", {}), dict):
            train = dict(raw.get("train") or {})
            optimizer = train.get("optimizer")
            if optimizer is None or isinstance(optimizer, dict):
                train["optimizer"] = GAN_OPTIMIZER | dict(optimizer or {})
            train.setdefault("scheduler", {"name": "none"})
            raw = {**raw, "train": train}
        return raw
