"""Service configuration: read from the environment once, validated, passed down.

Nothing else in the package reads ``os.environ``; every component receives the
``Settings`` it needs as an argument.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/skywire"
DEFAULT_RELAY_URL = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"


class ConfigError(ValueError):
    """A configuration value was refused; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the service, with defaults that work on a laptop."""

    database_url: str = DEFAULT_DATABASE_URL
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
    # Frames the spec allows are <= 5 MB; the websocket accepts more so that an oversized
    # frame reaches the decoder, which saves it to the dead-letter directory instead of the
    # connection failing on it forever.
    max_frame_bytes: int = 5 * 1024 * 1024
    deadletter_dir: Path = Path("var/deadletter")
    # Accept a cursor recorded for a different upstream by resetting it.
    reset_cursor: bool = False
    # Key of the HMAC under which API tokens are stored. The default is for development.
    api_token_salt: str = "skywire-dev-salt"
    api_pool_size: int = 4
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
        scheme, rest = self.database_url.split("://", 1)
        return f"postgresql+psycopg://{rest}"


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


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _url(env: Mapping[str, str], name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env.get(name) or default
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL with a host, got {value!r}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build validated ``Settings`` from an environment mapping (``os.environ`` by default)."""
    env = os.environ if env is None else env
    settings = Settings(
        database_url=_url(env, "DATABASE_URL", DEFAULT_DATABASE_URL, ("postgresql", "postgres")),
        relay_url=_url(env, "SKYWIRE_RELAY_URL", DEFAULT_RELAY_URL, ("ws", "wss")),
        host=env.get("HOST") or "127.0.0.1",
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
        partition_interval=_float(env, "SKYWIRE_PARTITION_INTERVAL", 3600.0, 1.0, 86400.0),
    )
    if settings.backoff_max < settings.backoff_min:
        raise ConfigError("SKYWIRE_BACKOFF_MAX must not be smaller than SKYWIRE_BACKOFF_MIN")
    return settings
