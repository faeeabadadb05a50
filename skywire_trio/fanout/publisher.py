"""The publisher: committed events, in id order, into a NATS JetStream stream.

    publisher (leader only, see log/leader.py)
    supervisor loop: forever { connect, reconcile, publish; on failure: log, back off }
    └── one run
        ├── producer  wait for commits (CommitFeed) -> read a page (ReadSession.event_range)
        │             -> publish it (one trio -> asyncio crossing) -> window
        └── confirmer window -> wait for the batch's acks (one crossing, with a timeout)
                      -> save the cursor in PostgreSQL

Every message carries ``Nats-Expected-Last-Sequence``: JetStream stores it only if it
directly follows the previous one, so the stream never holds a gap or a reordering, even
when a connection breaks with a window of messages in flight or a cluster changes leader.
The stream's last message therefore says exactly how far the log has been published, and
each run starts right after it (the saved cursor is the fallback for an empty stream).
``Nats-Msg-Id`` (the log id) lets the stream's duplicate window drop a repeat as well.

NATS being down or slow never reaches ingestion: this task only reads the log, and
PostgreSQL holds whatever has not been published yet.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import nats.errors
import trio

from ..config import Settings
from ..errors import describe
from ..log import publisher_cursor
from ..log.notify import CommitFeed
from ..log.reader import ReadStore
from ..stats import PublisherStats
from ..supervise import TRANSIENT, TaskHealth, supervise
from ..types import LogEvent
from . import link as nats_link
from .stream import StreamRefused

log = logging.getLogger(__name__)

# Retried with backoff and one warning line: NATS unreachable, slow or refusing (nats-py's
# own errors included), a stream JetStream will not create as configured, and the
# database's usual faults. Anything else is a bug, reported as a crash.
PUBLISH_TRANSIENT = TRANSIENT + (nats_link.PublishFailed, StreamRefused, nats.errors.Error)


@dataclasses.dataclass
class Position:
    """Where the producer stands: the last id published and the stream sequence it got."""

    last_id: int
    last_seq: int


class Window:
    """The number of messages published and not yet acknowledged, bounded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.outstanding = 0
        self._freed = trio.Event()

    async def room(self) -> int:
        """Wait until a message may be published; how many may be."""
        while self.outstanding >= self.limit:
            await self._freed.wait()
        return self.limit - self.outstanding

    def take(self, count: int) -> None:
        """``count`` messages were published."""
        self.outstanding += count

    def release(self, count: int) -> None:
        """``count`` messages were acknowledged."""
        self.outstanding -= count
        self._freed.set()
        self._freed = trio.Event()


async def _start_position(settings: Settings, link: nats_link.NatsLink,
                          cursors: publisher_cursor.PublisherCursorStore, store: ReadStore,
                          stats: PublisherStats) -> Position:
    """Reconcile the saved cursor with the stream's last message."""
    end = await link.stream_end()
    saved = await cursors.load()
    if end.last_id is not None:
        if saved is not None and end.last_id < saved:
            log.warning("stream %s ends at id %d but the publisher's cursor says %d: "
                        "republishing %d events the stream lost", settings.nats_stream,
                        end.last_id, saved, saved - end.last_id)
        start = end.last_id
    elif saved is not None:
        start = saved
    else:
        # A new stream: begin with what it would hold had it always been fed (its max_age).
        since = datetime.now(UTC) - timedelta(seconds=settings.nats_max_age)
        async with store.session() as session:
            start = await session.id_before(since)
        log.info("stream %s is new: publishing from id %d (the log's last %s)",
                 settings.nats_stream, start + 1, timedelta(seconds=settings.nats_max_age))
    if start != saved:
        await cursors.save(start)
    return Position(start, end.last_seq)


async def _next_events(position: Position, limit: int, feed: CommitFeed, store: ReadStore,
                       stats: PublisherStats, stream: str) -> tuple[list[LogEvent], int]:
    """The next committed events after ``position`` (at most ``limit``), waiting for a
    commit if there are none; and how many ids before them retention dropped."""
    await feed.wait_past(position.last_id)
    after = position.last_id
    skipped = 0
    async with store.session() as session:
        while True:
            upper = min(feed.head, after + limit)
            events = await session.event_range(after, upper)
            if events and events[0].id == after + 1:
                return events, skipped
            # Ids are gapless, so a missing next id was dropped by retention (or the whole
            # range was): continue from the oldest event still in the log.
            oldest = await session.oldest_id()
            resume = upper if oldest is None or oldest > upper else oldest - 1
            log.error("stream %s: events %d-%d were dropped from the log before they could "
                      "be published; %d skipped, continuing from id %d", stream, after + 1,
                      resume, resume - after, resume + 1)
            skipped += resume - after
            stats.skipped += resume - after
            after = resume
            if after >= feed.head:
                return [], skipped


async def _produce(settings: Settings, link: nats_link.NatsLink, position: Position,
                   feed: CommitFeed, store: ReadStore, window: Window, stats: PublisherStats,
                   send: trio.MemorySendChannel[tuple[nats_link.Batch | None, int, int]]
                   ) -> None:
    async with send:
        while True:
            room = await window.room()
            events, skipped = await _next_events(
                position, min(room, settings.nats_batch_size), feed, store, stats,
                settings.nats_stream)
            if not events:  # only skipped ids: record them with the next confirmation
                position.last_id += skipped
                await send.send((None, position.last_id, skipped))
                continue
            batch = await link.publish(events, position.last_seq)
            window.take(len(events))
            position.last_id = events[-1].id
            position.last_seq += len(events)
            await send.send((batch, position.last_id, skipped))


async def _confirm(link: nats_link.NatsLink, cursors: publisher_cursor.PublisherCursorStore,
                   window: Window, stats: PublisherStats,
                   receive: trio.MemoryReceiveChannel[tuple[nats_link.Batch | None, int, int]]
                   ) -> None:
    async with receive:
        async for batch, last_id, skipped in receive:
            if batch is not None:
                confirmed = await link.confirm(batch)
                window.release(confirmed.count)
                stats.published += confirmed.count
                stats.duplicates += confirmed.duplicates
                stats.last_time_us = confirmed.last_time_us
            # Saved after the acks: a crash before this line republishes, and the stream's
            # last message (reconciliation) or its duplicate window drops the repeats.
            await cursors.save(last_id, skipped)
            stats.last_id = last_id


async def publish_once(settings: Settings, store: ReadStore, feed: CommitFeed,
                       stats: PublisherStats, attempt: int = 0) -> None:
    """One run: connect, make sure of the stream, reconcile, publish until a failure."""
    async with publisher_cursor.connect(settings.database_url, settings.nats_stream) as cursors, \
            nats_link.connect(settings, stats, attempt) as link:
        await link.ensure_stream()
        position = await _start_position(settings, link, cursors, store, stats)
        stats.last_id = position.last_id
        log.info("publishing to NATS stream %s after id %d (stream sequence %d)",
                 settings.nats_stream, position.last_id, position.last_seq)
        window = Window(settings.nats_max_pending)
        # The window bounds what is in flight; the channel only has to keep the order.
        send, receive = trio.open_memory_channel[tuple[nats_link.Batch | None, int, int]](
            math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_confirm, link, cursors, window, stats, receive)
            await _produce(settings, link, position, feed, store, window, stats, send)


async def run_publisher(settings: Settings, store: ReadStore, feed: CommitFeed,
                        stats: PublisherStats, tasks: dict[str, TaskHealth]) -> None:
    """Publish forever (under supervise.py's rule), starting over from what the stream
    holds after any failure: NATS down or slow, a refused or unacknowledged message."""
    attempts = 0

    async def publish(ready: Callable[[], None]) -> None:
        nonlocal attempts
        ready()  # the service does not wait for NATS
        attempts += 1
        try:
            await publish_once(settings, store, feed, stats, attempts - 1)
        except Exception as exc:  # counted here, reported and retried by supervise
            stats.errors += 1
            stats.last_error = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {describe(exc)}"
            raise

    await supervise("publisher", publish, settings, tasks, transient=PUBLISH_TRANSIENT)
