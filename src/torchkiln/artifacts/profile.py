"""A bundle's profile: ``profile.json`` and the reference sample in ``reference.safetensors``.

    profile.json            {"format": "torchkiln-profile", "version": 1, <section>: {...}}. Sections:
                            "raw", the train inputs' form before preprocessing (checked at predict time);
                            "reference", the metadata of the reference sample below
    reference.safetensors   a sample of the held-out split (``evaluate.reference``), one row per item:
                              summary         (N, S) float32  the numeric fields of task.summarize_inputs,
                                                              named by the section's summary_columns
                              <signal>        (N,)            what the outputs say (the section's signals):
                                                              predicted int64 and confidence float32 for a
                                                              classifier; forecast_level, forecast_spread
                              embedding       (N, k) float32  penultimate features, projected by PCA
                              pca_mean        (D,) float32    the projection, so that live features are
                              pca_components  (k, D) float32  projected the same way: (f - mean) @ comp.T
                              index           (N,) int64      each item's position in the split

Safetensors holds plain arrays only: nothing is unpickled. ``tasks/reference.py`` builds the sample.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from torchkiln.core._version import __version__
from torchkiln.core.errors import BundleError
from torchkiln.core.io import atomic_write_text, sha256_file

PROFILE_FILE = "profile.json"
PROFILE_FORMAT, PROFILE_VERSION = "torchkiln-profile", 1
REFERENCE_FILE = "reference.safetensors"
REFERENCE_FORMAT = "torchkiln-reference"


@dataclass(frozen=True)
class Reference:
    """A reference sample: ``meta`` is profile.json's ``reference`` section, ``arrays`` the file's arrays.

    Example:
        >>> ref = load_bundle("runs/x/bundle").reference()
        >>> ref.arrays["embedding"].shape, ref.meta["summary_columns"]
        ((2000, 16), ['mean', 'std', 'channel_means[0]'])
    """

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, D)`` -> embeddings ``(B, k)`` with the stored PCA (on the CPU)."""
        return project(features, self.arrays["pca_mean"], self.arrays["pca_components"])


def fit_projection(features: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, float]:
    """PCA of ``features (N, D)`` to at most ``dims`` components.

    Returns ``(mean (D,), components (k, D), explained)``: ``k`` is ``dims``, or fewer when the sample
    spans fewer directions (at most N - 1: the others would be arbitrary, not reproducible), and at least
    1; ``explained`` is the share of variance the k components keep. Features of at most ``dims``
    dimensions are kept as they are (an identity projection, mean 0). Each component's sign is fixed (its
    largest entry positive), so the same features always give the same projection.
    """
    d = features.shape[1]
    if d <= dims:
        return np.zeros(d, np.float32), np.eye(d, dtype=np.float32), 1.0
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt: (min(N, D), D)
    rank = int((s > s.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps).sum())
    k = max(1, min(dims, rank))
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    total = float((s**2).sum())
    explained = float((s[:k] ** 2).sum() / total) if total > 0 else 1.0
    return mean.astype(np.float32), comps.astype(np.float32), round(explained, 4)


def project(features: torch.Tensor, mean: np.ndarray, components: np.ndarray) -> torch.Tensor:
    """``(features - mean) @ components.T`` in float32 on the CPU: ``(B, D)`` -> ``(B, k)``."""
    f = features.detach().float().cpu()
    if f.shape[1:] != mean.shape:
        raise BundleError(
            f"The features have {f.shape[1]} dimensions; the reference's projection takes {mean.shape[0]}. "
            f"The reference was built with another model: rebuild it with kiln monitor profile BUNDLE "
            f"--overwrite."
        )
    return (f - torch.from_numpy(mean)) @ torch.from_numpy(components).T


def no_reference_message(path: Path) -> str:
    return (
        f"Bundle '{path}' has no reference profile: its profile.json has no 'reference' section (the bundle "
        f"was written before reference profiles, or trained with evaluate.reference.split: none). Drift "
        f"monitoring compares live traffic with that profile of held-out data. Build one with: "
        f"kiln monitor profile {path} --split val"
    )


def read_reference(path: Path, section: Mapping[str, Any] | None) -> Reference:
    """The reference sample of the bundle at ``path``; ``section`` is profile.json's ``reference`` section.

    Raises:
        BundleError: the bundle has no reference (the message gives the command that builds one), or its
            ``reference.safetensors`` is missing, changed or unreadable.
    """
    if not section:
        raise BundleError(no_reference_message(path))
    file, split = path / REFERENCE_FILE, section.get("split", "val")
    rebuild = f"rebuild it with: kiln monitor profile {path} --split {split} --overwrite"
    if not file.is_file():
        raise BundleError(
            f"Bundle '{path}': profile.json describes a reference sample, but {REFERENCE_FILE} is missing. "
            f"Restore the file, or {rebuild}"
        )
    if sha256_file(file) != section.get("sha256"):
        raise BundleError(
            f"Bundle '{path}': {REFERENCE_FILE} does not match the SHA-256 in profile.json (the file was "
            f"changed or truncated). Restore it, or {rebuild}"
        )
    try:
        arrays = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise BundleError(
            f"Bundle '{path}': {REFERENCE_FILE} is not readable ({exc}). Restore it, or {rebuild}"
        ) from None
    missing = [
        k
        for k in ("summary", "embedding", "pca_mean", "pca_components", *section.get("signals", ()))
        if k not in arrays
    ]
    if missing:
        raise BundleError(
            f"Bundle '{path}': {REFERENCE_FILE} lacks {', '.join(missing)}. Restore it, or {rebuild}"
        )
    return Reference(dict(section), arrays)


def read_profile(path: Path) -> dict[str, Any]:
    """``profile.json``'s sections (``{}`` when the bundle has none: it was written before profiles).

    Raises:
        BundleError: the file is not a JSON object of this format, or of a newer version.
    """
    file = path / PROFILE_FILE
    if not file.is_file():
        return {}
    fix = "Restore the file or delete it (the bundle then checks no inputs), or retrain to rewrite it."
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"Bundle '{path}': {PROFILE_FILE} is not valid JSON ({exc}). {fix}") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise BundleError(
            f"Bundle '{path}': {PROFILE_FILE} is not a torchkiln input profile (expected a JSON object with "
            f'"format": "{PROFILE_FORMAT}"). {fix}'
        )
    if not isinstance(data.get("version"), int) or data["version"] > PROFILE_VERSION:
        raise BundleError(
            f"Bundle '{path}': {PROFILE_FILE} has version {data.get('version')!r}; this torchkiln "
            f"({__version__}) reads version {PROFILE_VERSION} and older. Load it with the torchkiln that "
            f"wrote it, or delete the file."
        )
    return {k: v for k, v in data.items() if k not in ("format", "version")}


def write_profile(
    folder: Path, sections: Mapping[str, Any], reference: Reference | None, *, weights_sha256: str
) -> None:
    """Write ``profile.json`` (and ``reference.safetensors`` with ``reference``) into ``folder``.

    The ``reference`` section comes from ``reference`` alone (one in ``sections`` is dropped), with the
    file's SHA-256 and the model it was computed with: its own ``weights_sha256`` when it has one (an export
    keeps its source's), else ``weights_sha256``. Empty sections are left out; no section, no file.
    """
    out = {k: v for k, v in sections.items() if v and k != "reference"}
    if reference is not None:
        tmp = _write_arrays(folder, reference.arrays)
        os.replace(tmp, folder / REFERENCE_FILE)
        sha = reference.meta.get("weights_sha256") or weights_sha256
        out["reference"] = {
            **reference.meta,
            "model_version": sha[:12],
            "weights_sha256": sha,
            "file": REFERENCE_FILE,
            "sha256": sha256_file(folder / REFERENCE_FILE),
        }
    if out:
        head = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION}
        atomic_write_text(folder / PROFILE_FILE, json.dumps(head | out, indent=2))


def replace_reference(path: Path, reference: Reference, *, weights_sha256: str) -> None:
    """Put ``reference`` into the existing bundle at ``path``, keeping profile.json's other sections.

    The arrays are renamed into place first, then profile.json (which names their SHA-256): a crash between
    the two leaves a mismatch that loading reports, never a half-written file.
    """
    write_profile(path, read_profile(path), reference, weights_sha256=weights_sha256)


def _write_arrays(folder: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{REFERENCE_FILE}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            name,
            metadata={"format": REFERENCE_FORMAT},
        )
        tmp.chmod(0o644)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
