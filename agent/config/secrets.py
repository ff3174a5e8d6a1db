"""Secrets from the environment, an env file or systemd credentials: never from the YAML."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.core.errors import PlainError
from agent.sources.base import connection_env_name as connection_env_name


class MissingSecret(PlainError):
    """A secret the configuration needs is not set anywhere we look."""


class _ApiSecrets(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRODSMART_", extra="ignore")

    api_key: SecretStr
    api_secret: SecretStr


def _credential_file(name: str) -> str | None:
    """A systemd credential (LoadCredential=name:...), read from $CREDENTIALS_DIRECTORY."""
    folder = os.environ.get("CREDENTIALS_DIRECTORY")
    if not folder:
        return None
    path = Path(folder) / name
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def load_env_file(path: str) -> None:
    """Add the variables of an env file (KEY=value lines) that the environment does not set."""
    if not Path(path).is_file():
        raise MissingSecret(f"the env file {path} does not exist or is not readable")
    for key, value in dotenv_values(path).items():
        if value is not None:
            os.environ.setdefault(key, value)


def load_api_secrets() -> tuple[str, str]:
    """PRODSMART_API_KEY / PRODSMART_API_SECRET, from the environment or systemd credentials."""
    for name in ("api_key", "api_secret"):
        var = f"PRODSMART_{name.upper()}"
        if var not in os.environ:
            value = _credential_file(f"prodsmart_{name}")
            if value is not None:
                os.environ[var] = value
    try:
        settings = _ApiSecrets()
    except ValidationError as exc:
        missing = sorted({f"PRODSMART_{str(e['loc'][0]).upper()}" for e in exc.errors()})
        raise MissingSecret(
            f"{' and '.join(missing)} not set: put them in the environment, an env file "
            f"(--env-file) or systemd credentials (LoadCredential=prodsmart_api_key:...)"
        ) from None
    return settings.api_key.get_secret_value(), settings.api_secret.get_secret_value()


def redis_secrets() -> tuple[str | None, str | None]:
    """PRODSMART_REDIS_USERNAME / PRODSMART_REDIS_PASSWORD (both optional), from the environment
    or systemd credentials (prodsmart_redis_username, prodsmart_redis_password)."""
    found: list[str | None] = []
    for name in ("username", "password"):
        var = f"PRODSMART_REDIS_{name.upper()}"
        value = os.environ.get(var)
        found.append(value if value is not None else _credential_file(var.lower()))
    return found[0], found[1]


def connection_secret(connection: str, field: str) -> str | None:
    """A connection's secret (username, password...) from the environment or credentials."""
    value = os.environ.get(connection_env_name(connection, field))
    if value is not None:
        return value
    return _credential_file(connection_env_name(connection, field).lower())


CONSOLE_TOKEN = "PRODSMART_EDGE_CONSOLE_TOKEN"


def console_token() -> str | None:
    """The token the browser console needs on a non-loopback listener (environment, env file
    loaded before, or the systemd credential `prodsmart_edge_console_token`); None if unset."""
    value = os.environ.get(CONSOLE_TOKEN)
    if value is None:
        value = _credential_file(CONSOLE_TOKEN.lower())
    return value.strip() or None if value is not None else None
