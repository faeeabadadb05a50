"""Live counters and state shared by ingest, the API and /metrics.

One ``IngestStats`` is created by the service and handed to each task that updates or
reads it; there is no module-level state. Counters only ever grow (Prometheus counters).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import date, datetime

from .supervise import TaskHealth
from .types import PartitionStatus


@dataclasses.dataclass
class ArchiveStats:
    """The archive's work in this process (the partition manager's passes)."""

    enabled: bool = False
    written: int = 0
    rows: int = 0
    bytes: int = 0
    failures: int = 0
    last_day: date | None = None  # the newest day archived by this process
    failing_day: date | None = None  # a day whose export failed, until it succeeds
    last_error: str | None = None

    def as_json(self) -> dict[str, object]:
        """The ``archive`` object of /health."""
        return {"written": self.written, "failures": self.failures,
                "last_day": self.last_day.isoformat() if self.last_day else None,
                "failing": self.failing_day is not None,
                "failing_day": self.failing_day.isoformat() if self.failing_day else None,
                "last_error": self.last_error}


@dataclasses.dataclass
class IngestStats:
    """What ingestion has done since the process started, and where it stands now."""

    frames_in: int = 0
    bytes_in: int = 0
    events_committed: int = 0
    batches_committed: int = 0
    batch_seconds_total: float = 0.0
    reconnects: int = 0
    upstream_errors: int = 0
    overflows: int = 0
    ingest_restarts: int = 0
    frames_rejected: int = 0  # saved to the dead-letter directory
    duplicates_skipped: int = 0  # seq at or below the committed cursor
    upstream_connected: bool = False
    upstream_reached: bool = False  # connected at least once since the process started
    disconnected_since: float | None = None  # trio clock; None before the first try
    buffered_frames: int = 0
    last_seq: int | None = None
    last_id: int = 0
    last_event_time: datetime | None = None
    last_commit_monotonic: float | None = None
    # Upstream liveness, trio clock: the last frame received (any connection), the last
    # pong on the current connection and its round trip.
    last_frame_monotonic: float | None = None
    last_pong_monotonic: float | None = None
    ping_round_trip: float | None = None  # seconds, the last pong's
    ingest_started: float | None = None  # trio clock, start of the current ingest run
    # Trio clock since which frames from the upstream wait for a commit; None while nothing
    # waits. Not reset by an ingest restart: what a restart drops is replayed, so a crash
    # loop reads as one long wait (a stall), not as a fresh start every time.
    waiting_since: float | None = None
    last_error: str | None = None  # why ingest last stopped
    last_error_at: float | None = None  # trio clock
    default_partition_rows: int = 0  # as of the last partition maintenance pass
    partitions_dropped: int = 0
    api_requests: int = 0  # HTTP responses sent (the status page's requests/s)
    long_polls_open: int = 0  # /events requests waiting for a commit right now
    # Each supervised task's restarts and last crash, by task name (supervise.py).
    tasks: dict[str, TaskHealth] = dataclasses.field(default_factory=dict)
    partition_status: PartitionStatus | None = None  # as of the last partition manager pass
    # /subscribe websockets
    subscribers: int = 0  # open now
    subscribe_messages: int = 0  # events sent
    subscribe_fallbacks: int = 0  # cut off from the commit feed, back to reading pages
    subscribe_too_slow: int = 0  # closed with 4408 consumer_too_slow
    partitions_waiting: int = 0  # expired days kept until their archive is recorded
    archive: ArchiveStats = dataclasses.field(default_factory=ArchiveStats)

    def frame_waiting(self, now: float) -> None:
        """A frame was passed on to the batcher: start the stall clock if it is not running."""
        if self.waiting_since is None:
            self.waiting_since = now

    def committed(self, now: float, more_waiting: bool) -> None:
        """A batch was committed; ``more_waiting``: frames are buffered behind it."""
        self.last_commit_monotonic = now
        self.waiting_since = now if more_waiting else None

    def ingest_failed(self, error: str, now: float) -> None:
        """An ingest run ended with ``error`` (the supervisor restarts it)."""
        self.ingest_restarts += 1
        self.last_error, self.last_error_at = error, now

    def stalled(self, now: float, stall_seconds: float) -> bool:
        """Whether ingestion is stuck: disconnected from the upstream, or frames received
        and not committed, for more than ``stall_seconds``."""
        disconnected_for = (now - self.disconnected_since
                            if not self.upstream_connected and self.disconnected_since is not None
                            else 0.0)
        waiting_for = now - self.waiting_since if self.waiting_since is not None else 0.0
        return max(disconnected_for, waiting_for) > stall_seconds


# Upper bounds (seconds) of the delivery latency histogram: commit -> 2xx.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclasses.dataclass
class SubscriptionStats:
    """One webhook subscription's delivery since the process started (or it was created)."""

    name: str
    cursor: int = 0
    delivered_events: int = 0
    delivered_batches: int = 0
    failures: Counter[str] = dataclasses.field(default_factory=Counter)  # by outcome kind
    dead_letters: int = 0
    skipped_events: int = 0
    # Commit time (unix seconds) of the oldest event not yet acknowledged; None: caught up.
    oldest_undelivered: float | None = None
    latency_buckets: list[int] = dataclasses.field(
        default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe_latency(self, seconds: float) -> None:
        """Record one batch's commit -> acknowledgement time."""
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency_buckets[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1


@dataclasses.dataclass
class DeliveryStats:
    """Webhook delivery in this process: one entry per subscription it delivers."""

    leader: bool = False
    subscriptions: dict[int, SubscriptionStats] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Roles:
    """The role this instance was started with, and which singleton roles it leads.

    ``states`` maps each singleton role this instance runs (``ingest``, ``publisher``) to
    ``"leader"`` or ``"standby"``; ``since`` holds the wall-clock time (Unix seconds) at
    which it last became leader.
    """

    configured: str = "all"
    states: dict[str, str] = dataclasses.field(default_factory=dict)
    since: dict[str, float] = dataclasses.field(default_factory=dict)

    def leads(self, role: str) -> bool:
        """Whether this instance currently leads ``role``."""
        return self.states.get(role) == "leader"


@dataclasses.dataclass
class PublisherStats:
    """What the NATS publisher has done since the process started, and where it stands."""

    connected: bool = False
    last_id: int = 0  # every id up to this one is acknowledged by JetStream
    last_time_us: int | None = None  # commit time of the event at last_id
    published: int = 0  # messages acknowledged (duplicates included)
    duplicates: int = 0  # acknowledged as duplicates (already in the stream)
    errors: int = 0  # failed connections, refused or unacknowledged publishes
    skipped: int = 0  # ids dropped by retention before they were published
    last_error: str | None = None
