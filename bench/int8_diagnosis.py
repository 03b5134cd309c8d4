"""Why a model misses an export target: its fp32 noise floor and how int8 calibration choices fare.

For a trained run (by default the EfficientNet-Lite0 transfer model), on the first ``--items`` test
images:

1. max |Δ| between the eager fp32 model and the same network in float64, next to max |Δ| between
   ONNX Runtime fp32 and eager fp32. If eager fp32 is itself that far from exact arithmetic, an
   absolute tolerance below it cannot be met by any faithful export.
2. Static int8 accuracy with each ONNX Runtime calibration method (MinMax, Entropy, Percentile),
   and with the depthwise convolutions left in fp32, against fp32 ONNX accuracy.

    .venv/bin/python bench/int8_diagnosis.py RUN_DIR [--items 2000]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from torchkiln.artifacts.bundle import load_bundle, without_pretrained
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.exporter.onnx import INPUT_NAME, export_onnx


def split_arrays(bundle, data, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in bundle.task.loader(bundle.config, data, split, train=False):
        xs.append(x.numpy())
        ys.append(y.numpy())
        if sum(len(a) for a in xs) >= n:
            break
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


class Reader:
    def __init__(self, data: np.ndarray) -> None:
        self.batches = iter([data[i : i + 32] for i in range(0, len(data), 32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("run", type=Path)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    bundle = load_bundle(args.run)
    _, data = bundle.task.prepare(without_pretrained(bundle.config), splits={"test", "val"})
    x, y = split_arrays(bundle, data, "test", args.items)
    calib, _ = split_arrays(bundle, data, "val", 512)
    model = bundle.model.eval()
    with torch.inference_mode():
        eager = model(torch.from_numpy(x)).numpy()
        exact = model.double().net(torch.from_numpy(x).double() * model.scale + model.shift).numpy()
        model.float()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, q = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        export_onnx(model, torch.from_numpy(x[:2]), fp32)
        onnx_out = np.concatenate([OnnxModel(fp32).run(x[i : i + 250]) for i in range(0, len(x), 250)])
        print(f"largest |logit| {np.abs(exact).max():.2f}")
        print(f"max |Δ| eager fp32 vs float64:  {np.abs(eager - exact).max():.2e}")
        print(f"max |Δ| ONNX fp32 vs eager fp32: {np.abs(onnx_out - eager).max():.2e}")
        print(f"accuracy fp32 ONNX: {(onnx_out.argmax(1) == y).mean():.4f}")
        quant_pre_process(str(fp32), str(prepared))
        nodes = onnx.load(str(prepared)).graph.node
        depthwise = [
            n.name
            for n in nodes
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
        ]
        trials = {
            "MinMax": {},
            "Entropy": {"calibrate_method": CalibrationMethod.Entropy},
            "Percentile": {"calibrate_method": CalibrationMethod.Percentile},
            f"MinMax, {len(depthwise)} depthwise convs kept fp32": {"nodes_to_exclude": depthwise},
        }
        for label, extra in trials.items():
            quantize_static(
                str(prepared),
                str(q),
                Reader(calib),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                **extra,
            )
            out = np.concatenate([OnnxModel(q).run(x[i : i + 250]) for i in range(0, len(x), 250)])
            print(f"accuracy static int8, {label}: {(out.argmax(1) == y).mean():.4f}")


if __name__ == "__main__":
    main()
