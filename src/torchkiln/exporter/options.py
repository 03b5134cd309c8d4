"""What ``kiln export`` is asked to make, validated before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Accuracy points a variant may lose against the original bundle, unless --budget says otherwise.
DEFAULT_BUDGET = {"plain": 0.1, "compressed": 1.0}


class ExportOptions(BaseModel):
    """One export: an optional prune (+ fine-tune), then a format, then optional int8 quantization.

    Example:
        >>> ExportOptions(format="onnx", quantize="static").variant_name
        'onnx-int8-static'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["onnx", "torch"] = "onnx"
    quantize: Literal["dynamic", "static"] | None = None
    prune: float | None = Field(None, gt=0.0, lt=1.0, description="fraction of weights or channels")
    prune_method: Literal["l1-unstructured", "l1-structured"] = "l1-structured"
    finetune_epochs: int = Field(8, ge=0)
    finetune_lr_mult: float = Field(0.5, gt=0.0)
    calibration_split: Literal["train", "val", "test"] = "val"
    calibration_data: Path | None = None
    calibration_size: int = Field(512, ge=1, description="images used to calibrate static int8")
    split: Literal["train", "val", "test"] = "test"
    budget: float | None = Field(None, ge=0.0, description="metric points the variant may lose")
    tolerance: float = Field(1e-4, gt=0.0, description="max |Δ| between eager and ONNX outputs")
    bench_seconds: float = Field(2.0, gt=0.0, description="timed seconds per latency measurement")
    out: Path | None = None
    device: str = Field(
        "auto", description="where a pruned model fine-tunes; the export, int8 and the checks run on the CPU"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExportOptions:
        if self.format == "torch" and self.quantize:
            raise ValueError(
                "int8 quantization produces an ONNX Runtime model; use --format onnx with --quantize"
            )
        if self.format == "torch" and self.prune is None:
            raise ValueError(
                "--format torch without --prune would copy the bundle unchanged; add --prune 0.5, "
                "or export to --format onnx"
            )
        if self.calibration_data is not None and self.quantize != "static":
            raise ValueError("--calibration-data is only used by --quantize static")
        return self

    @property
    def compressed(self) -> bool:
        return self.quantize is not None or self.prune is not None

    @property
    def metric_budget(self) -> float:
        return (
            self.budget
            if self.budget is not None
            else DEFAULT_BUDGET["compressed" if self.compressed else "plain"]
        )

    @property
    def variant_name(self) -> str:
        parts = []
        if self.prune is not None:
            parts.append(f"pruned-{self.prune_method}-{round(self.prune * 100)}")
        parts.append(self.format)
        if self.quantize:
            parts.append(f"int8-{self.quantize}")
        return "-".join(parts)

    def resolved(self, out: Path) -> dict[str, Any]:
        """The options as used: ``budget`` resolved to its default, ``out`` to the variant folder."""
        return self.model_dump(mode="json") | {"budget": self.metric_budget, "out": str(out)}

    def unused(self) -> dict[str, str]:
        """The options this export does not use, each with the reason (for the report)."""
        why: dict[str, str] = {}
        if self.prune is None:
            why |= dict.fromkeys(
                ("prune_method", "finetune_epochs", "finetune_lr_mult", "device"), "no pruning"
            )
        elif not self.finetune_epochs:
            why |= dict.fromkeys(("finetune_lr_mult", "device"), "no fine-tune")
        if self.quantize != "static":
            why |= dict.fromkeys(("calibration_split", "calibration_size"), "no static int8")
        elif self.calibration_data is not None:
            why["calibration_split"] = "calibration_data is used instead"
        if self.format != "onnx":
            why["tolerance"] = "no ONNX export"
        return why
