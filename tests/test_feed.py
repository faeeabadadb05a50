"""The commit feed and the in-memory filter: one read per commit, the same answer as SQL."""

from __future__ import annotations

import json

import trio
import trio_asyncio

from skywire_trio.config import Settings
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.log import reader, writer
from skywire_trio.log.batcher import utc_now
from skywire_trio.log.notify import CommitFeed
from skywire_trio.types import EventFilter

from .support import pds_frames, relay_frames

FILTERS = [
    EventFilter(),
    EventFilter(collections=("app.bsky.feed.like",)),
    EventFilter(prefixes=("app.bsky.graph.%",)),
    EventFilter(collections=("app.bsky.feed.post",), prefixes=("app.bsky.actor.%",)),
    EventFilter(event_types=("identity", "account")),
    EventFilter(event_types=("sync",)),
    EventFilter(action="delete"),
    EventFilter(action="create", collections=("app.bsky.feed.post",)),
]


async def _append_all(url: str, frames: list[bytes], batch: int) -> int:
    rows = [r for f in frames for r in decode_frame(f).rows]
    async with writer.connect(url) as store:
        cursor = await store.claim_cursor("ws://feed-test")
        last_id = cursor.last_id
        for i in range(0, len(rows), batch):
            last_id = await store.append(rows[i:i + batch], None, last_id, utc_now())
    return last_id


async def test_matches_agrees_with_sql(database):
    frames = relay_frames() + pds_frames()
    async with trio_asyncio.open_loop():
        head = await _append_all(database, frames, 500)
        async with reader.open_read_store(database) as store, store.session() as session:
            events = await session.event_range(0, head)
            assert [e.id for e in events] == list(range(1, head + 1))
            repos = sorted({e.repo for e in events if e.repo})[:3]
            for f in [*FILTERS, EventFilter(repos=tuple(repos)),
                      EventFilter(repos=tuple(repos[:1]), event_types=("commit",))]:
                page = await session.events(EventFilter(
                    limit=head, collections=f.collections, prefixes=f.prefixes,
                    repos=f.repos, event_types=f.event_types, action=f.action))
                sql_events = json.loads(b"[" + page.json + b"]")
                in_memory = [e for e in events if f.matches(e)]
                assert [e.id for e in in_memory] == [e["id"] for e in sql_events], f
                # The per-event JSON is byte-for-byte what /events pages are made of.
                assert b",".join(e.json for e in in_memory) == page.json
            assert len({e.event_type for e in events}) >= 3


async def test_feed_broadcasts_each_commit_once_in_order(database):
    frames = relay_frames()
    async with trio_asyncio.open_loop():
        async with trio.open_nursery() as nursery:
            feed = CommitFeed()
            await nursery.start(feed.run, Settings(database_url=database), {})
            fast = feed.subscribe(capacity=1000)
            slow = feed.subscribe(capacity=1)
            assert feed.subscribers == 2
            head = await _append_all(database, frames, 7)
            with trio.fail_after(10):
                await feed.wait_past(head - 1)
            fast.close()
            received = [e async for batch in fast.receive for e in batch.events]
            assert [e.id for e in received] == list(range(1, head + 1))
            # The slow one was cut off, not buffered without bound, and never held up the rest.
            assert slow.overflowed
            kept = [batch async for batch in slow.receive]
            assert len(kept) == 1 and kept[0].after_id == 0
            assert feed.subscribers == 0
            nursery.cancel_scope.cancel()
