"""Progress over time: samples for the status page's charts, and the periodic progress line.

One task (``watch_progress``) samples the live ``IngestStats`` on a short period into a
bounded ``History`` (an hour of points) and logs one progress line every
``progress_interval``. Warnings logged anywhere in the service are kept, the last few, for
the status page (``RecentWarnings``, attached for the service's lifetime only).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from datetime import UTC, datetime

import trio

from .stats import IngestStats

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 10.0
HOUR_OF_SAMPLES = 360


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One point: unix time, committed events/s since the previous point, lag, buffer."""

    at: float
    rate: float
    lag_seconds: float | None
    buffered: int
    requests: float  # API responses/s


class History:
    """The last hour of samples (bounded), oldest first."""

    def __init__(self, size: int = HOUR_OF_SAMPLES) -> None:
        self.samples: collections.deque[Sample] = collections.deque(maxlen=size)

    def as_json(self) -> dict[str, list[float | None]]:
        """Columns, as the chart library takes them."""
        return {"at": [s.at for s in self.samples], "rate": [s.rate for s in self.samples],
                "lag_seconds": [s.lag_seconds for s in self.samples],
                "buffered": [s.buffered for s in self.samples],
                "requests": [s.requests for s in self.samples]}


class RecentWarnings(logging.Handler):
    """Keeps the last warnings and errors logged (time, logger, message), for the page."""

    def __init__(self, size: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.records: collections.deque[dict[str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        """Remember one record (its first line: tracebacks stay in the log)."""
        self.records.append({
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage().splitlines()[0][:500]})


def lag_seconds(stats: IngestStats) -> float | None:
    """Age of the newest committed event's own timestamp (None before the first)."""
    if stats.last_event_time is None:
        return None
    return (datetime.now(UTC) - stats.last_event_time).total_seconds()


async def watch_progress(stats: IngestStats, history: History, progress_interval: float,
                         sample_seconds: float = SAMPLE_SECONDS, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Sample ``stats`` every ``sample_seconds``; log a progress line every interval.

    A progress interval shorter than the sample period shortens the period too (the
    history then covers less than an hour).
    """
    sample_seconds = min(sample_seconds, progress_interval)
    last_events, last_at = stats.events_committed, trio.current_time()
    last_requests = stats.api_requests
    line_events, line_at = last_events, last_at
    task_status.started()
    while True:
        await trio.sleep(sample_seconds)
        now = trio.current_time()
        elapsed = max(now - last_at, 1e-9)
        rate = (stats.events_committed - last_events) / elapsed
        requests = (stats.api_requests - last_requests) / elapsed
        last_events, last_at, last_requests = stats.events_committed, now, stats.api_requests
        lag = lag_seconds(stats)
        history.samples.append(Sample(time.time(), round(rate, 1),
                                      None if lag is None else round(lag, 3),
                                      stats.buffered_frames, round(requests, 1)))
        if now - line_at >= progress_interval - 1e-6:
            line_rate = (stats.events_committed - line_events) / (now - line_at)
            line_events, line_at = stats.events_committed, now
            log.info("progress: %d events committed (%.1f/s over %.0fs), last id %d, lag %s, "
                     "buffer %d, restarts %d", stats.events_committed, line_rate,
                     progress_interval, stats.last_id,
                     "n/a" if lag is None else f"{lag:.1f}s", stats.buffered_frames,
                     stats.ingest_restarts)
