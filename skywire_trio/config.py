"""Service configuration: read from the environment once, validated, passed down.

Nothing else in the package reads ``os.environ``; every component receives the
``Settings`` it needs as an argument.

Each setting is declared once, as a field of ``Settings`` made by one of the declaration
helpers below (``integer``, ``seconds``, ``flag``, ``path``, ``url``, ``choice``, ``text``):
its name, environment variable, type, default, bounds and description live there and
nowhere else. ``from_env``, the ``config`` command, docs/configuration.md's table and the
README's short table are all derived from these declarations (tests/test_config.py checks
the documents). To add a setting, add one field; then regenerate the docs' table with
``python -m skywire_trio config --markdown``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEV_TOKEN_SALT = "skywire-dev-salt"
DEFAULT_RELAY_URL = "wss://bsky.network"
SUBSCRIBE_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
ROLES = ("all", "ingest", "api", "publisher")
_SPEC = "skywire_setting"  # key of a declaration in a dataclass field's metadata
# SKYWIRE_* variables read by tools around the service, not by it (no warning for them).
NOT_SETTINGS = frozenset({"SKYWIRE_URL", "SKYWIRE_TOKEN", "SKYWIRE_SHARED",
                          "SKYWIRE_SCREENSHOT"})


class ConfigError(ValueError):
    """A configuration value was refused; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """How one setting is read from the environment and how it is documented."""

    env: str
    doc: str
    # Text -> value; raises ValueError("must be ...") for a bad value (the variable's name is
    # put in front by from_env). Never called for an unset or empty variable: that is the
    # default.
    parse: Callable[[str], Any]
    accepted: str  # what parse accepts, for the docs
    default_text: str  # the default as the docs show it (markdown)
    mask: Callable[[Any], str] | None = None  # for secrets in the ``config`` output
    common: bool = False  # also listed in the README's short table


def _declare(default: Any, spec: Spec) -> Any:
    # A masked setting stays out of repr(): a logged Settings must not leak a secret.
    return dataclasses.field(default=default, repr=spec.mask is None, metadata={_SPEC: spec})


def _number(value: float) -> str:
    return f"{value:.15g}"


def _integer_parser(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer, got {raw[:200]!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value
    return parse


def _seconds_parser(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number of seconds, got {raw[:200]!r}") from None
        if math.isnan(value) or not low <= value <= high:
            raise ValueError(f"must be between {_number(low)} and {_number(high)}, got {raw!r}")
        return value
    return parse


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"must be true or false, got {raw[:200]!r}")


def integer(env: str, default: int, low: int, high: int, doc: str, *,
            common: bool = False) -> int:
    """An integer setting between ``low`` and ``high``."""
    return _declare(default, Spec(env, doc, _integer_parser(low, high), f"{low}-{high}",
                                  f"`{default}`", common=common))


def seconds(env: str, default: float, low: float, high: float, doc: str, *,
            common: bool = False) -> float:
    """A duration in seconds between ``low`` and ``high``."""
    return _declare(default, Spec(env, doc, _seconds_parser(low, high),
                                  f"{_number(low)}-{_number(high)} s", f"`{_number(default)}`",
                                  common=common))


def flag(env: str, doc: str, *, common: bool = False) -> bool:
    """A boolean setting, false unless set."""
    return _declare(False, Spec(env, doc, _flag, "true/false/1/0/yes/no", "`false`",
                                common=common))


def path(env: str, default: str, doc: str, *, common: bool = False) -> Path:
    """A filesystem path."""
    return _declare(Path(default), Spec(env, doc, Path, "path", f"`{default}`", common=common))


def mask_password(url: str) -> str:
    """``url`` with its password, if any, replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":********@")
    return parts._replace(netloc=netloc).geturl()


def url(env: str, default: str | None, schemes: tuple[str, ...], doc: str, *,
        default_text: str | None = None, common: bool = False, socket: bool = False) -> Any:
    """A URL with one of ``schemes`` and a host; its password is masked when shown.

    ``socket``: the host may be left out (libpq's Unix socket, as in
    ``postgresql:///db?host=/run/postgresql``).
    """
    where = "a host, or none for a Unix socket" if socket else "a host"

    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.hostname or socket):
            shown = mask_password(raw) if parts.scheme else raw[:200]
            raise ValueError(f"must be a {' or '.join(schemes)} URL with {where}, "
                             f"got {shown!r}")
        return raw

    accepted = " or ".join(f"`{s}://`" for s in schemes) + f" URL with {where}"
    return _declare(default, Spec(
        env, doc, parse, accepted, default_text or f"`{default}`",
        mask=lambda value: "(unset)" if value is None else mask_password(value),
        common=common))


def choice(env: str, default: str, choices: tuple[str, ...], doc: str, *,
           common: bool = False) -> str:
    """One of a fixed set of words."""
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw[:200]!r}")
        return raw

    return _declare(default, Spec(env, doc, parse, ", ".join(f"`{c}`" for c in choices),
                                  f"`{default}`", common=common))


def text(env: str, default: str, doc: str, *, pattern: str | None = None,
         accepted: str = "any text", default_text: str | None = None,
         mask: Callable[[Any], str] | None = None, common: bool = False) -> str:
    """Free text, optionally restricted to a regular expression (``accepted`` says which)."""
    def parse(raw: str) -> str:
        if pattern is not None and not re.fullmatch(pattern, raw):
            raise ValueError(f"must be {accepted}, got {raw[:200]!r}")
        return raw

    return _declare(default, Spec(env, doc, parse, accepted, default_text or f"`{default}`",
                                  mask=mask, common=common))


def url_list(env: str, schemes: tuple[str, ...], doc: str, *,
             common: bool = False) -> tuple[str, ...]:
    """Zero or more URLs, comma-separated, each with one of ``schemes`` and a host."""
    def parse(raw: str) -> tuple[str, ...]:
        urls = tuple(u.strip() for u in raw.split(",") if u.strip())
        for value in urls:
            parts = urlsplit(value)
            if parts.scheme not in schemes or not parts.hostname:
                shown = mask_password(value) if parts.scheme else value[:200]
                raise ValueError(f"must be {' or '.join(schemes)} URLs with a host, separated "
                                 f"by commas; got {shown!r}")
        return urls

    accepted = ("one or more " + " or ".join(f"`{s}://`" for s in schemes)
                + " URLs with a host, comma-separated")
    return _declare((), Spec(env, doc, parse, accepted, "unset (off)",
                             mask=lambda value: ",".join(mask_password(u) for u in value)
                             or "(unset)", common=common))


def _mask_salt(value: str) -> str:
    return "(development default)" if value == DEV_TOKEN_SALT else "********"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every knob of the service, with defaults that work on a laptop (one field each)."""

    database_url: str | None = url(
        "DATABASE_URL", None, ("postgresql", "postgres"),
        "the log's database; created if missing, migrated on start. Unset: an embedded "
        "PostgreSQL (pgserver) in `SKYWIRE_DATA_DIR/pgdata` (refused in production)",
        default_text="unset", common=True, socket=True)
    data_dir: Path = path("SKYWIRE_DATA_DIR", "var",
                          "where the embedded PostgreSQL keeps its data (`pgdata` inside)")
    environment: str = choice(
        "SKYWIRE_ENV", "development", ("development", "production"),
        "`production`: JSON log lines, and `API_TOKEN_SALT` and `DATABASE_URL` must be set",
        common=True)
    api_token_salt: str = text(
        "API_TOKEN_SALT", DEV_TOKEN_SALT,
        "HMAC key under which tokens are stored; changing it invalidates all tokens",
        accepted="any; 32+ characters in production", default_text="development default",
        mask=_mask_salt, common=True)
    host: str = text("HOST", "127.0.0.1", "API listen address",
                     pattern=r"[A-Za-z0-9.:\-\[\]]{1,255}", accepted="a host name or IP address",
                     common=True)
    port: int = integer("PORT", 4000, 0, 65535, "API listen port (0: any free port)",
                        common=True)
    api_pool_size: int = integer("SKYWIRE_API_POOL_SIZE", 4, 1, 100,
                                 "database connections for the API")
    stall_seconds: float = seconds(
        "SKYWIRE_STALL_SECONDS", 60.0, 1.0, 86400.0,
        "`/health` says 503 `stalled` after the upstream is disconnected this long, or "
        "frames received from it wait this long for a commit (across ingest restarts: a "
        "crash loop is a stall)")
    subscribe_max_connections: int = integer(
        "SKYWIRE_SUBSCRIBE_MAX_CONNECTIONS", 2000, 1, 100_000,
        "`/subscribe` websockets open at once; more are answered 503 `too_many_subscribers`")
    subscribe_max_lag: float = seconds(
        "SKYWIRE_SUBSCRIBE_MAX_LAG", 120.0, 0.1, 86400.0,
        "a `/subscribe` client that has been live is closed (4408 `consumer_too_slow`) when "
        "the event being sent to it was committed longer ago than this")
    subscribe_stall_seconds: float = seconds(
        "SKYWIRE_SUBSCRIBE_STALL_SECONDS", 30.0, 0.1, 3600.0,
        "... or when one write to it (at most 256 events, about 64 KiB) waits this long")
    subscribe_buffer: int = integer(
        "SKYWIRE_SUBSCRIBE_BUFFER", 64, 1, 100_000,
        "committed batches a live `/subscribe` client may have waiting; past it, it reads "
        "pages from the log until it catches up")
    subscribe_token_recheck: float = seconds(
        "SKYWIRE_SUBSCRIBE_TOKEN_RECHECK", 60.0, 0.1, 86400.0,
        "how often an open `/subscribe` connection checks that its token was not revoked "
        "(4401 when it was)")
    max_connections: int = integer(
        "SKYWIRE_MAX_CONNECTIONS", 4000, 1, 1_000_000,
        "open HTTP connections at once, `/subscribe` websockets and long-polls included; at "
        "the cap a new one displaces the longest-idle one, and when all are busy it gets a "
        "503. Lowered to fit the open-file limit")
    keep_alive_timeout: float = seconds(
        "SKYWIRE_KEEP_ALIVE_TIMEOUT", 75.0, 0.1, 3600.0,
        "an idle keep-alive connection is closed after this long (longer than common "
        "clients' own idle timeouts, so that the client usually closes first)")
    shutdown_grace: float = seconds(
        "SKYWIRE_SHUTDOWN_GRACE", 10.0, 0.0, 3600.0,
        "on SIGTERM, how long requests in flight and the last batch may take before the "
        "rest is cancelled")
    relay_url: str = url(
        "SKYWIRE_RELAY_URL", DEFAULT_RELAY_URL, ("ws", "wss"),
        "upstream; the subscribeRepos path is added when the URL has none", common=True)
    # 2,000: each batch has a fixed cost (six round trips, a commit), and with small frames
    # (a PDS's) 500-event batches spent more time on it than on rows: 100,000 reference-PDS
    # frames went from 17.4k to 21.7k frames/s. Peak RSS 131 -> 145 MB on relay frames.
    batch_size: int = integer("SKYWIRE_BATCH_SIZE", 2000, 1, 100_000,
                              "flush after this many events", common=True)
    batch_interval: float = seconds("SKYWIRE_BATCH_INTERVAL", 0.1, 0.001, 60.0,
                                    "... or this long after the first event of a batch",
                                    common=True)
    batch_linger: float = seconds(
        "SKYWIRE_BATCH_LINGER", 0.002, 0.0, 60.0,
        "... or when no frame arrived for this long (group commit); at most "
        "`SKYWIRE_BATCH_INTERVAL`", common=True)
    # Reader -> batcher channel, counted in frames (one frame = one commit = up to 200 ops).
    buffer_frames: int = integer("SKYWIRE_BUFFER_FRAMES", 2000, 1, 1_000_000,
                                 "reader -> batcher channel capacity, in frames")
    overflow_grace: float = seconds(
        "SKYWIRE_OVERFLOW_GRACE", 10.0, 0.01, 3600.0,
        "how long the reader may wait on a full buffer before ingest restarts")
    read_timeout: float = seconds(
        "SKYWIRE_READ_TIMEOUT", 30.0, 0.1, 3600.0,
        "an upstream that sends neither data nor a pong for this long is treated as dead")
    ping_interval: float = seconds(
        "SKYWIRE_PING_INTERVAL", 0.0, 0.0, 600.0,
        "an upstream quiet this long is pinged (a pong counts as life), and again at this "
        "interval; less than `SKYWIRE_READ_TIMEOUT`. `0`: a third of `SKYWIRE_READ_TIMEOUT`")
    backoff_min: float = seconds("SKYWIRE_BACKOFF_MIN", 1.0, 0.01, 600.0,
                                 "first reconnect / restart delay (full jitter)")
    backoff_max: float = seconds("SKYWIRE_BACKOFF_MAX", 60.0, 0.01, 3600.0,
                                 "longest reconnect / restart delay; at least "
                                 "`SKYWIRE_BACKOFF_MIN`")
    healthy_after: float = seconds("SKYWIRE_HEALTHY_AFTER", 60.0, 0.1, 3600.0,
                                   "a run this long without a failure resets the backoff")
    crash_backoff_min: float = seconds(
        "SKYWIRE_CRASH_BACKOFF_MIN", 10.0, 0.01, 3600.0,
        "first restart delay of a task after a crash (a fault it does not name as transient: "
        "a bug), logged with its traceback")
    crash_backoff_max: float = seconds(
        "SKYWIRE_CRASH_BACKOFF_MAX", 600.0, 0.01, 86400.0,
        "longest restart delay after repeated crashes; at least `SKYWIRE_CRASH_BACKOFF_MIN`")
    deadletter_dir: Path = path("SKYWIRE_DEADLETTER_DIR", "var/deadletter",
                                "frames that cannot be stored are saved here (bytes and "
                                "reason)")
    reset_cursor: bool = flag("SKYWIRE_RESET_CURSOR",
                              "start over when the cursor belongs to another upstream")
    retention_days: int = integer(
        "SKYWIRE_RETENTION_DAYS", 7, 1, 3650,
        "partitions whose whole day is older than this are dropped (builtin manager; with "
        "pg_partman its own retention applies)", common=True)
    premake_days: int = integer("SKYWIRE_PREMAKE_DAYS", 4, 1, 90,
                                "daily partitions created ahead of today (builtin manager)")
    partition_interval: float = seconds("SKYWIRE_PARTITION_INTERVAL", 3600.0, 1.0, 86400.0,
                                        "how often the partition manager runs a pass")
    progress_interval: float = seconds(
        "SKYWIRE_PROGRESS_INTERVAL", 30.0, 1.0, 86400.0,
        "a progress line (events committed, rate, lag, buffer, restarts) this often; it "
        "also sets the status page's sampling period when shorter than 10 s")
    webhook_retry_min: float = seconds(
        "SKYWIRE_WEBHOOK_RETRY_MIN", 5.0, 0.01, 86400.0,
        "first delay before a failed webhook batch is sent again (jittered, doubling)")
    webhook_retry_max: float = seconds(
        "SKYWIRE_WEBHOOK_RETRY_MAX", 3600.0, 0.01, 86400.0,
        "longest delay between attempts of a webhook batch (a value below "
        "`SKYWIRE_WEBHOOK_RETRY_MIN` counts as that)")
    webhook_max_attempts: int = integer(
        "SKYWIRE_WEBHOOK_MAX_ATTEMPTS", 15, 1, 1000,
        "attempts of a webhook batch before it is dead-lettered (or its subscription paused)")
    webhook_max_age: float = seconds(
        "SKYWIRE_WEBHOOK_MAX_AGE", 86400.0, 1.0, 30 * 86400.0,
        "... or this long after its first attempt, whichever comes first")
    webhook_timeout: float = seconds("SKYWIRE_WEBHOOK_TIMEOUT", 10.0, 0.1, 300.0,
                                     "a webhook request (connect to last byte) gets this long")
    webhook_allow_private: bool = flag(
        "SKYWIRE_WEBHOOK_ALLOW_PRIVATE",
        "production only: allow webhook URLs that resolve to loopback, private, link-local "
        "or metadata addresses (refused by default; development allows them and `http`)")
    partition_manager: str = choice(
        "SKYWIRE_PARTITION_MANAGER", "builtin", ("builtin", "pg_partman"),
        "who creates and drops partitions: our manager, or pg_partman 5 (ours then only "
        "checks at start and reports; docs/operations.md)", common=True)
    archive_dir: str = text(
        "SKYWIRE_ARCHIVE_DIR", "",
        "where each closed day is exported as Parquet before retention may drop it (a "
        "directory, or `s3://bucket/prefix` with the usual AWS variables); unset: no archive",
        pattern=r"s3://[a-z0-9][a-z0-9.\-]{2,62}(/\S*)?|(?!s3:)\S.*",
        accepted="a directory or `s3://bucket/prefix`", default_text="unset", common=True)
    archive_grace: float = seconds(
        "SKYWIRE_ARCHIVE_GRACE", 900.0, 0.0, 86400.0,
        "a day is archived this long after its UTC midnight (commits stamped just before "
        "midnight have landed by then)")
    test_hold_commit: float = seconds(
        "SKYWIRE_TEST_HOLD_COMMIT", 0.0, 0.0, 60.0,
        "tests only: hold each batch this long between its cursor update and its COMMIT")

    @property
    def ping_every(self) -> float:
        """The effective ping interval (``ping_interval``, or a third of the read timeout)."""
        return self.ping_interval or self.read_timeout / 3
    role: str = choice(
        "SKYWIRE_ROLE", "all", ROLES,
        "what this instance runs (`run --role` overrides it): `ingest` (ingestion and "
        "partitions), `publisher` (NATS fan-out and webhooks), `api` (reads only) or `all`; "
        "every role serves the API; docs/deployment.md", common=True)
    nats_urls: tuple[str, ...] = url_list(
        "SKYWIRE_NATS_URL", ("nats", "tls"),
        "NATS servers to publish the log to (JetStream); tried in turn, the next one after a "
        "failure. Unset: no fan-out (docs/operations.md)", common=True)
    nats_subject_prefix: str = text(
        "SKYWIRE_NATS_SUBJECT_PREFIX", "atproto.firehose",
        "subjects are `<prefix>.<kind>` and `<prefix>.commit.<collection>`; the stream "
        "takes `<prefix>.>`", pattern=r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,15}",
        accepted="1-16 dot-separated tokens of letters, digits, `-`, `_`")
    nats_stream: str = text("SKYWIRE_NATS_STREAM", "SKYWIRE",
                            "the JetStream stream's name (also the publisher cursor's key)",
                            pattern=r"[A-Za-z0-9_-]{1,64}",
                            accepted="1-64 letters, digits, `-`, `_`")
    nats_replicas: int = integer(
        "SKYWIRE_NATS_REPLICAS", 1, 1, 5,
        "stream replicas: 3 for a production cluster (at most its number of JetStream servers)")
    nats_max_age: float = seconds("SKYWIRE_NATS_MAX_AGE", 86400.0, 60.0, 365 * 86400.0,
                                  "messages older than this leave the stream")
    nats_duplicate_window: float = seconds(
        "SKYWIRE_NATS_DUPLICATE_WINDOW", 600.0, 1.0, 86400.0,
        "JetStream drops a repeated `Nats-Msg-Id` within this window; at most the max age")
    nats_max_bytes: int = integer("SKYWIRE_NATS_MAX_BYTES", 0, 0, 2**62,
                                  "stream size limit, oldest messages discarded first "
                                  "(0: none)")
    nats_batch_size: int = integer("SKYWIRE_NATS_BATCH_SIZE", 1000, 1, 100_000,
                                   "events read from the log and published per step")
    nats_max_pending: int = integer(
        "SKYWIRE_NATS_MAX_PENDING", 4000, 1, 1_000_000,
        "messages published and not yet acknowledged (the window); at least the batch size")
    nats_ack_timeout: float = seconds(
        "SKYWIRE_NATS_ACK_TIMEOUT", 5.0, 0.1, 600.0,
        "a batch not fully acknowledged this long after it was sent fails, and the "
        "publisher starts over from what the stream holds")

    @property
    def runs_ingest(self) -> bool:
        """Whether this instance competes for ingestion (and manages partitions)."""
        return self.role in ("all", "ingest")

    @property
    def runs_publisher(self) -> bool:
        """Whether this instance competes for the NATS publisher's leadership."""
        return self.role in ("all", "publisher") and bool(self.nats_urls)

    @property
    def runs_delivery(self) -> bool:
        """Whether this instance competes for webhook delivery."""
        return self.role in ("all", "publisher")

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
        """The effective configuration by variable name, secrets masked (``config``)."""
        shown = {}
        for field, spec in declarations():
            value = getattr(self, field.name)
            shown[spec.env] = spec.mask(value) if spec.mask else str(value)
        return shown


def declarations() -> list[tuple[dataclasses.Field[Any], Spec]]:
    """Every setting's field and declaration, in the order they are documented."""
    return [(f, f.metadata[_SPEC]) for f in dataclasses.fields(Settings)]


# What the commands that need a database read (the rest keep their defaults).
DATABASE = ("database_url", "data_dir", "environment")


def from_env(env: Mapping[str, str] | None = None,
             only: Iterable[str] | None = None) -> Settings:
    """Build validated ``Settings`` from an environment mapping (``os.environ`` by default).

    ``only`` names the fields a command needs: the others are neither read nor checked and
    keep their defaults (so a bad ``DATABASE_URL`` does not stop ``replay``).
    """
    env = os.environ if env is None else env
    wanted = None if only is None else set(only)
    values: dict[str, Any] = {}
    refused: list[str] = []
    for field, spec in declarations():
        if wanted is not None and field.name not in wanted:
            continue
        raw = env.get(spec.env)
        if raw is None or raw == "":
            continue
        try:
            values[field.name] = spec.parse(raw)
        except ValueError as exc:
            refused.append(f"{spec.env} {exc}")
    if refused:  # every bad variable at once, not one per attempt
        raise ConfigError("\n".join(refused))
    settings = Settings(**values)
    _check_together(settings, wanted)
    return settings


# The interpreter's allocator (the interpreter reads it as it starts; memory.py).
_ALLOCATOR = "PYTHONMALLOC"


def allocator_environment() -> dict[str, str] | None:
    """The environment to start the service again with on the C library's allocator
    (``PYTHONMALLOC=malloc``, memory.py), or None when ``PYTHONMALLOC`` is set: an
    operator's own choice, or this start's. The interpreter reads it, not ``Settings``."""
    if _ALLOCATOR in os.environ:
        return None
    return {**os.environ, _ALLOCATOR: "malloc"}


def receiver_environment() -> dict[str, str] | None:
    """The environment of the receiver process: CPython's own allocator again when the
    service runs on the C library's (None: the service's own environment). The receiver's
    memory does not grow with connections, and it decodes faster on pymalloc."""
    if os.environ.get(_ALLOCATOR) != "malloc":
        return None
    return {**os.environ, _ALLOCATOR: "pymalloc"}


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``SKYWIRE_*`` variable that is not a setting (typos, mostly)."""
    env = os.environ if env is None else env
    known = [spec.env for _, spec in declarations()]
    warnings = []
    for name in sorted(env):
        if name.startswith("SKYWIRE_") and name not in known and name not in NOT_SETTINGS:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def _check_together(settings: Settings, wanted: set[str] | None) -> None:
    """The rules that involve more than one setting (for the fields that were read)."""
    def read(*names: str) -> bool:
        return wanted is None or set(names) <= wanted

    if read("partition_manager", "archive_dir") and settings.archive_dir \
            and settings.partition_manager == "pg_partman":
        raise ConfigError("SKYWIRE_ARCHIVE_DIR needs SKYWIRE_PARTITION_MANAGER=builtin: "
                          "pg_partman drops partitions without waiting for their archive")
    if read("backoff_min", "backoff_max") and settings.backoff_max < settings.backoff_min:
        raise ConfigError("SKYWIRE_BACKOFF_MAX must not be smaller than SKYWIRE_BACKOFF_MIN")
    if read("crash_backoff_min", "crash_backoff_max") and \
            settings.crash_backoff_max < settings.crash_backoff_min:
        raise ConfigError("SKYWIRE_CRASH_BACKOFF_MAX must not be smaller than "
                          "SKYWIRE_CRASH_BACKOFF_MIN")
    if read("batch_linger", "batch_interval") and \
            settings.batch_linger > settings.batch_interval:
        raise ConfigError("SKYWIRE_BATCH_LINGER must not be longer than SKYWIRE_BATCH_INTERVAL "
                          f"({_number(settings.batch_interval)}), got "
                          f"{_number(settings.batch_linger)}")
    if read("ping_interval", "read_timeout") and \
            settings.ping_interval >= settings.read_timeout:
        raise ConfigError("SKYWIRE_PING_INTERVAL must be less than SKYWIRE_READ_TIMEOUT "
                          f"({_number(settings.read_timeout)}), got "
                          f"{_number(settings.ping_interval)}")
    if read("nats_duplicate_window", "nats_max_age") and \
            settings.nats_duplicate_window > settings.nats_max_age:
        raise ConfigError("SKYWIRE_NATS_DUPLICATE_WINDOW must not be longer than "
                          "SKYWIRE_NATS_MAX_AGE")
    if read("nats_max_pending", "nats_batch_size") and \
            settings.nats_max_pending < settings.nats_batch_size:
        raise ConfigError("SKYWIRE_NATS_MAX_PENDING must not be smaller than "
                          "SKYWIRE_NATS_BATCH_SIZE")
    if read("role", "nats_urls"):
        _check_role(settings)
    if settings.environment != "production":
        return
    if read("api_token_salt") and (settings.api_token_salt == DEV_TOKEN_SALT
                                   or len(settings.api_token_salt) < 32):
        raise ConfigError("API_TOKEN_SALT must be set to a secret of at least 32 characters "
                          "when SKYWIRE_ENV=production (e.g. `openssl rand -hex 32`)")
    if read("database_url") and settings.database_url is None:
        raise ConfigError("DATABASE_URL must be set when SKYWIRE_ENV=production "
                          "(the embedded PostgreSQL is for development)")


def _check_role(settings: Settings) -> None:
    if settings.role == "publisher" and not settings.nats_urls:
        raise ConfigError("SKYWIRE_ROLE=publisher needs SKYWIRE_NATS_URL (the NATS servers "
                          "to publish to)")


def with_role(settings: Settings, role: str) -> Settings:
    """``settings`` with the role given on the command line (``run --role``)."""
    settings = dataclasses.replace(settings, role=role)
    _check_role(settings)
    return settings


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def markdown_table() -> str:
    """docs/configuration.md's table of every setting (``config --markdown`` prints it)."""
    lines = ["| variable | default | accepted | meaning |", "|---|---|---|---|"]
    for _, spec in declarations():
        lines.append(f"| `{spec.env}` | {_cell(spec.default_text)} | {_cell(spec.accepted)} | "
                     f"{_cell(spec.doc)} |")
    return "\n".join(lines) + "\n"


def readme_table() -> str:
    """The README's short table: the settings most runs touch."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for _, spec in declarations():
        if spec.common:
            lines.append(f"| `{spec.env}` | {_cell(spec.default_text)} | {_cell(spec.doc)} |")
    return "\n".join(lines) + "\n"
