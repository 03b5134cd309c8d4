"""The lowest layer: config base, registry, errors, io, version."""
