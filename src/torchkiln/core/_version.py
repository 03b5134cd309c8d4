"""torchkiln's version, here so that low modules (bundles, the server) need not import the package root."""

from __future__ import annotations

__version__ = "0.1.0"  # keep equal to [project] version in pyproject.toml
