"""Run an exported ONNX model behind the same interface as an eager ``nn.Module``.

The bundle loader wraps ``model.onnx`` in :class:`OnnxModel`, so the predictor, the evaluator and
the server call ``model(x)`` the same way whatever runtime a bundle variant needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from torchkiln.core.errors import BundleError


def onnxruntime_session(path: str | Path, *, threads: int | None = None):  # -> ort.InferenceSession
    """An ONNX Runtime CPU session with full graph optimization.

    ``threads`` defaults to ``torch.get_num_threads()``, what eager PyTorch uses, so benchmarks compare
    like with like and ``kiln serve --model-threads`` sets both.

    Raises:
        BundleError: onnxruntime is not installed, or the file is not a loadable ONNX model.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError(
            "This bundle variant runs on ONNX Runtime, which is not installed. "
            "Install it with: pip install 'torchkiln[export]'"
        ) from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: no per-node placement chatter
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise BundleError(
            f"ONNX Runtime cannot load '{path}': {str(exc).splitlines()[0]}. The file is not a valid "
            f"ONNX model for this onnxruntime; re-export it with 'kiln export'."
        ) from None


class OnnxModel(nn.Module):
    """An ONNX Runtime session as a module: ``(B, ...)`` tensor in, output tensor (on the CPU) out.

    It has no parameters, so ``.to(device)`` and ``.eval()`` are no-ops; inputs are copied to the
    host, since the session runs on the CPU.

    Example:
        >>> model = OnnxModel("runs/x/bundle-onnx/model.onnx")
        >>> logits = model(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnxruntime_session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().cpu().contiguous().numpy()))
