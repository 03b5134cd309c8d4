"""Run configuration: schema, loading, overrides."""

from torchkiln.config.loader import apply_override, dump_config, load_config, validate
from torchkiln.config.schema import RunConfig

__all__ = ["RunConfig", "apply_override", "dump_config", "load_config", "validate"]
