"""The bundle: the one artifact that prediction, export, serving and monitoring consume.

    bundle/
      model.safetensors   weights of every named module, keys "<module>.<parameter>" (no pickle
                          anywhere), or model.onnx (the serving module) for an ONNX Runtime variant
      config.yaml         the resolved run config (rebuilds the architecture)
      bundle.json         format version, task, runtime, the modules and the one that serves (a GAN
                          serves its generator), labels, preprocessing, model-file SHA-256, metrics;
                          for an exported variant also what it was made from and its checks
      state/              fitted preprocessing the config cannot hold (a text task's tokenizer.json),
                          each file's SHA-256 in bundle.json; absent for image tasks
      profile.json        what the training inputs looked like, by section: "raw" is their form before
                          preprocessing (image modes and sizes, text lengths), which predict-time inputs
                          are checked against; absent in bundles written before it, which check nothing;
                          "reference" describes the reference sample below (artifacts/profile.py)
      reference.safetensors  a sample of held-out data as the server would log it: input summaries,
                          predicted classes and confidence (or a forecast's level and spread), PCA-reduced
                          penultimate features and the projection; absent in bundles written before it

A bundle is written to a temporary folder and renamed into place, so a crash never leaves half of one.
Bundles written before named modules (no "modules" in bundle.json) hold one module's keys unprefixed;
they load as the task's serving module.
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

from torchkiln.artifacts.profile import (
    Reference,
    read_profile,
    read_reference,
    write_profile,
)
from torchkiln.artifacts.runtime import OnnxModel
from torchkiln.components.models import resize_to_state
from torchkiln.core._version import __version__
from torchkiln.core.config import RunConfig
from torchkiln.core.config_io import dump_config
from torchkiln.core.errors import BundleError, ConfigError
from torchkiln.core.io import sha256_file
from torchkiln.tasks.base import Task, get_task, validate

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
    model: nn.Module  # the serving module (``modules[serves]``), or an ONNX Runtime model
    state: Any = None  # task.load_state(config, state_files): what preprocess needs beyond the config
    state_files: dict[str, bytes] = field(default_factory=dict)
    serves: str = "model"
    modules: dict[str, nn.Module] = field(default_factory=dict)  # every module the bundle holds
    profile: dict[str, Any] = field(default_factory=dict)  # profile.json's sections; {} without one

    def reference(self) -> Reference:
        """The reference sample of held-out data (``reference.safetensors``), read from disk.

        Raises:
            BundleError: the bundle has none (the message gives the ``kiln monitor profile`` command that
                builds one), or its file is missing or changed.
        """
        return read_reference(self.path, self.profile.get("reference"))


def save_bundle(
    path: str | Path,
    *,
    cfg: RunConfig,
    task: Task,
    model: nn.Module | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    serves: str = "model",
    model_file: Path | None = None,
    extra: dict[str, Any] | None = None,
    attachments: dict[str, Path] | None = None,
    state_files: Mapping[str, bytes] | None = None,
    profile: Mapping[str, Any] | None = None,
    reference: Reference | None = None,
) -> Path:
    """Write a bundle atomically.

    Args:
        path: the bundle folder to create (replaced if it exists).
        cfg: the *resolved* run config.
        task: the run's task; gives labels and preprocessing.
        model: the serving module, saved alone in ``model.safetensors`` (torch runtime) ...
        modules: ... or every module by name (a GAN's generator and discriminator) ...
        serves: ... the name of the module that answers predictions ...
        model_file: ... or an exported ``model.onnx`` of it to copy in (ONNX Runtime); give one of three.
        extra: JSON-ready additions to ``bundle.json`` (e.g. validation metrics, export checks).
        attachments: more files to copy in, by name (e.g. ``export_report.json``).
        state_files: the task's fitted preprocessing (``task.state_files(data)``), saved under ``state/``.
        profile: what the training inputs looked like, by section (``{"raw": task.input_profile(data)}``),
            saved as ``profile.json``; an export passes its source's ``Bundle.profile`` on.
        reference: the reference sample of held-out data (``tasks.reference.build_reference``), saved as
            ``reference.safetensors`` and profile.json's ``reference`` section; an export passes its
            source's ``Bundle.reference()`` on.

    Returns:
        The bundle path.
    """
    if sum(x is not None for x in (model, modules, model_file)) != 1:
        raise TypeError("save_bundle needs exactly one of model=, modules= and model_file=")
    if model is not None:
        modules = {serves: model}
    if modules is not None and serves not in modules:
        raise TypeError(f"save_bundle: serves={serves!r} is not one of the modules ({', '.join(modules)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if modules is not None:
            runtime, name = "torch", RUNTIMES["torch"]
            state = {
                f"{m}.{k}": v.detach().cpu().contiguous()
                for m, module in modules.items()
                for k, v in module.state_dict().items()
            }
            save_file(state, str(tmp / name), metadata={"format": BUNDLE_FORMAT})
        else:
            if model_file is None or model_file.suffix != ".onnx":
                raise TypeError(f"save_bundle: model_file must be an exported .onnx file; got {model_file}")
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
        write_profile(tmp, profile or {}, reference, weights_sha256=sha256_file(tmp / name))
        meta = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "torchkiln_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "task": task.kind,
            "model": cfg.model.name,
            "runtime": runtime,
            "modules": list(modules) if modules is not None else [serves],
            "serves": serves,
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
    :class:`~torchkiln.artifacts.runtime.OnnxModel` with the same call signature.

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
    serves = meta.get("serves") or task.train_module(cfg).serves
    if runtime == "onnxruntime":
        modules: dict[str, nn.Module] = {serves: OnnxModel(model_file)}
    else:
        modules = _torch_modules(path, cfg, task, meta, serves)
    for module in modules.values():
        module.eval()
    return Bundle(path, cfg, meta, task, modules[serves], state, files, serves, modules, read_profile(path))


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
    fix = (
        "Expected a JSON object with the bundle's format, version and SHA-256s. Restore the file, or retrain "
        "(or re-export) to rewrite it."
    )
    try:
        meta = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"Bundle '{path}': bundle.json is not valid JSON ({exc}). {fix}") from None
    if not isinstance(meta, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(meta), "a number"
        )
        raise BundleError(f"Bundle '{path}': bundle.json holds {kind}, not a JSON object. {fix}")
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


def _torch_modules(
    path: Path, cfg: RunConfig, task: Task, meta: dict[str, Any], serves: str
) -> dict[str, nn.Module]:
    """The bundle's modules, rebuilt from the config and loaded from ``model.safetensors``."""
    built = task.train_module(cfg).build_modules(without_pretrained(cfg))
    state = load_file(str(path / RUNTIMES["torch"]))
    if "modules" in meta:
        names = list(meta["modules"])
        parts = {n: {k[len(n) + 1 :]: v for k, v in state.items() if k.startswith(f"{n}.")} for n in names}
    else:  # written before named modules: the serving module's keys, unprefixed
        names, parts = [serves], {serves: state}
    unknown = [n for n in names if n not in built]
    if unknown:
        raise BundleError(
            f"Bundle '{path}' holds the module(s) {', '.join(unknown)}, which the '{cfg.task.kind}' task "
            f"does not build (it builds {', '.join(built)}). The bundle is inconsistent; retrain to "
            "rewrite it."
        )
    modules = {}
    for name in names:
        module = built[name]
        if name == serves and meta.get("pruning", {}).get("structured"):
            resize_to_state(module, parts[name])  # channel-pruned: narrower layers than the config's
        try:
            module.load_state_dict(parts[name], strict=True)
        except RuntimeError as exc:
            raise BundleError(
                f"Bundle '{path}': the weights of '{name}' do not fit the '{cfg.model.name}' architecture "
                f"in config.yaml ({str(exc).splitlines()[0]}). The bundle is inconsistent; retrain to "
                "rewrite it."
            ) from None
        modules[name] = module
    return modules


def init_from_bundle(modules: nn.ModuleDict, source: str | Path, cfg: RunConfig) -> list[str]:
    """Copy a bundle's weights into the new run's ``modules``: every tensor whose name and shape match.

    A tensor whose shape differs (a head for another number of classes) keeps its fresh initialisation;
    the returned notes name them. The bundle must hold the same architecture (``model.name``).

    Raises:
        BundleError: the bundle is broken, exported (no torch weights), of another task or architecture, or
            no tensor fits.

    Example:
        >>> notes = init_from_bundle(modules, "runs/xray/20261201-0900/bundle", cfg)
    """
    b = load_bundle(source)
    where = f"model.init_from '{source}'"
    if b.meta.get("runtime", "torch") != "torch":
        raise BundleError(
            f"{where} is an exported {b.meta['runtime']} bundle; a run starts from torch weights. Use the "
            f"trained bundle it came from: {b.meta.get('variant', {}).get('source', 'RUN_DIR/bundle')}."
        )
    if b.task.kind != cfg.task.kind or b.config.model.name != cfg.model.name:
        raise BundleError(
            f"{where} holds a {b.config.model.name} model of the {b.task.kind} task; this run trains a "
            f"{cfg.model.name} model of the {cfg.task.kind} task. Set model.name: {b.config.model.name}, "
            f"or start from a bundle of the same architecture."
        )
    loaded, kept = 0, []
    for name, module in modules.items():
        if name not in b.modules:
            continue
        own, theirs = module.state_dict(), b.modules[name].state_dict()
        fits = {k: v for k, v in theirs.items() if k in own and own[k].shape == v.shape}
        kept += [f"{name}.{k}" for k in own if k not in fits]
        module.load_state_dict(fits, strict=False)
        loaded += len(fits)
    if not loaded:
        raise BundleError(
            f"{where}: none of its tensors fits this run's model (different input channels or size?). "
            f"Start from a bundle trained on the same kind of input, or leave model.init_from out."
        )
    notes = [f"started from {b.path}: {loaded} tensors loaded"]
    if kept:
        notes.append(
            f"{len(kept)} tensor(s) of another shape start fresh: {', '.join(kept[:4])}"
            f"{', ...' if len(kept) > 4 else ''}"
        )
    return notes
