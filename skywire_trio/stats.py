"""Live counters and state shared by ingest, the API and /metrics.

One ``IngestStats`` is created by the service and handed to each task that updates or
reads it; there is no module-level state. Counters only ever grow (Prometheus counters).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from .supervise import TaskHealth


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
    disconnected_since: float | None = None  # trio clock; None before the first try
    buffered_frames: int = 0
    last_seq: int | None = None
    last_id: int = 0
    last_event_time: datetime | None = None
    last_commit_monotonic: float | None = None
    ingest_started: float | None = None  # trio clock, start of the current ingest run
    default_partition_rows: int = 0  # as of the last partition maintenance pass
    partitions_dropped: int = 0
    api_requests: int = 0  # HTTP responses sent (the status page's requests/s)
    long_polls_open: int = 0  # /events requests waiting for a commit right now
    # Each supervised task's restarts and last crash, by task name (supervise.py).
    tasks: dict[str, TaskHealth] = dataclasses.field(default_factory=dict)
