"""The commit feed: one LISTEN connection and one read of each committed batch, shared.

Every in-process reader of the log (long-polls, websocket subscribers, webhook delivery,
the publisher) follows commits through one ``CommitFeed``: a single connection LISTENs for
the writer's notifications, and each committed range of ids is read once and broadcast
to the subscribers, which match it in memory. A thousand waiting readers therefore cost
one query per commit, not a thousand. The reads go over the listening connection, not the
readers' pool: everything live waits on them, so they must not queue behind requests
(1,100 websocket token checks falling due together held up every subscriber for 9 s).

A subscriber that cannot keep up is cut off (its channel is closed) rather than slowing
the feed or the others; it then reads pages of its own from the log and subscribes again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
import triopg

from ..config import Settings
from ..supervise import TaskHealth, supervise
from ..timeouts import Timeouts
from ..types import LogEvent
from .reader import ReadSession

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "skywire_events"
# Notifications can be missed while the listener reconnects: the head is re-read this often.
RECHECK_SECONDS = 2.0
# At most this many events are read and broadcast at once (a long gap is read in steps).
READ_STEP = 2000


@dataclasses.dataclass(frozen=True)
class CommitBatch:
    """Committed events ``after_id < id <= last_id``, all of them, in id order."""

    after_id: int
    last_id: int
    events: list[LogEvent]


class FeedSubscription:
    """A subscriber's view of the feed: batches of events with ids after ``start``."""

    def __init__(self, feed: CommitFeed, start: int, capacity: int,
                 wants: Callable[[CommitBatch], bool] | None,
                 deliver: Callable[[CommitBatch], bool] | None = None) -> None:
        self.start = start
        self._feed = feed
        self._wants = wants
        self._deliver = deliver
        self._send, self.receive = trio.open_memory_channel[CommitBatch](capacity)
        self.overflowed = False

    def _offer(self, batch: CommitBatch) -> None:
        if self._wants is not None and not self._wants(batch):
            return  # nothing in it for this subscriber: do not wake it
        if self._deliver is not None and self._deliver(batch):
            return  # dealt with on the spot, without waking the subscriber's task
        try:
            self._send.send_nowait(batch)
        except trio.WouldBlock:
            # Too slow: cut it off rather than buffer without bound or hold up the others.
            self.overflowed = True
            self.close()

    def close(self) -> None:
        """Stop receiving; what was already delivered stays readable, then EndOfChannel."""
        self._feed._subscribers.discard(self)
        self._send.close()

    def __enter__(self) -> FeedSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.receive.close()


class CommitFeed:
    """Follows the log's head and broadcasts each committed batch to its subscribers."""

    def __init__(self, head: int = 0) -> None:
        self.head = head
        self._subscribers: set[FeedSubscription] = set()
        self._moved = trio.Event()

    def subscribe(self, capacity: int = 16,
                  wants: Callable[[CommitBatch], bool] | None = None,
                  deliver: Callable[[CommitBatch], bool] | None = None) -> FeedSubscription:
        """Receive every batch committed after the current ``head``, in order; with
        ``wants``, only the batches for which it is true (called as each is committed).
        ``deliver`` is offered each such batch first, on the feed's task, and returns
        True when it has dealt with it, so that it is not queued (it must not block, and
        must return False whenever something is still queued for this subscriber).

        Readers that start behind subscribe *first*, then read pages from their own
        position up to ``subscription.start``, then follow the batches: nothing falls
        between the two.
        """
        subscription = FeedSubscription(self, self.head, capacity, wants, deliver)
        self._subscribers.add(subscription)
        return subscription

    async def wait_past(self, last_id: int) -> None:
        """Sleep until the head is past ``last_id``."""
        while self.head <= last_id:
            await self._moved.wait()

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscribers)

    async def _advance(self, session: ReadSession, new_head: int) -> None:
        while self.head < new_head:
            upper = min(new_head, self.head + READ_STEP)
            events: list[LogEvent] = []
            if self._subscribers:
                events = await session.event_range(self.head, upper)
            batch = CommitBatch(self.head, upper, events)
            self.head = upper
            for subscription in list(self._subscribers):
                subscription._offer(batch)
            self._moved.set()
            self._moved = trio.Event()

    async def run(self, settings: Settings, tasks: dict[str, TaskHealth], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow commits until cancelled, reconnecting under the one supervision rule.

        Reports started once it listens (or after its first failure, so the service starts
        while the database is down).
        """
        listening = False

        async def follow(ready: Callable[[], None]) -> None:
            nonlocal listening
            assert settings.database_url is not None
            async with listen_commits(settings.database_url) as (session, notes):
                head = await session.head()
                if not listening:
                    # Readers start at the head as it is now, not at id 0.
                    self.head = max(self.head, head)
                await self._advance(session, head)
                listening = True
                ready()
                await self._follow(session, notes)

        await supervise("commit-feed", follow, settings, tasks, task_status=task_status)

    async def _follow(self, session: ReadSession,
                      notes: trio.MemoryReceiveChannel[str]) -> None:
        while True:
            with trio.move_on_after(RECHECK_SECONDS) as scope:
                note = await notes.receive()
            if scope.cancelled_caught:
                await self._advance(session, await session.head())
                continue
            # Commits that were notified while the last batch was read and broadcast go
            # out as one batch: one read, one wake-up per subscriber.
            head = int(note)
            while True:
                try:
                    head = max(head, int(notes.receive_nowait()))
                except trio.WouldBlock:
                    break
            await self._advance(session, head)


@asynccontextmanager
async def listen_commits(database_url: str) -> AsyncIterator[
        tuple[ReadSession, trio.MemoryReceiveChannel[str]]]:
    """A connection of its own, and the notifications sent by each committed batch over it
    (payload: the new last id)."""
    # Reads bounded by a Timeouts of its own, not asyncpg's command_timeout (reader.py).
    async with triopg.connect(database_url) as conn, conn.listen(
            NOTIFY_CHANNEL, max_buffer_size=16) as notes:
        with Timeouts() as timeouts:
            yield ReadSession(conn, timeouts), notes
