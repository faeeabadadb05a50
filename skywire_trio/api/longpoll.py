"""Waiting long-polls: one subscription to the commit feed, shared by all of them.

A long-poll whose first page was empty registers a ``Waiter`` with its filter. One task,
``LongPolls.run``, receives each committed batch from the feed and checks it against every
waiter *in memory*; only a waiter that the batch can match is woken, and only that one
reads the log again. A thousand waiting long-polls therefore cost one read per commit (the
feed's) plus a set lookup or two each, instead of a thousand queries per commit.

The subscription exists only while somebody waits: the feed reads nothing for us when
nobody does, and memory goes back to what it was when the last waiter leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from ..log.notify import CommitBatch, CommitFeed, FeedSubscription
from ..types import COLLECTION_EXEMPT, EventFilter

# Batches the dispatcher may fall behind by before the feed cuts it off (it then wakes
# every waiter, which re-read the log themselves, and subscribes again).
SUBSCRIPTION_CAPACITY = 64


@dataclasses.dataclass(eq=False)
class Waiter:
    """One waiting long-poll: its filter, and the event that wakes it."""

    polls: LongPolls
    filter: EventFilter
    woken: trio.Event = dataclasses.field(default_factory=trio.Event)

    def could_match(self, batch: CommitBatch, summary: _Summary) -> bool:
        """Whether some event of ``batch`` passes this waiter's filter."""
        f = self.filter
        if batch.last_id <= f.since:
            return False
        # Cheap set tests first: most batches are ruled out without looking at an event.
        if f.repos and summary.repos.isdisjoint(f.repos):
            return False
        if f.event_types and summary.event_types.isdisjoint(f.event_types):
            return False
        if (f.collections and not f.prefixes and summary.collections.isdisjoint(f.collections)
                and summary.event_types.isdisjoint(COLLECTION_EXEMPT)):
            return False
        return any(event.id > f.since and f.matches(event) for event in batch.events)

    async def wait(self) -> None:
        """Sleep until a committed batch can match, then re-arm for the next one."""
        await self.woken.wait()
        self.woken = trio.Event()
        # If the feed cut the subscription off, subscribe again before the caller re-reads
        # the log, so that nothing committed after that read can be missed.
        self.polls.subscribe()


@dataclasses.dataclass
class _Summary:
    """What a batch contains, as sets (built once per batch, shared by all waiters)."""

    repos: set[str | None]
    event_types: set[str]
    collections: set[str | None]

    @classmethod
    def of(cls, batch: CommitBatch) -> _Summary:
        return cls({e.repo for e in batch.events}, {e.event_type for e in batch.events},
                   {e.collection for e in batch.events})


class LongPolls:
    """The waiting long-polls of one API and their shared feed subscription."""

    def __init__(self, feed: CommitFeed) -> None:
        self._feed = feed
        self._waiters: set[Waiter] = set()
        self._subscription: FeedSubscription | None = None
        self._new_subscription = trio.Event()
        self.wakeups = 0  # waiters woken (each then reads the log once)

    @property
    def waiting(self) -> int:
        """How many long-polls are registered."""
        return len(self._waiters)

    def subscribe(self) -> None:
        """Make sure a feed subscription is open (synchronously: it starts at the head now)."""
        if self._subscription is None and self._waiters:
            self._subscription = self._feed.subscribe(SUBSCRIPTION_CAPACITY)
            self._new_subscription.set()

    @contextmanager
    def waiter(self, event_filter: EventFilter) -> Iterator[Waiter]:
        """Register a long-poll. Enter it *before* reading the first page: a batch committed
        after that read then wakes it, however the two interleave."""
        waiter = Waiter(self, event_filter)
        self._waiters.add(waiter)
        self.subscribe()
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)
            if not self._waiters and self._subscription is not None:
                self._subscription.close()
                self._subscription = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Deliver committed batches to the waiters they can match, until cancelled."""
        task_status.started()
        while True:
            await self._new_subscription.wait()
            self._new_subscription = trio.Event()
            subscription = self._subscription
            if subscription is None:
                continue
            with subscription:
                async for batch in subscription.receive:
                    self._dispatch(batch)
            if subscription.overflowed:
                # Batches were lost to us: everyone re-reads the log (Waiter.wait subscribes
                # again first).
                if self._subscription is subscription:
                    self._subscription = None
                for waiter in self._waiters:
                    waiter.woken.set()

    def _dispatch(self, batch: CommitBatch) -> None:
        if not batch.events:
            return
        summary = _Summary.of(batch)
        for waiter in self._waiters:
            if not waiter.woken.is_set() and waiter.could_match(batch, summary):
                waiter.woken.set()
                self.wakeups += 1
