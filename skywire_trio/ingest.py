"""The ingest supervisor and the ingest nursery it restarts.

    supervisor loop: forever { open ingest nursery; on failure: log, back off, repeat }
    └── ingest nursery
        ├── reader   websocket -> decoded frames -> bounded channel
        └── batcher  channel -> COPY + cursor, one transaction per batch

Every failure -- upstream gone, buffer overflow, database down -- ends in the same place:
the nursery is torn down and a new one starts from the cursor committed in Postgres.
That one path is what makes crash-and-replay trustworthy, so there is no other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import trio

from .config import Settings
from .errors import describe
from .firehose.codec import Frame
from .firehose.reader import UpstreamError, read_upstream
from .log import writer
from .log.batcher import run_batcher, utc_now
from .stats import IngestStats

log = logging.getLogger(__name__)

OpenStore = Callable[[str], AbstractAsyncContextManager[writer.LogStore]]


class Backoff:
    """Exponential backoff with jitter: min doubling to max, reset by ``reset()``."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._minimum, self._maximum = minimum, maximum
        self._next = minimum

    def reset(self) -> None:
        """Start again from the minimum (after a healthy period)."""
        self._next = self._minimum

    def delay(self) -> float:
        """The next delay: uniformly between half and all of the current step."""
        step = self._next
        self._next = min(self._maximum, self._next * 2)
        return random.uniform(step / 2, step)


async def run_ingest_once(settings: Settings, store: writer.LogStore, stats: IngestStats,
                          clock: Callable[[], datetime] = utc_now) -> None:
    """One ingest nursery: resume after the committed cursor until something fails."""
    await store.lock_writer()
    cursor = await store.claim_cursor(settings.subscribe_url, settings.reset_cursor)
    stats.last_id, stats.last_seq = cursor.last_id, cursor.last_seq
    stats.ingest_started = trio.current_time()
    send, receive = trio.open_memory_channel[Frame](settings.buffer_frames)
    upstream_fault: UpstreamError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_batcher, receive, store, cursor, settings, stats, clock)
        async with send:
            try:
                await read_upstream(settings, cursor.last_seq, send, stats)
            except UpstreamError as exc:
                # Not fatal to what is buffered: closing `send` lets the batcher commit
                # it before the nursery exits.
                upstream_fault = exc
    if upstream_fault is not None:
        raise upstream_fault


async def supervise_ingest(settings: Settings, stats: IngestStats,
                           open_store: OpenStore = writer.connect,
                           clock: Callable[[], datetime] = utc_now,
                           *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """Run ingestion forever, restarting it from the committed cursor after any failure."""
    backoff = Backoff(settings.backoff_min, settings.backoff_max)
    task_status.started()
    while True:
        started = trio.current_time()
        try:
            async with open_store(settings.database_url) as store:
                await run_ingest_once(settings, store, stats, clock)
        except writer.CursorMismatch:
            raise  # configuration, not a transient fault: stop with the message
        except Exception as exc:  # every other failure means: restart from the cursor
            if isinstance(exc, UpstreamError):
                stats.upstream_errors += 1
            stats.ingest_restarts += 1
            log.warning("ingest stopped: %s", describe(exc))
        if trio.current_time() - started >= settings.healthy_after:
            backoff.reset()
        delay = backoff.delay()
        log.info("restarting ingest in %.1fs", delay)
        await trio.sleep(delay)
        stats.reconnects += 1
