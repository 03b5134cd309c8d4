"""The one error hierarchy of torchkiln.

Every message answers three questions: what happened, what was expected, and how to fix it.
The CLI prints a :class:`KilnError` without a traceback and exits with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KilnError(Exception):
    """Base class of every error torchkiln raises on purpose."""


class ConfigError(KilnError):
    """The run config (YAML or ``--set``) is invalid."""


class RegistryError(KilnError):
    """A name is unknown to a registry, or registered twice."""


class DataError(KilnError):
    """The data cannot be read, or breaks a rule (corrupt file, unknown label, ...)."""


class CheckpointError(KilnError):
    """A checkpoint or run directory cannot be resumed from."""


class BundleError(KilnError):
    """A bundle is missing files, is from another version, or is corrupt."""


class PredictError(KilnError):
    """An input handed to a predictor cannot be used."""


class ExportError(KilnError):
    """A model cannot be exported, quantized or pruned (unsupported operator, bad calibration data...)."""


class ServeError(KilnError):
    """The model server cannot start or serve as configured."""


class TuneError(KilnError):
    """A study could not run to its end (a worker process stopped)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 1) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice (or ``n`` choices), or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
