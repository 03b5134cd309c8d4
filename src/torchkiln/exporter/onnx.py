"""Eager model -> ``model.onnx`` with a dynamic batch axis, checked and loadable by ONNX Runtime.

The dynamo exporter (``torch.export`` based) is tried first; it covers more of PyTorch and keeps
shapes symbolic. The TorchScript-based exporter is the fallback for models ``torch.export`` cannot
trace. If both fail, the error names the operator that stopped them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from torchkiln.core.errors import ExportError

INPUT_NAME, OUTPUT_NAME = "input", "output"
AXIS_NAMES = {0: "batch", 1: "length"}
_OPERATOR = re.compile(r"\b([a-z_][a-z0-9_]*::[A-Za-z_]\w*(?:\.\w+)?)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _native_stdout_to_devnull():
    """The TorchScript exporter prints whole graphs from C++ on failure; Python redirects miss that."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _quiet() -> contextlib.ExitStack:
    """Silence the exporters' progress prints and deprecation warnings (errors still raise)."""
    stack = contextlib.ExitStack()
    stack.enter_context(_native_stdout_to_devnull())
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def _dynamo(model: nn.Module, example: torch.Tensor, path: Path, axes: tuple[int, ...]) -> None:
    dims = {axis: torch.export.Dim(AXIS_NAMES.get(axis, f"dim{axis}"), min=1) for axis in axes}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(dims,),
        external_data=False,
    )


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path, axes: tuple[int, ...]) -> None:
    names = {axis: AXIS_NAMES.get(axis, f"dim{axis}") for axis in axes}
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: names, OUTPUT_NAME: {0: "batch"}},
        opset_version=18,
    )


def _check_dynamic(path: Path, axes: tuple[int, ...], example: torch.Tensor) -> None:
    """Exporters may quietly fix an axis marked dynamic to the example's size (the dynamo exporter
    can unroll an LSTM over the example's length); such a graph would reject other sizes."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    fixed = [a for a in axes if a < len(dims) and not dims[a].dim_param]
    if fixed:
        raise ExportError(
            f"the graph fixed input axes {fixed} to the example's sizes {[example.shape[a] for a in fixed]}"
        )


def _text(exc: BaseException) -> str:
    return _ANSI.sub("", "\n".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None))


def unsupported_operator(exc: BaseException) -> str | None:
    """The first ``namespace::op`` an exporter error mentions, e.g. ``aten::linalg_eigvals``."""
    match = _OPERATOR.search(_text(exc))
    return match.group(1) if match else None


def _summary(exc: BaseException, op: str | None) -> str:
    """The line of an exporter error that names ``op``, else its first line."""
    lines = [ln.strip() for ln in _text(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return next((ln for ln in lines if op and op in ln), lines[0])[:240]


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, *, dynamic_axes: tuple[int, ...] = (0,)
) -> str:
    """Export ``model`` (eval mode, on the CPU) to ``path``; returns the exporter that succeeded.

    A model with a ``for_export()`` method is exported through the module that returns: the same
    outputs from operators the exporters can trace (the LSTM/GRU text models run over packed
    sequences, which they cannot).

    Args:
        model: the eager model; it is put in eval mode.
        example: a real input batch of at least 2 items (a batch of 1 would fix the batch size).
        path: the ``.onnx`` file to write.
        dynamic_axes: the input axes whose size varies (the task's ``input_dynamic_axes``): the
            batch, and for padded token ids also the length.

    Returns:
        ``"dynamo"`` or ``"torchscript"``.

    Raises:
        ExportError: neither exporter can convert the model (names the operator when it can), or
            the result fails ``onnx.checker``.

    Example:
        >>> export_onnx(bundle.model, batch[:8], "model.onnx")
        'dynamo'
    """
    import onnx

    if hasattr(model, "for_export"):
        model = model.for_export()
    path = Path(path)
    model = model.cpu().eval()
    example = example.cpu().contiguous()
    failures: list[tuple[str, BaseException]] = []
    used = None
    for name, exporter in (("dynamo", _dynamo), ("torchscript", _torchscript)):
        try:
            with _quiet(), torch.no_grad():
                exporter(model, example, path, dynamic_axes)
            _check_dynamic(path, dynamic_axes, example)
            used = name
            break
        except Exception as exc:  # each exporter raises its own error types
            failures.append((name, exc))
            path.unlink(missing_ok=True)
    if used is None:
        op = next((o for o in map(unsupported_operator, (e for _, e in failures)) if o), None)
        cause = f"the operator '{op}' has no ONNX conversion" if op else "the model could not be traced"
        details = "; ".join(f"{n} exporter: {_summary(e, op)}" for n, e in failures)
        raise ExportError(
            f"ONNX export of {type(model).__name__} failed: {cause} ({details}). Expected a model made "
            f"of operators that ONNX opset 18 supports. Fix: replace that operation in the model, or "
            f"keep the eager model (--format torch)."
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        path.unlink(missing_ok=True)
        raise ExportError(
            f"The exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}. This is an exporter "
            f"bug for this model; report it with the model name, or keep the eager model (--format torch)."
        ) from None
    return used
