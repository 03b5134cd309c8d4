"""Dashboard settings: from (highest first) arguments and ``KILN_DASHBOARD_*`` variables.

    kiln dashboard --log-url sqlite:///runs/serve/predictions.db --server http://127.0.0.1:8000

The dashboard reads the prediction log, the registry and the run folders and never writes to them. Its
two write actions (a feedback label, a rollback) go through the running server's HTTP API (``server``),
with the server's tokens. It binds 127.0.0.1 by default; on any other address it needs its own ``token``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from torchkiln.core.config_io import format_errors
from torchkiln.core.errors import ServeError
from torchkiln.serve.settings import bind_address, strong_token

FIX = "Fix the kiln dashboard option or the KILN_DASHBOARD_* variable; docs/dashboard.md lists every setting."
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class DashboardSettings(BaseSettings):
    """Everything ``kiln dashboard`` and :func:`~torchkiln.dashboard.app.create_dashboard` need."""

    model_config = SettingsConfigDict(env_prefix="KILN_DASHBOARD_", extra="forbid", frozen=True)

    log_url: str = Field(description="SQLAlchemy URL of the prediction log kiln serve writes.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else RUNS_DIR/mlflow.db.",
    )
    runs_dir: Path = Field(Path("runs"), description="The run folders (kiln train's runs_dir).")
    server: str | None = Field(
        None,
        description="The running kiln serve (http://127.0.0.1:8000): labels, rollback, traffic, metrics.",
    )
    admin_token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("admin_token", "KILN_DASHBOARD_ADMIN_TOKEN", "KILN_ADMIN_TOKEN"),
        description="The server's admin token, for the rollback ($KILN_ADMIN_TOKEN).",
    )
    feedback_token: SecretStr | None = Field(None, description="The server's feedback token, if it has one.")
    token: SecretStr | None = Field(
        None, description="The dashboard's own token; required when it binds beyond loopback."
    )
    host: str = "127.0.0.1"
    port: int = Field(8050, ge=0, le=65535)
    page_size: int = Field(50, ge=1, le=500, description="Rows per page of the live view.")
    poll_s: float = Field(2.0, gt=0, le=60, description="How often the live view asks for new rows.")

    @field_validator("token")
    @classmethod
    def _strong(cls, v: SecretStr | None) -> SecretStr | None:
        return strong_token(v, "dashboard token")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return bind_address(v)

    @field_validator("server")
    @classmethod
    def _server(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("server must be an http:// or https:// URL, e.g. http://127.0.0.1:8000")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> DashboardSettings:
        if self.host not in LOOPBACK and self.token is None:
            raise ValueError(
                f"the dashboard binds {self.host}, beyond loopback, so it needs a token: set "
                "KILN_DASHBOARD_TOKEN (16 characters or more), or bind 127.0.0.1"
            )
        return self


def load_dashboard_settings(**values: Any) -> DashboardSettings:
    """Settings from keyword values (None left out), then ``KILN_DASHBOARD_*`` variables.

    Raises:
        ServeError: a value is missing, unknown, unsafe or invalid (all of them listed).

    Example:
        >>> load_dashboard_settings(log_url="sqlite:///runs/serve/predictions.db").port
        8050
    """
    try:
        return DashboardSettings(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ServeError(
            format_errors(
                exc,
                DashboardSettings,
                what="The dashboard settings are invalid",
                fix=FIX,
                source="the settings",
            )
        ) from None
