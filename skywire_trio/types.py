"""Shared value types of the log: cursors, filters, pages, tokens, partitions.

No I/O here: these are what ``log/`` returns and what ``api/``, the CLI and the readers
(fan-out, delivery, archive) pass around, so none of them needs a database module to name
a type.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, date, datetime, time, timedelta

PARTITION_PREFIX = "firehose_events_p"


@dataclasses.dataclass(frozen=True)
class Cursor:
    """The committed position: upstream seq and the last log id."""

    upstream: str
    last_seq: int | None
    last_id: int


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """A validated /events query. Prefixes are LIKE patterns (already escaped)."""

    since: int = 0
    limit: int = 100
    collections: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    action: str | None = None

    def matches(self, event: LogEvent) -> bool:
        """Whether ``event`` passes this filter (``since`` and ``limit`` aside).

        The same rule as the SQL in ``log/reader.py``: identity and account events pass
        the commit-only filters (collection, action); other non-commit events do not.
        """
        if self.collections or self.prefixes:
            if not (event.event_type in COLLECTION_EXEMPT
                    or event.collection in self._collection_set
                    or any(_like_prefix_match(p, event.collection) for p in self.prefixes)):
                return False
        if self.repos and event.repo not in self._repo_set:
            return False
        if self.event_types and event.event_type not in self.event_types:
            return False
        return not (self.action and event.event_type not in COLLECTION_EXEMPT
                    and event.action != self.action)

    # Sets for matching: a websocket subscriber may name up to 10,000 DIDs, and each event
    # is matched against every subscriber's filter.
    @functools.cached_property
    def _collection_set(self) -> frozenset[str]:
        return frozenset(self.collections)

    @functools.cached_property
    def _repo_set(self) -> frozenset[str]:
        return frozenset(self.repos)


# Event types that pass the commit-only filters (collection, action): consumers need them
# to see deletions and handle changes.
COLLECTION_EXEMPT = frozenset({"identity", "account"})


def _like_prefix_match(pattern: str, collection: str | None) -> bool:
    """``collection`` starts with the prefix of a ``stem%`` LIKE pattern (escapes undone)."""
    if collection is None:
        return False
    stem = pattern[:-1]
    stem = stem.replace("\\\\", "\0").replace("\\%", "%").replace("\\_", "_")
    return collection.startswith(stem.replace("\0", "\\"))


@dataclasses.dataclass(frozen=True, slots=True)
class LogEvent:
    """One committed event as readers see it: its id, what filters look at, its JSON."""

    id: int
    event_type: str
    collection: str | None
    repo: str | None
    action: str | None
    time_us: int
    json: bytes
    seq: int | None = None  # the upstream seq (None for #info)


@dataclasses.dataclass(frozen=True)
class Page:
    """A page of events: how many, the first and last ids, and their JSON, comma-joined."""

    count: int
    first_id: int | None
    last_id: int | None
    json: bytes


@dataclasses.dataclass(frozen=True)
class Token:
    """A stored API token (never the token itself)."""

    name: str
    token_hash: bytes
    collections: tuple[str, ...]
    event_types: tuple[str, ...]
    repos: tuple[str, ...]
    rate_limit: int
    revoked: bool


def partition_name(day: date) -> str:
    """The pg_partman 5 name of the partition holding one UTC day."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    """UTC midnight at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of the log."""

    name: str
    lower: datetime | None  # None for the default partition
    upper: datetime | None
    rows_estimate: int
    bytes: int

    @classmethod
    def named(cls, name: str, rows: int, size: int) -> Partition:
        """A partition from its name (daily ones carry their UTC day in it)."""
        if name.startswith(PARTITION_PREFIX):
            day = datetime.strptime(name[len(PARTITION_PREFIX):], "%Y%m%d").date()
            return cls(name, day_start(day), day_start(day + timedelta(days=1)), rows, size)
        return cls(name, None, None, rows, size)

    def as_json(self, now: datetime) -> dict[str, object]:
        """The listing entry shared by ``GET /partitions`` and ``partitions list``."""
        return {
            "name": self.name,
            "from": self.lower.isoformat() if self.lower else None,
            "to": self.upper.isoformat() if self.upper else None,
            "rows_estimate": self.rows_estimate,
            "bytes": self.bytes,
            "current": self.lower is not None and self.lower <= now < self.upper,
            "default": self.lower is None,
        }


@dataclasses.dataclass(frozen=True)
class PendingBatch:
    """A webhook batch saved before sending: events after ``after_id`` up to ``upto_id``."""

    webhook_id: str
    after_id: int
    upto_id: int
    attempts: int
    since: datetime


@dataclasses.dataclass(frozen=True)
class Subscription:
    """A webhook subscription as stored (its secret included: the sender signs with it)."""

    id: int
    name: str
    url: str
    collections: tuple[str, ...]  # NSIDs and prefix.*, as written
    event_types: tuple[str, ...]
    repos: tuple[str, ...]
    actions: tuple[str, ...]
    jmespath: str | None
    batch_size: int
    secret: str
    on_exhausted: str  # "deadletter" or "pause"
    state: str  # "active", "paused" or "disabled"
    cursor: int
    pending: PendingBatch | None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A batch that exhausted its retries, with the exact body that failed."""

    id: int
    subscription_id: int
    webhook_id: str
    after_id: int
    upto_id: int
    event_count: int
    body: bytes
    attempts: int
    last_status: int | None
    last_error: str | None


# Who creates and drops partitions (SKYWIRE_PARTITION_MANAGER).
BUILTIN_MANAGER, PG_PARTMAN_MANAGER = "builtin", "pg_partman"


@dataclasses.dataclass(frozen=True)
class PartitionPolicy:
    """Who manages the partitions, and the builtin manager's window."""

    manager: str = BUILTIN_MANAGER
    retention_days: int = 7
    premake_days: int = 4


@dataclasses.dataclass(frozen=True)
class PartitionStatus:
    """Where the partitions stand: reported in /health, /partitions, /metrics and the CLI."""

    manager: str
    retention: str | None  # "7 days"; None: nothing is ever dropped
    retention_seconds: float | None
    premake: int | None
    partitions_ahead: int  # consecutive days after today that have their partition
    default_rows: int
    problem: str | None = None  # the manager cannot do its job (e.g. pg_partman let go)

    def alarms(self) -> list[str]:
        """What an operator must look at; empty when all is well."""
        out = []
        if self.problem:
            out.append(self.problem)
        if self.default_rows:
            fix = ("pg_partman cannot premake their days until CALL "
                   "partman.partition_data_proc('public.firehose_events') moves them"
                   if self.manager == PG_PARTMAN_MANAGER else "the next pass moves them")
            out.append(f"{self.default_rows} row(s) in firehose_events_default: {fix}")
        if self.partitions_ahead == 0:
            who = ("is pg_partman's run_maintenance running?"
                   if self.manager == PG_PARTMAN_MANAGER else "the next pass creates it")
            out.append("no partition for tomorrow (UTC): rows will land in the default "
                       f"partition after midnight; {who}")
        return out

    def as_json(self) -> dict[str, object]:
        """The fields shared by /health, /partitions and ``partitions list``."""
        return {"manager": self.manager, "retention": self.retention, "premake": self.premake,
                "partitions_ahead": self.partitions_ahead, "default_rows": self.default_rows,
                "alarms": self.alarms()}


@dataclasses.dataclass(frozen=True)
class Archive:
    """One UTC day of the log in Parquet: read back, matched and recorded (``archives``)."""

    day: date
    path: str  # file path or s3://bucket/key
    rows: int
    first_id: int
    last_id: int
    bytes: int
    sha256: str
    created: datetime

    def as_json(self) -> dict[str, object]:
        """The entry shared by ``archives list``, /partitions and ``partitions list``."""
        return {"day": self.day.isoformat(), "path": self.path, "rows": self.rows,
                "first_id": self.first_id, "last_id": self.last_id, "bytes": self.bytes,
                "sha256": self.sha256, "created": self.created.isoformat()}
