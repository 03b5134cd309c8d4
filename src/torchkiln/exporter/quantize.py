"""int8 post-training quantization with ONNX Runtime's quantization tools.

Why ONNX Runtime and not PyTorch's pt2e: the quantized model has to be *fast where it is served*.
ONNX Runtime fuses quantize/dequantize pairs into real int8 kernels (QLinearConv, MatMulInteger)
on any x86 CPU, and the result is the same ``model.onnx`` file the server loads. A pt2e model only
runs int8 kernels after ``torch.compile`` with the x86 Inductor backend; in eager mode it simulates
int8 with float ops and is slower than the fp32 model it came from.

- ``dynamic``: int8 weights, activations quantized on the fly per batch. For Linear/LSTM-heavy
  models (MLPs, text encoders), where activation ranges vary with the input. Embedding tables
  (``Gather`` on a weight) are stored in int8 too, which is most of a text model's file. Conv layers
  are left in fp32: ONNX Runtime has no fast dynamic int8 convolution.
- ``static``: int8 weights and activations, with activation ranges calibrated on real data. For CNNs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from torchkiln.core.errors import ExportError

_DYNAMIC_OPS = ["MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather"]


def load_calibration_file(path: Path) -> np.ndarray:
    """Model inputs saved with ``np.save`` (``.npy``) or ``np.savez`` (``.npz``, first array); no pickle."""
    if not path.is_file():
        raise ExportError(
            f"Calibration data '{path}' does not exist. Expected a .npy or .npz file of model inputs; "
            f"or leave out --calibration-data to calibrate on the --calibration-split of the bundle's data."
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                loaded = loaded[loaded.files[0]]
    except (ValueError, OSError, IndexError) as exc:
        raise ExportError(
            f"Calibration data '{path}' could not be read as a NumPy array ({exc}). Save it with "
            f"np.save(path, inputs) where inputs is a (N, C, H, W) uint8 array."
        ) from None
    return loaded


def check_calibration(
    data: np.ndarray, expected: np.ndarray, source: str, *, dynamic_axes: tuple[int, ...] = (0,)
) -> None:
    """Calibration inputs must look exactly like model inputs: same per-item shape and dtype.

    Axes in ``dynamic_axes`` (the batch; a text's length) may differ in size.

    Raises:
        ExportError: they do not (say how they differ and what the model takes).
    """
    fixed = [a for a in range(expected.ndim) if a not in dynamic_axes]
    if (
        data.ndim != expected.ndim
        or [data.shape[a] for a in fixed] != [expected.shape[a] for a in fixed]
        or data.dtype != expected.dtype
    ):
        dims = ["N" if a == 0 else "L" if a in dynamic_axes else str(n) for a, n in enumerate(expected.shape)]
        want = f"({', '.join(dims)}) {expected.dtype}"
        raise ExportError(
            f"Calibration data from {source} has shape {tuple(data.shape)} and dtype {data.dtype}, but the "
            f"model takes {want} batches. Fix: save inputs preprocessed as the model sees them (the "
            f"bundle's preprocessing), or calibrate on the bundle's own data with --calibration-split val."
        )
    if len(data) == 0:
        raise ExportError(f"Calibration data from {source} is empty. Give at least one input.")


class _Reader:
    """The ``CalibrationDataReader`` protocol: ``get_next`` yields input feeds, then ``None``."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int = 32) -> None:
        self.batches: Iterator[np.ndarray] = (
            data[i : i + batch_size] for i in range(0, len(data), batch_size)
        )
        self.input_name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch)}


@contextlib.contextmanager
def _ort_logging_quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the quantizer logs every tensor it skips at INFO/WARNING
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_onnx(
    src: Path,
    dst: Path,
    *,
    mode: str,
    input_name: str,
    calibration: np.ndarray | None = None,
) -> None:
    """Write an int8 copy of ``src`` to ``dst``.

    Args:
        src: an fp32 ONNX model.
        dst: where to write the quantized model.
        mode: ``dynamic`` or ``static``.
        input_name: the graph input that calibration batches feed.
        calibration: real model inputs (static only), already checked with :func:`check_calibration`.

    Raises:
        ExportError: ``static`` without calibration inputs, or ONNX Runtime cannot quantize the graph.
    """
    if mode == "dynamic":
        reader = None
    elif calibration is None:
        raise ExportError(
            f"Static int8 quantization of '{src}' got no calibration inputs; expected real model inputs "
            f"(an array like the model's input batch) to measure activation ranges on. Fix: pass "
            f"calibration= (checked with check_calibration), or use mode='dynamic'."
        )
    else:
        reader = _Reader(input_name, calibration)
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="kiln-quant-") as tmp, _ort_logging_quiet():
        prepared = Path(tmp).resolve() / "prepared.onnx"
        try:
            # Shape inference and graph fusions (Conv+BatchNorm) first, so ranges are taken on the
            # graph that will actually run. Symbolic shape inference gives up on some graphs (the
            # attention masks of transformers models); ONNX's own shape inference is enough for those.
            # When it gives up it leaves a debug copy of the graph in the working directory, so it
            # runs inside the temporary one.
            source = str(Path(src).resolve())
            try:
                with contextlib.chdir(tmp):
                    quant_pre_process(source, str(prepared), skip_symbolic_shape=False)
            except Exception:  # onnxruntime raises plain Exception("Incomplete symbolic shape inference")
                quant_pre_process(source, str(prepared), skip_symbolic_shape=True)
            if mode == "dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(dst),
                    weight_type=QuantType.QInt8,
                    op_types_to_quantize=_DYNAMIC_OPS,
                    per_channel=True,
                    reduce_range=True,
                )
            else:
                quantize_static(
                    str(prepared),
                    str(dst),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    # AVX2 without VNNI adds u8 x s8 products in saturating int16; 7-bit weights
                    # keep those sums in range (no effect on VNNI CPUs beyond a tiny precision cost).
                    reduce_range=True,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as exc:
            dst.unlink(missing_ok=True)
            raise ExportError(
                f"ONNX Runtime could not quantize the model ({mode} int8): {str(exc).splitlines()[0]}. "
                f"Export without --quantize, or try the other mode (--quantize "
                f"{'static' if mode == 'dynamic' else 'dynamic'})."
            ) from None
