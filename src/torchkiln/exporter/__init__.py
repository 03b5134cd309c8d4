"""Export and compression: ONNX, int8 quantization and pruning, each gated on parity."""

from torchkiln.exporter.options import ExportOptions
from torchkiln.exporter.pipeline import Check, ExportResult, Row, export_bundle

__all__ = ["Check", "ExportOptions", "ExportResult", "Row", "export_bundle"]
