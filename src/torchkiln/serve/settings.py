"""Server settings: pydantic-settings, from (highest first) arguments, ``KILN_SERVE_*`` variables and YAML.

    # serve.yaml
    models:
      - uri: models:/fashion@champion        # or a bundle folder: runs/fashion/20261124-0800/bundle
        challenger: models:/fashion@challenger
        challenger_weight: 0.1                # A/B: 10 % of request keys go to the challenger
    max_batch_size: 32
    log_url: postgresql+psycopg://kiln@127.0.0.1/kiln

Nothing is read at import time; :func:`load_settings` does the reading and turns every problem into
one :class:`~torchkiln.core.errors.ServeError` that lists what to fix.
"""

from __future__ import annotations

import contextvars
import ipaddress
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from torchkiln.core.config import DEVICE_CHOICES, DEVICE_NAME, device_name
from torchkiln.core.config_io import format_errors
from torchkiln.core.errors import ServeError

SERVE_FIX = (
    "Fix the value in the serve YAML, the KILN_SERVE_* environment variable or the kiln serve option; "
    "docs/serving.md lists every setting."
)
_yaml_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("kiln_serve_yaml", default=None)


class ModelSpec(BaseModel):
    """One served model: its URL name, where it comes from, and how traffic is split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description="A bundle folder, or a registry URI: models:/NAME@ALIAS or models:/NAME/N.")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The name in /v1/models/{name}; default: the registry name or the run name.",
    )
    challenger: str | None = Field(None, description="A second model (URI) for A/B or shadow traffic.")
    challenger_weight: float = Field(0.0, ge=0.0, le=1.0, description="A/B share of request keys.")
    shadow: bool = Field(False, description="Mirror every request to the challenger; never return it.")

    @model_validator(mode="after")
    def _traffic(self) -> ModelSpec:
        if self.challenger is None and (self.challenger_weight > 0 or self.shadow):
            raise ValueError("challenger_weight and shadow need a challenger URI")
        if self.shadow and self.challenger_weight > 0:
            raise ValueError(
                "shadow mode sends every request to the challenger without returning its answer, so "
                "challenger_weight must be 0; pick A/B (challenger_weight > 0) or shadow"
            )
        return self


class ServeSettings(BaseSettings):
    """Everything ``kiln serve`` and :func:`~torchkiln.serve.app.create_app` need."""

    model_config = SettingsConfigDict(env_prefix="KILN_SERVE_", extra="forbid", frozen=True)

    models: list[ModelSpec] = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Processes; more than 1 runs gunicorn.")
    # Dynamic batching
    max_batch_size: int = Field(32, ge=1, le=4096, description="Inputs per model call, at most.")
    # 0 = take what is queued and go: while the model computes, the next batch fills by itself. Waiting
    # measured slower on the Fashion-MNIST CNN (docs/benchmarks.md); raise it for slow, bursty traffic.
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description="How long a batch waits to fill.")
    max_queue: int = Field(512, ge=1, description="Requests waiting per model; more get 429.")
    device: str = Field(
        "auto",
        description="Where torch bundles run: auto (CUDA when available), cpu, cuda or cuda:N. ONNX: CPU.",
    )
    model_threads: int = Field(
        1, ge=1, le=256, description="Intra-op threads of each model call (torch and ONNX Runtime)."
    )
    # Limits
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_items: int = Field(64, ge=1, description="Inputs per request; more get 422.")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="Per image; larger ones get 422.")
    request_timeout_s: float = Field(10.0, gt=0.0, description="Waiting longer gets 504.")
    action_timeout_s: float = Field(
        120.0, gt=0.0, description="A task action (stylize: seconds of optimization) taking longer gets 504."
    )
    header_timeout_s: float = Field(
        10.0, gt=0.0, description="A connection whose request head is not whole by then is closed."
    )
    body_timeout_s: float = Field(30.0, gt=0.0, description="A body not whole by then gets 408.")
    # Admin, registry, prediction log, metrics
    admin_token: SecretStr | None = Field(None, description="Bearer token for /admin/*; unset = off.")
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token for POST /v1/feedback; unset = anyone may send labels."
    )
    registry_uri: str | None = Field(
        None,
        description="MLflow tracking URI for models:/ URIs; default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///runs/mlflow.db (where kiln train and kiln registry write by default).",
    )
    registry_poll_s: float = Field(0.0, ge=0.0, description="Check registry aliases this often; 0 = off.")
    reload_timeout_s: float = Field(
        120.0, gt=0.0, description="With several workers, how long a reload waits for all of them."
    )
    log_url: str | None = Field(
        "sqlite:///runs/serve/predictions.db", description="SQLAlchemy URL of the prediction log; null = off."
    )
    log_payload_sample_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of bodies stored whole.")
    metrics: bool = Field(True, description="Serve Prometheus /metrics.")
    shutdown_timeout_s: float = Field(30.0, gt=0.0, description="How long SIGTERM waits for work in flight.")
    access_log: bool = False

    @field_validator("admin_token", "feedback_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return strong_token(v, (info.field_name or "token").replace("_", " "))

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, v: Any) -> Any:
        v = device_name(v)
        if isinstance(v, str) and not DEVICE_NAME.fullmatch(v):
            raise ValueError(f"expected {DEVICE_CHOICES}")  # the error adds "Got ..."
        return v

    @field_validator("log_url", mode="before")
    @classmethod
    def _log_off(cls, v: Any) -> Any:
        return None if isinstance(v, str) and v.strip().lower() in ("off", "none", "null", "") else v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return bind_address(v)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeSettings:
        names = [m.name for m in self.models if m.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; {', '.join(dupes)} appear more than once")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        path = _yaml_file.get()
        if path is not None:
            sources += (YamlConfigSettingsSource(settings_cls, yaml_file=path),)
        return sources


def strong_token(v: SecretStr | None, what: str) -> SecretStr | None:
    """A token of at least 16 characters, or None (off); shared by every server's settings."""
    if v is not None and len(v.get_secret_value()) < 16:
        raise ValueError(
            f"the {what} must have at least 16 characters; make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return v


def bind_address(v: str) -> str:
    """An address a server can bind: an IP address, 'localhost', or all interfaces (0.0.0.0, ::)."""
    if v not in ("localhost", "0.0.0.0", "::"):
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("host must be an IP address or 'localhost'") from None
    return v


def load_settings(config: str | Path | None = None, **values: Any) -> ServeSettings:
    """Settings from keyword values, then ``KILN_SERVE_*`` variables, then the YAML file ``config``.

    Args:
        config: an optional serve YAML file.
        values: settings given directly (CLI options); ``None`` values are left out.

    Returns:
        The validated, frozen settings.

    Raises:
        ServeError: the file is missing or not YAML, a key is unknown, or a value is unsafe or invalid.

    Example:
        >>> load_settings(models=[{"uri": "runs/fashion/latest/bundle"}], port=8080).port
        8080
    """
    path = Path(config) if config is not None else None
    if path is not None:
        if not path.is_file():
            raise ServeError(f"Serve config '{path}' does not exist. Check the path, or leave --config out.")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ServeError(f"Serve config '{path}' is not valid YAML: {exc}") from None
    token = _yaml_file.set(path)
    try:
        return ServeSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ServeError(
            format_errors(
                exc,
                ServeSettings,
                what="The serve settings are invalid",
                fix=SERVE_FIX,
                source="the settings",
            )
        ) from None
    finally:
        _yaml_file.reset(token)
