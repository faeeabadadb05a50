"""One subscription's delivery: the next matching events after its cursor, one batch at a time.

While behind, it reads pages of its own through ``ReadSession.events`` (the query of
``/events``). Once caught up it follows the commit feed, the one read of each commit that
every in-process reader shares, and matches events in memory. A subscriber the feed cuts
off (it fell behind, e.g. while retrying) goes back to reading pages.

Each batch is saved as pending (its range and webhook-id) *before* it is sent, and the
cursor moves past it only after a 2xx; one batch is in flight at a time, so delivery is
ordered and at-least-once, and a batch re-sent after a crash keeps its webhook-id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import Any

import trio

from ..log.notify import CommitBatch, CommitFeed, FeedSubscription
from ..log.reader import ReadStore
from ..log.subscriptions import DeliveryStore
from ..stats import SubscriptionStats
from ..types import DeadLetter, LogEvent, PendingBatch, Subscription
from .client import Clients, WebhookClient
from .matching import Matcher, split_page

log = logging.getLogger(__name__)

# Commit batches a follower may have queued before the feed cuts it off.
FEED_CAPACITY = 64
# With nothing to send: how long to wait for a commit before housekeeping (saving a cursor
# that moved past non-matching events, re-sending dead letters an operator asked for).
IDLE_SECONDS = 1.0
SAVE_SECONDS = 1.0
# Pages read when rebuilding a saved batch.
REBUILD_PAGE = 1000
_FIRST_TIME = re.compile(rb'"time_us":(-?[0-9]+)')


class SubscriptionStopped(Exception):
    """The subscription was disabled (410) or paused by its exhaustion policy."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Jittered exponential backoff between attempts, and when to give up on a batch."""

    minimum: float
    maximum: float
    max_attempts: int
    max_age: float

    def delay(self, attempts: int, rng: random.Random) -> float:
        """Seconds before the next attempt after ``attempts`` failures: between half and
        all of min * 2^(attempts-1), capped at max (never below min)."""
        step = min(max(self.maximum, self.minimum), self.minimum * 2 ** min(attempts - 1, 40))
        return rng.uniform(step / 2, step)

    def exhausted(self, attempts: int, since: datetime) -> bool:
        """Whether a batch first sent at ``since`` has failed for the last time."""
        age = (datetime.now(UTC) - since).total_seconds()
        return attempts >= self.max_attempts or age >= self.max_age


class ParsedCache:
    """Events' JSON parsed once for every subscription with a JMESPath expression."""

    def __init__(self, capacity: int = 20_000) -> None:
        self._capacity = capacity
        self._parsed: OrderedDict[int, Any] = OrderedDict()

    def __call__(self, event: LogEvent) -> Any:
        """``event``'s JSON as Python (parsed at most once while it is recent)."""
        document = self._parsed.get(event.id)
        if document is None:
            document = json.loads(event.json)
            self._parsed[event.id] = document
            if len(self._parsed) > self._capacity:
                self._parsed.popitem(last=False)
        return document


class SharedMatches:
    """Each committed batch matched once per distinct selection, for every subscription.

    Subscriptions often share a selection (the same filters and expression); those that
    follow the feed receive the same batch objects, so the first to match a batch against
    a selection keeps the result for the others.
    """

    def __init__(self, parsed: ParsedCache, capacity: int = 512) -> None:
        self._parsed = parsed
        self._capacity = capacity
        # (id of the batch, selection) -> (the batch, kept so that its id stays its own,
        # the matching events)
        self._done: OrderedDict[tuple[int, object], tuple[CommitBatch, list[LogEvent]]] = \
            OrderedDict()

    def __call__(self, commit: CommitBatch, matcher: Matcher) -> list[LogEvent]:
        """The events of ``commit`` that ``matcher`` selects, in id order."""
        key = (id(commit), matcher.key)
        found = self._done.get(key)
        if found is not None and found[0] is commit:
            return found[1]
        parsed = self._parsed
        matched = [event for event in commit.events if matcher.matches(event, parsed)]
        self._done[key] = (commit, matched)
        if len(self._done) > self._capacity:
            self._done.popitem(last=False)
        return matched


@dataclasses.dataclass(frozen=True)
class Deps:
    """What every subscription's worker shares."""

    store: DeliveryStore
    read_store: ReadStore
    feed: CommitFeed
    clients: Clients
    retry: RetryPolicy
    parsed: ParsedCache
    matches: SharedMatches


@dataclasses.dataclass(frozen=True)
class Batch:
    """One request: matching events after ``after_id`` up to ``upto_id``."""

    webhook_id: str
    after_id: int
    upto_id: int
    count: int
    body: bytes
    first_time: float | None  # commit time (unix seconds) of its first event


def webhook_id(subscription_id: int, after_id: int, upto_id: int) -> str:
    """Stable for a batch: the same subscription and range give the same id."""
    return f"msg_{subscription_id}_{after_id}_{upto_id}"


def _batch(subscription_id: int, after_id: int, upto_id: int, count: int, fragment: bytes,
           last_event_id: int) -> Batch:
    body = b'{"events":[%s],"cursor":%d}' % (fragment, last_event_id)
    # The first "time_us" of a page is its first event's own (EVENT_JSON puts it first).
    found = _FIRST_TIME.search(fragment, 0, 400)
    first_time = int(found.group(1)) / 1e6 if found else None
    return Batch(webhook_id(subscription_id, after_id, upto_id), after_id, upto_id, count,
                 body, first_time)


class SubscriptionWorker:
    """Delivers one subscription until cancelled, disabled or paused by its policy."""

    def __init__(self, subscription: Subscription, deps: Deps, stats: SubscriptionStats,
                 rng: random.Random | None = None) -> None:
        self.sub = subscription
        self.matcher = Matcher(subscription)
        self.deps = deps
        self.stats = stats
        self._rng = rng or random.Random()
        # Every event with id <= cursor was delivered, dead-lettered or did not match.
        self.cursor = subscription.cursor
        self._saved = subscription.cursor
        self._unsaved_events = 0
        self._unsaved_batches = 0
        self._last_save = trio.current_time()
        # Set by the manager when `deadletters retry` queued some of ours.
        self.retries_requested = False
        # Following the feed: matching events in (cursor, scanned] not yet sent.
        self._feed: FeedSubscription | None = None
        self._scanned = subscription.cursor
        self._buffer: deque[LogEvent] = deque()
        self._client: WebhookClient
        stats.cursor = subscription.cursor

    async def run(self) -> None:
        """Deliver until cancelled; returns when the subscription stops itself."""
        async with self.deps.clients.open() as self._client:
            await self._run()

    async def _run(self) -> None:
        try:
            if self.sub.pending is not None:
                batch = await self._rebuild(self.sub.pending)
                if batch is not None:
                    await self._deliver(batch, self.sub.pending.attempts, self.sub.pending.since)
            while True:
                if self.retries_requested:
                    self.retries_requested = False
                    await self._resend_dead_letters()
                batch = await self._next_batch()
                if batch is not None:
                    await self._deliver(batch)
                elif (self.cursor != self._saved or self._unsaved_batches) and \
                        trio.current_time() - self._last_save >= SAVE_SECONDS:
                    await self._save()
        except SubscriptionStopped:
            return
        finally:
            if self._feed is not None:
                self._feed.close()

    # -- reading -----------------------------------------------------------------------

    async def _next_batch(self) -> Batch | None:
        """The next batch, or None when there is nothing to send yet (the cursor may move)."""
        if self._feed is None:
            self._feed = self.deps.feed.subscribe(FEED_CAPACITY)
            self._buffer.clear()
            self._scanned = self.cursor
        if self.cursor < self._feed.start:
            return await self._page(self._feed.start)
        self._drain()
        if not self._buffer and self._feed is not None:
            self.stats.oldest_undelivered = None
            with trio.move_on_after(IDLE_SECONDS):
                try:
                    self._follow(await self._feed.receive.receive())
                except trio.EndOfChannel:
                    self._cut_off()
                    return None
            self._drain()
        if not self._buffer:
            self.cursor = max(self.cursor, self._scanned)
            return None
        count = min(len(self._buffer), self.sub.batch_size)
        events = [self._buffer.popleft() for _ in range(count)]
        upto = events[-1].id if self._buffer else self._scanned
        return _batch(self.sub.id, self.cursor, upto, count,
                      b",".join(event.json for event in events), events[-1].id)

    def _drain(self) -> None:
        """Take the commits already queued, up to a batch's worth of matches."""
        while self._feed is not None and len(self._buffer) < self.sub.batch_size:
            try:
                self._follow(self._feed.receive.receive_nowait())
            except trio.WouldBlock:
                return
            except trio.EndOfChannel:
                self._cut_off()

    def _follow(self, commit: CommitBatch) -> None:
        scanned = self._scanned
        self._buffer.extend(event for event in self.deps.matches(commit, self.matcher)
                            if event.id > scanned)
        self._scanned = max(scanned, commit.last_id)

    def _cut_off(self) -> None:
        """The feed dropped us (too far behind): read pages from the cursor, then rejoin."""
        if self._feed is not None:
            self._feed.close()
        self._feed = None
        self._buffer.clear()
        self._scanned = self.cursor

    async def _page(self, target: int) -> Batch | None:
        """One page of matching events after the cursor, read like ``/events``."""
        event_filter = dataclasses.replace(self.matcher.filter, since=self.cursor,
                                           limit=self.sub.batch_size)
        async with self.deps.read_store.session() as session:
            page = await session.events(event_filter)
            if page.first_id != self.cursor + 1:
                oldest = await session.oldest_id()
                if oldest is not None and oldest > self.cursor + 1:
                    await self._skip(oldest - 1)
        # A short page holds every match committed before it was read, and the head was
        # read before it: everything up to the later of the two has been seen.
        full = page.count >= event_filter.limit
        upto = page.last_id if full and page.last_id else max(target, page.last_id or 0)
        after = self.cursor
        self._scanned = upto
        if not page.count:
            self.cursor = upto
            return None
        if page.first_id is not None and self.stats.oldest_undelivered is None:
            found = _FIRST_TIME.search(page.json, 0, 400)
            self.stats.oldest_undelivered = int(found.group(1)) / 1e6 if found else None
        if not self.matcher.refines:
            return _batch(self.sub.id, after, upto, page.count, page.json, page.last_id or 0)
        kept = [(doc, raw) for doc, raw in split_page(page.json) if self.matcher.accepts(doc)]
        if not kept:
            self.cursor = upto
            return None
        return _batch(self.sub.id, after, upto, len(kept), b",".join(raw for _, raw in kept),
                      int(kept[-1][0]["id"]))

    async def _rebuild(self, pending: PendingBatch) -> Batch | None:
        """The saved batch in flight, read again: the same events under the same id."""
        wide = dataclasses.replace(self.matcher.filter, limit=REBUILD_PAGE)
        raws: list[bytes] = []
        last_event = 0
        since = pending.after_id
        async with self.deps.read_store.session() as session:
            oldest = await session.oldest_id()
            if oldest is not None and oldest > pending.after_id + 1:
                # Retention dropped part of it: it can no longer be sent as it was.
                await self._skip(oldest - 1)
                return None
            while since < pending.upto_id:
                page = await session.events(dataclasses.replace(wide, since=since))
                for doc, raw in split_page(page.json):
                    if doc["id"] > pending.upto_id:
                        break
                    if not self.matcher.refines or self.matcher.accepts(doc):
                        raws.append(raw)
                        last_event = int(doc["id"])
                if page.count < REBUILD_PAGE:
                    break
                since = page.last_id or pending.upto_id
        self.cursor = pending.after_id
        if not raws:
            self.cursor = self._scanned = max(self.cursor, pending.upto_id)
            return None
        batch = _batch(self.sub.id, pending.after_id, pending.upto_id, len(raws),
                       b",".join(raws), last_event)
        return dataclasses.replace(batch, webhook_id=pending.webhook_id)

    async def _skip(self, new_cursor: int) -> None:
        skipped = new_cursor - self.cursor
        log.warning("subscription %s: retention dropped %d events (ids %d..%d) before they "
                    "were delivered; continuing from id %d", self.sub.name, skipped,
                    self.cursor + 1, new_cursor, new_cursor + 1)
        await self.deps.store.record_skip(self.sub.id, new_cursor, skipped)
        self.cursor = self._saved = self._scanned = new_cursor
        self.stats.skipped_events += skipped
        self.stats.cursor = new_cursor

    # -- sending -----------------------------------------------------------------------

    async def _save(self) -> None:
        await self.deps.store.save_cursor(self.sub.id, self.cursor, self._unsaved_events,
                                          self._unsaved_batches)
        self._saved = self.cursor
        self._unsaved_events = self._unsaved_batches = 0
        self._last_save = trio.current_time()
        self.stats.cursor = self.cursor

    async def _deliver(self, batch: Batch, attempts: int = 0,
                       since: datetime | None = None) -> None:
        pending = PendingBatch(batch.webhook_id, batch.after_id, batch.upto_id, attempts,
                               since or datetime.now(UTC))
        # Saved before sending (with the acknowledgements since the last save).
        await self.deps.store.begin_batch(self.sub.id, batch.after_id, pending,
                                          self._unsaved_events, self._unsaved_batches)
        self._saved = batch.after_id
        self._unsaved_events = self._unsaved_batches = 0
        self._last_save = trio.current_time()
        if batch.first_time is not None:
            self.stats.oldest_undelivered = batch.first_time
        while True:
            outcome = await self._client.send(self.sub.url, self.sub.secret,
                                                  batch.webhook_id, batch.body)
            if outcome.ok:
                # Not past `scanned`: matches after upto_id may still wait in the buffer.
                self.cursor = batch.upto_id
                self._scanned = max(self._scanned, batch.upto_id)
                self._unsaved_events += batch.count
                self._unsaved_batches += 1
                self.stats.delivered_events += batch.count
                self.stats.delivered_batches += 1
                self.stats.cursor = batch.upto_id
                self.stats.oldest_undelivered = None
                if batch.first_time is not None:
                    self.stats.observe_latency(max(0.0, time.time() - batch.first_time))
                return
            attempts += 1
            pending = dataclasses.replace(pending, attempts=attempts)
            await self._failed(outcome.kind, outcome.status, outcome.error, attempts)
            if self.deps.retry.exhausted(attempts, pending.since):
                if self.sub.on_exhausted == "pause":
                    await self._stop("paused", outcome.status,
                                     f"paused after {attempts} failed attempts of "
                                     f"{batch.webhook_id}: {outcome.error}")
                log.warning("subscription %s: %s dead-lettered after %d attempts (%s)",
                            self.sub.name, batch.webhook_id, attempts, outcome.error)
                await self.deps.store.dead_letter(self.sub.id, pending, batch.count,
                                                  batch.body, outcome.status, outcome.error)
                self.cursor = self._saved = batch.upto_id
                self._scanned = max(self._scanned, batch.upto_id)
                self.stats.dead_letters += 1
                self.stats.cursor = batch.upto_id
                self.stats.oldest_undelivered = None
                return
            await trio.sleep(self.deps.retry.delay(attempts, self._rng))

    async def _failed(self, kind: str, status: int | None, error: str, attempts: int) -> None:
        self.stats.failures[kind] += 1
        log.info("subscription %s: attempt %d failed: %s", self.sub.name, attempts, error)
        await self.deps.store.record_failure(self.sub.id, attempts, status, error)
        if status == 410:
            await self._stop("disabled", status, "the receiver answered 410 Gone: disabled")

    async def _stop(self, state: str, status: int | None, error: str) -> None:
        log.warning("subscription %s %s: %s", self.sub.name, state, error)
        await self.deps.store.stop(self.sub.id, state, status, error)
        raise SubscriptionStopped(error)

    async def _resend_dead_letters(self) -> None:
        """Dead letters an operator asked to re-send (``deadletters retry``), oldest first."""
        for letter in await self.deps.store.requested_dead_letters(self.sub.id):
            await self._resend(letter)

    async def _resend(self, letter: DeadLetter) -> None:
        attempts = 0
        while True:
            outcome = await self._client.send(self.sub.url, self.sub.secret,
                                                  letter.webhook_id, letter.body)
            if outcome.ok:
                await self.deps.store.dead_letter_delivered(letter)
                self.stats.delivered_events += letter.event_count
                self.stats.delivered_batches += 1
                log.info("subscription %s: dead letter %s delivered", self.sub.name,
                         letter.webhook_id)
                return
            attempts += 1
            self.stats.failures[outcome.kind] += 1
            if outcome.status == 410:
                await self.deps.store.dead_letter_failed(letter, attempts, outcome.status,
                                                         outcome.error)
                await self._stop("disabled", 410, "the receiver answered 410 Gone: disabled")
            if attempts >= self.deps.retry.max_attempts:
                await self.deps.store.dead_letter_failed(letter, attempts, outcome.status,
                                                         outcome.error)
                return
            await trio.sleep(self.deps.retry.delay(attempts, self._rng))
