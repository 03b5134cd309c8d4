"""The ONNX exporter on its own: an operator ONNX cannot express gets a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkiln.errors import ExportError
from torchkiln.exporter.onnx import export_onnx


class Eigen(nn.Module):
    """A model with an operator (complex eigenvalues) that no ONNX opset has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x.float()[:, 0]).real


def test_unsupported_operator_is_named(tmp_path) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_onnx(Eigen(), torch.zeros(2, 1, 4, 4, dtype=torch.uint8), path)
    message = str(err.value)
    assert message.startswith(
        "ONNX export of Eigen failed: the operator 'aten::linalg_eigvals' has no ONNX conversion ("
    )
    assert message.endswith(
        "Expected a model made of operators that ONNX opset 18 supports. Fix: replace that operation in "
        "the model, or keep the eager model (--format torch)."
    )
    assert not path.exists()
