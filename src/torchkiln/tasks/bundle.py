"""The bundle: the one artifact that prediction, export, serving and monitoring consume.

    bundle/
      model.safetensors   weights (no pickle anywhere), or model.onnx for an ONNX Runtime variant
      config.yaml         the resolved run config (rebuilds the architecture)
      bundle.json         format version, task, runtime, labels, preprocessing, model-file SHA-256,
                          metrics; for an exported variant also what it was made from and its checks
      state/              fitted preprocessing the config cannot hold (a text task's tokenizer.json),
                          each file's SHA-256 in bundle.json; absent for image tasks

A bundle is written to a temporary folder and renamed into place, so a crash never leaves half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from torchkiln import __version__
from torchkiln.config import RunConfig, dump_config, validate
from torchkiln.errors import BundleError, ConfigError
from torchkiln.io import sha256_file
from torchkiln.models.base import resize_to_state
from torchkiln.models.runtime import OnnxModel
from torchkiln.tasks.base import Task, get_task

BUNDLE_FORMAT = "torchkiln-bundle"
BUNDLE_VERSION = 1
FILES = ("model.safetensors", "config.yaml", "bundle.json")  # a trained (torch runtime) bundle
RUNTIMES = {"torch": "model.safetensors", "onnxruntime": "model.onnx"}  # runtime -> model file
STATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a state file name: no folders, no dot-files


@dataclass(frozen=True)
class Bundle:
    path: Path
    config: RunConfig
    meta: dict[str, Any]
    task: Task
    model: nn.Module
    state: Any = None  # task.load_state(config, state_files): what preprocess needs beyond the config
    state_files: dict[str, bytes] = field(default_factory=dict)


def save_bundle(
    path: str | Path,
    *,
    cfg: RunConfig,
    task: Task,
    model: nn.Module | None = None,
    model_file: Path | None = None,
    extra: dict[str, Any] | None = None,
    attachments: dict[str, Path] | None = None,
    state_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a bundle atomically.

    Args:
        path: the bundle folder to create (replaced if it exists).
        cfg: the *resolved* run config.
        task: the run's task; gives labels and preprocessing.
        model: a model whose ``state_dict`` is saved as ``model.safetensors`` (torch runtime) ...
        model_file: ... or an exported ``model.onnx`` to copy in (ONNX Runtime); give one of the two.
        extra: JSON-ready additions to ``bundle.json`` (e.g. validation metrics, export checks).
        attachments: more files to copy in, by name (e.g. ``export_report.json``).
        state_files: the task's fitted preprocessing (``task.state_files(data)``), saved under ``state/``.

    Returns:
        The bundle path.
    """
    if (model is None) == (model_file is None):
        raise TypeError("save_bundle needs exactly one of model= and model_file=")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if model is not None:
            runtime, name = "torch", RUNTIMES["torch"]
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(tmp / name), metadata={"format": BUNDLE_FORMAT})
        else:
            assert model_file is not None and model_file.suffix == ".onnx", model_file
            runtime, name = "onnxruntime", RUNTIMES["onnxruntime"]
            shutil.copyfile(model_file, tmp / name)
        for fname, src in (attachments or {}).items():
            shutil.copyfile(src, tmp / fname)
        state_sha = {}
        for fname, content in (state_files or {}).items():
            if not STATE_NAME.fullmatch(fname):
                raise ValueError(f"state file name {fname!r} must be a plain file name")
            (tmp / "state").mkdir(exist_ok=True)
            (tmp / "state" / fname).write_bytes(content)
            state_sha[fname] = hashlib.sha256(content).hexdigest()
        (tmp / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        meta = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "torchkiln_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "task": task.kind,
            "model": cfg.model.name,
            "runtime": runtime,
            "model_file": name,
            "weights_sha256": sha256_file(tmp / name),
            **task.bundle_meta(cfg),
            **({"state_files": state_sha} if state_sha else {}),
            **(extra or {}),
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        for f in tmp.rglob("*"):
            if f.is_dir():
                f.chmod(0o755)
                continue
            f.chmod(0o644)
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        tmp.chmod(0o755)  # mkdtemp makes it private; servers running as other users must read it
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def without_pretrained(cfg: RunConfig) -> RunConfig:
    """The config with ``model.pretrained: false``: for rebuilding a model whose trained weights come
    from a bundle or checkpoint, so the original weights file is neither needed nor read."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})})


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle without unpickling anything and rebuild its model in eval mode.

    A trained bundle gives an eager ``nn.Module``; an ONNX variant written by ``kiln export`` gives an
    :class:`~torchkiln.models.runtime.OnnxModel` with the same call signature.

    Raises:
        BundleError: files missing, another format version, an unknown runtime, checksum mismatch,
            or weights that do not fit the architecture.

    Example:
        >>> b = load_bundle("runs/fashion-mnist-cnn/20261124-101500/bundle")
        >>> b.model(batch)
    """
    path = Path(path)
    if (path / "bundle").is_dir() and not (path / "bundle.json").exists():
        path = path / "bundle"  # a run directory was given
    meta = _read_meta(path)
    runtime = meta.get("runtime", "torch")
    model_file = path / RUNTIMES[runtime]
    if verify and sha256_file(model_file) != meta.get("weights_sha256"):
        raise BundleError(
            f"Bundle '{path}': {model_file.name} does not match the SHA-256 in bundle.json (the file was "
            f"changed or truncated). Restore the file or retrain."
        )
    try:
        cfg = validate(yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")))
    except ConfigError as exc:
        raise BundleError(f"Bundle '{path}' has an invalid config.yaml:\n{exc}") from None
    task = get_task(cfg.task.kind)
    files = _read_state_files(path, meta, verify=verify)
    state = task.load_state(cfg, files)
    model = OnnxModel(model_file) if runtime == "onnxruntime" else _torch_model(path, cfg, task, meta)
    model.eval()
    return Bundle(path, cfg, meta, task, model, state, files)


def _read_state_files(path: Path, meta: dict[str, Any], *, verify: bool) -> dict[str, bytes]:
    files = {}
    for name, sha in (meta.get("state_files") or {}).items():
        file = path / "state" / name
        if not STATE_NAME.fullmatch(name) or not file.is_file():
            raise BundleError(
                f"Bundle '{path}' lists the state file {name!r} (fitted preprocessing such as a tokenizer), "
                f"but state/{name} is missing. Restore the file, or retrain to rewrite the bundle."
            )
        content = file.read_bytes()
        if verify and hashlib.sha256(content).hexdigest() != sha:
            raise BundleError(
                f"Bundle '{path}': state/{name} does not match the SHA-256 in bundle.json (the file was "
                f"changed or truncated). Restore the file or retrain."
            )
        files[name] = content
    return files


def _read_meta(path: Path) -> dict[str, Any]:
    """``bundle.json``, after checking the format version, the runtime and that every file is there."""
    expected = "bundle.json, config.yaml and the model file (model.safetensors or model.onnx)"
    if not (path / "bundle.json").is_file():
        raise BundleError(
            f"'{path}' is not a torchkiln bundle: bundle.json is missing. Expected {expected}. "
            f"Point at RUN_DIR/bundle (or an exported variant), or retrain to rewrite it."
        )
    meta = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
    if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"Bundle '{path}' has format {meta.get('format')!r} version {meta.get('version')!r}; "
            f"this torchkiln ({__version__}) reads {BUNDLE_FORMAT!r} version {BUNDLE_VERSION}. "
            f"Re-export it with a matching torchkiln version."
        )
    runtime = meta.get("runtime", "torch")
    if runtime not in RUNTIMES:
        raise BundleError(
            f"Bundle '{path}' needs the runtime {runtime!r}; this torchkiln runs {', '.join(RUNTIMES)}. "
            f"Load it with the torchkiln version that wrote it."
        )
    missing = [f for f in ("config.yaml", RUNTIMES[runtime]) if not (path / f).is_file()]
    if missing:
        raise BundleError(
            f"'{path}' is not a complete torchkiln bundle: {', '.join(missing)} missing. Expected "
            f"{expected}. Restore the file, or retrain (or re-export) to rewrite the bundle."
        )
    return meta


def _torch_model(path: Path, cfg: RunConfig, task: Task, meta: dict[str, Any]) -> nn.Module:
    model = task.build_model(without_pretrained(cfg))
    state = load_file(str(path / RUNTIMES["torch"]))
    if meta.get("pruning", {}).get("structured"):
        resize_to_state(model, state)  # channel-pruned: narrower layers than the config's architecture
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"Bundle '{path}': the weights do not fit the '{cfg.model.name}' architecture in config.yaml "
            f"({str(exc).splitlines()[0]}). The bundle is inconsistent; retrain to rewrite it."
        ) from None
    return model
