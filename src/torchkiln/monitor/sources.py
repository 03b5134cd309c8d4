"""Which bundle holds the reference profile of a logged model version.

The prediction log records a version id per row: a registry version number (``"3"``) when the server
loaded ``models:/NAME@ALIAS`` or ``models:/NAME/3``, or a bundle's ``weights_sha256[:12]`` when it loaded a
folder. ``kiln monitor`` maps a version to its bundle in this order:

1. a bundle passed on the command line (the target, or ``--bundle``) whose weights_sha256[:12] is the
   version; a bundle target with ``--version V`` is the reference of version V whatever its id;
2. a version number: the registry's ``models:/MODEL/VERSION`` (the served name taken as the registered
   name), downloaded to the registry cache as ``kiln serve`` does;
3. otherwise a :class:`~torchkiln.core.errors.ServeError` that says to pass ``--bundle``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torchkiln.artifacts.bundle import Bundle, load_bundle
from torchkiln.core.errors import ServeError


def bundle_version(bundle: Bundle) -> str:
    """The version id a server logs for a bundle loaded from its folder: weights_sha256[:12]."""
    return str(bundle.meta.get("weights_sha256") or "unknown")[:12]


def is_bundle_path(target: str) -> bool:
    """Whether ``target`` names a folder (a bundle, or a run directory holding ``bundle/``), not a model."""
    return Path(target).is_dir()


@dataclass
class Bundles:
    """Finds (and loads once) the bundle of each logged version.

    Attributes:
        given: bundles named on the command line.
        pinned: version -> bundle, for a bundle target with an explicit ``--version``.
        tracking_uri: the registry for numeric versions (None: the default store).
    """

    given: Sequence[Bundle] = ()
    pinned: dict[str, Bundle] = field(default_factory=dict)
    tracking_uri: str | None = None
    _cache: dict[tuple[str, str], Bundle] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], *, tracking_uri: str | None = None) -> Bundles:
        return cls(given=[load_bundle(p) for p in paths], tracking_uri=tracking_uri)

    def find(self, model: str, version: str) -> Bundle:
        """The bundle whose reference ``version`` of ``model`` is compared with.

        Raises:
            ServeError: no given bundle has this version and it is not a registry version number (or the
                registry does not have it).
            BundleError: the bundle is broken.
        """
        if version in self.pinned:
            return self.pinned[version]
        for b in self.given:
            if bundle_version(b) == version:
                return b
        key = (model, version)
        if key not in self._cache:
            self._cache[key] = self._from_registry(model, version)
        return self._cache[key]

    def _from_registry(self, model: str, version: str) -> Bundle:
        if not version.isdigit():
            raise ServeError(
                f"Version {version} of '{model}' was served from a bundle folder (its id is the weights' "
                f"SHA-256 prefix), and no bundle given here has it. Expected the bundle it was served from; "
                f"pass it with --bundle PATH (or as the target: kiln monitor report PATH --log-url ...)."
            )
        from torchkiln.serve.registry import resolve_model_uri  # mlflow loads only when needed

        resolved = resolve_model_uri(f"models:/{model}/{version}", tracking_uri=self.tracking_uri)
        return load_bundle(resolved.path)
