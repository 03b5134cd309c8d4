"""The ONNX exporter on its own: an operator ONNX cannot express gets a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchkiln.core.errors import ExportError
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


def test_a_second_export_keeps_every_dynamic_axis(tmp_path) -> None:
    """The dynamo exporter can fix an LSTM's length to the example's on a second export in one
    process; such a graph is not accepted: the next exporter is tried, and both files take any length."""
    from torchkiln.artifacts.runtime import OnnxModel
    from torchkiln.tasks.text_classification.models import lstm

    torch.manual_seed(0)
    model = lstm(num_classes=2, vocab_size=40, pad_id=0, max_length=16, embed_dim=8, hidden_size=8).eval()
    ids = torch.randint(1, 40, (3, 11))
    ids[1, 5:] = 0
    for i in range(2):
        export_onnx(model, ids[:2, :7], tmp_path / f"m{i}.onnx", dynamic_axes=(0, 1))
        got = OnnxModel(tmp_path / f"m{i}.onnx").run(ids.numpy())
        torch.testing.assert_close(torch.from_numpy(got), model(ids), atol=1e-5, rtol=1e-4)
