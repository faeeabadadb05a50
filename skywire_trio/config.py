"""Service configuration: read from the environment once, validated, passed down.

Nothing else in the package reads ``os.environ``; every component receives the
``Settings`` it needs as an argument.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DEV_TOKEN_SALT = "skywire-dev-salt"
DEFAULT_RELAY_URL = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"


class ConfigError(ValueError):
    """A configuration value was refused; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the service, with defaults that work on a laptop."""

    # None: start the embedded PostgreSQL (pgserver) with its data in ``data_dir``.
    database_url: str | None = None
    data_dir: Path = Path("var")
    environment: str = "development"  # or "production": JSON logs, no default secrets
    relay_url: str = DEFAULT_RELAY_URL
    host: str = "127.0.0.1"
    port: int = 4000
    retention_days: int = 7
    premake_days: int = 4
    # Batcher: flush at this many events or this many seconds after the first one.
    batch_size: int = 500
    batch_interval: float = 0.1
    # Reader -> batcher channel, counted in frames (one frame = one commit = up to 200 ops).
    buffer_frames: int = 2000
    # How long the reader may stay blocked on a full buffer before ingest is restarted.
    overflow_grace: float = 10.0
    # A socket that delivers nothing for this long is treated as dead.
    read_timeout: float = 30.0
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    # After this long without a failure, the next failure starts again at backoff_min.
    healthy_after: float = 60.0
    deadletter_dir: Path = Path("var/deadletter")
    # Accept a cursor recorded for a different upstream by resetting it.
    reset_cursor: bool = False
    # Key of the HMAC under which API tokens are stored. The default is for development.
    api_token_salt: str = DEV_TOKEN_SALT
    api_pool_size: int = 4
    # /health answers 503 after the upstream is disconnected, or buffered work sits without
    # a commit, for this long.
    stall_seconds: float = 60.0
    # How often the partition manager runs a maintenance pass.
    partition_interval: float = 3600.0

    @property
    def subscribe_url(self) -> str:
        """The full subscribeRepos URL (the path is added when the relay URL has none)."""
        parts = urlsplit(self.relay_url)
        if parts.path in ("", "/"):
            return self.relay_url.rstrip("/") + SUBSCRIBE_PATH
        return self.relay_url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in the form SQLAlchemy + psycopg 3 expect (used by alembic)."""
        if self.database_url is None:
            raise ValueError("the embedded database has not been started")
        return "postgresql+psycopg://" + self.database_url.split("://", 1)[1]

    def masked(self) -> dict[str, str]:
        """The effective configuration as text, secrets masked (``config`` command)."""
        shown = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "api_token_salt":
                value = "(development default)" if value == DEV_TOKEN_SALT else "********"
            elif field.name == "database_url":
                value = "(embedded PostgreSQL)" if value is None else _mask_password(value)
            shown[field.name] = str(value)
        return shown


def _mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
    return parts._replace(netloc=netloc).geturl()


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float,
           maximum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _host(env: Mapping[str, str]) -> str:
    value = env.get("HOST") or "127.0.0.1"
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]{1,255}", value):
        raise ConfigError(f"HOST must be a host name or IP address, got {value[:200]!r}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, default: str | None,
         schemes: tuple[str, ...]) -> str | None:
    value = env.get(name) or default
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        shown = _mask_password(value) if parts.scheme else value[:200]
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL with a host, "
                          f"got {shown!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value[:200]!r}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build validated ``Settings`` from an environment mapping (``os.environ`` by default)."""
    env = os.environ if env is None else env
    settings = Settings(
        database_url=_url(env, "DATABASE_URL", None, ("postgresql", "postgres")),
        data_dir=Path(env.get("SKYWIRE_DATA_DIR") or "var"),
        environment=_choice(env, "SKYWIRE_ENV", "development", ("development", "production")),
        relay_url=_url(env, "SKYWIRE_RELAY_URL", DEFAULT_RELAY_URL, ("ws", "wss")) or "",
        host=_host(env),
        port=_int(env, "PORT", 4000, 0, 65535),
        retention_days=_int(env, "SKYWIRE_RETENTION_DAYS", 7, 1, 3650),
        premake_days=_int(env, "SKYWIRE_PREMAKE_DAYS", 4, 1, 90),
        batch_size=_int(env, "SKYWIRE_BATCH_SIZE", 500, 1, 100_000),
        batch_interval=_float(env, "SKYWIRE_BATCH_INTERVAL", 0.1, 0.001, 60.0),
        buffer_frames=_int(env, "SKYWIRE_BUFFER_FRAMES", 2000, 1, 1_000_000),
        overflow_grace=_float(env, "SKYWIRE_OVERFLOW_GRACE", 10.0, 0.01, 3600.0),
        read_timeout=_float(env, "SKYWIRE_READ_TIMEOUT", 30.0, 0.1, 3600.0),
        backoff_min=_float(env, "SKYWIRE_BACKOFF_MIN", 1.0, 0.01, 600.0),
        backoff_max=_float(env, "SKYWIRE_BACKOFF_MAX", 60.0, 0.01, 3600.0),
        healthy_after=_float(env, "SKYWIRE_HEALTHY_AFTER", 60.0, 0.1, 3600.0),
        deadletter_dir=Path(env.get("SKYWIRE_DEADLETTER_DIR") or "var/deadletter"),
        reset_cursor=_bool(env, "SKYWIRE_RESET_CURSOR"),
        api_token_salt=env.get("API_TOKEN_SALT") or Settings.api_token_salt,
        api_pool_size=_int(env, "SKYWIRE_API_POOL_SIZE", 4, 1, 100),
        stall_seconds=_float(env, "SKYWIRE_STALL_SECONDS", 60.0, 1.0, 86400.0),
        partition_interval=_float(env, "SKYWIRE_PARTITION_INTERVAL", 3600.0, 1.0, 86400.0),
    )
    if settings.backoff_max < settings.backoff_min:
        raise ConfigError("SKYWIRE_BACKOFF_MAX must not be smaller than SKYWIRE_BACKOFF_MIN")
    if settings.environment == "production":
        if settings.api_token_salt == DEV_TOKEN_SALT or len(settings.api_token_salt) < 32:
            raise ConfigError("API_TOKEN_SALT must be set to a secret of at least 32 characters "
                              "when SKYWIRE_ENV=production (e.g. `openssl rand -hex 32`)")
        if settings.database_url is None:
            raise ConfigError("DATABASE_URL must be set when SKYWIRE_ENV=production "
                              "(the embedded PostgreSQL is for development)")
    return settings
