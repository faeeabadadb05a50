"""Reading the log: pages of events by id, the way every reader sees them.

The API, the websocket, the publisher, webhook delivery and the archive all read events
through here, so an event's JSON is produced in exactly one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import ParamSpec, TypeVar

import triopg

from ..timeouts import Timeouts
from ..types import (
    Archive,
    Cursor,
    EventFilter,
    LogEvent,
    Page,
    Partition,
    PartitionPolicy,
    PartitionStatus,
    Token,
)
from . import archives, partman, tokens
from .partition_store import list_partitions

# How long one read may take. Timed by the store's ``Timeouts``, not asyncpg's
# command_timeout: under trio-asyncio each statement's timer stays in the loop's heap,
# cancelled, until it would have fired, holding a copy of the caller's context, so every
# request stayed in memory for 10 s after its answer (a trio deadline each would keep a
# cancel scope as long: timeouts.py).
READ_TIMEOUT = 10.0

P = ParamSpec("P")
T = TypeVar("T")

# Postgres writes each event's JSON text by concatenation (about twice as cheap as
# jsonb_build_object, measured) and a whole page as one UTF-8 value, so the API neither
# parses stored records nor decodes and re-encodes rows: it wraps the bytes it receives.
# Deletes carry no record and no cid, as in Jetstream (concat_ws skips NULLs);
# `record_error` appears only when the record could not be stored, `sanitized` only when
# a field was stored NULL because it could not be stored as received.
EVENT_JSON = """
'{"id":' || id || ',"seq":' || coalesce(seq::text, 'null')
|| ',"did":' || coalesce(to_json(repo)::text, 'null')
|| ',"time_us":' || (extract(epoch FROM indexed_at) * 1000000)::bigint
|| coalesce(',"sanitized":' || to_json(sanitized)::text, '')
|| ',"kind":' || to_json(event_type)::text
|| CASE WHEN event_type = 'commit' THEN ',"commit":{' || concat_ws(',',
       '"rev":' || to_json(rev)::text, '"operation":' || to_json(action)::text,
       '"collection":' || to_json(collection)::text, '"rkey":' || to_json(rkey)::text,
       '"record":' || record::text, '"cid":' || to_json(cid)::text,
       '"record_error":' || to_json(record_error)::text) || '}}'
   ELSE ',' || to_json(event_type)::text || ':' || coalesce(record::text, 'null')
       || coalesce(',"record_error":' || to_json(record_error)::text, '') || '}'
   END"""

# One rule for the filters that only make sense for commits (collection, action):
# identity and account events pass them (consumers need them to see deletions and handle
# changes; an event_type filter can still exclude them), every other non-commit event
# (sync, info, ...) does not. types.EventFilter.matches is the same rule in memory.
_EXEMPT = "event_type IN ('identity', 'account')"
_NOT_COMMIT = "event_type <> 'commit'"


def _page_where(f: EventFilter) -> tuple[str, list[object]]:
    """The WHERE clause of a page matching ``f``: ``$1`` is ``since``, ``$2`` the limit."""
    args: list[object] = [f.since, f.limit]
    where = ["id > $1"]

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.collections or f.prefixes:
        parts = []
        if f.collections:
            parts.append(f"collection = ANY({arg(list(f.collections))}::text[])")
        if f.prefixes:
            parts.append(f"collection LIKE ANY({arg(list(f.prefixes))}::text[])")
        parts.append(_EXEMPT)
        where.append("(" + " OR ".join(parts) + ")")
    if f.repos:
        where.append(f"repo = ANY({arg(list(f.repos))}::text[])")
    if f.event_types:
        where.append(f"event_type = ANY({arg(list(f.event_types))}::text[])")
        if "commit" not in f.event_types:
            # The event-type index covers only this (migration 0008): said literally, the
            # planner can use it; commits are found through the id index.
            where.append(_NOT_COMMIT)
    if f.action:
        where.append(f"(action = {arg(f.action)} OR {_EXEMPT})")
    return " AND ".join(where), args


def event_query(f: EventFilter) -> tuple[str, list[object]]:
    """The SQL and arguments of one page of events matching ``f``."""
    where, args = _page_where(f)
    sql_text = (f"SELECT count(*), min(id), max(id), convert_to(string_agg(event, ',' "
                f"ORDER BY id), 'UTF8') FROM (SELECT id, {EVENT_JSON} AS event "
                f"FROM firehose_events WHERE {where} ORDER BY id LIMIT $2) page")
    return sql_text, args


# The columns of a LogEvent, in its field order.
_LOG_EVENT = (f"id, event_type, collection, repo, action, "
              f"(extract(epoch FROM indexed_at) * 1000000)::bigint, "
              f"convert_to({EVENT_JSON}, 'UTF8'), seq")
_RANGE_QUERY = f"SELECT {_LOG_EVENT} FROM firehose_events WHERE id > $1 AND id <= $2 ORDER BY id"

# The last id before the first event committed at or after $1: a binary search over ids
# (gapless, and committed in time order by the single writer), one index probe per step,
# in one round trip. Filtering by time instead would read a whole day's partition, which
# has no index on indexed_at. An empty range ends at the head.
_ID_BEFORE_TIME = """
WITH RECURSIVE head AS (SELECT coalesce(max(last_id), 0) + 1 AS past FROM firehose_cursor),
search(low, high) AS (
    SELECT coalesce((SELECT min(id) FROM firehose_events), past), past FROM head
  UNION ALL
    SELECT CASE WHEN e.indexed_at >= $1 THEN s.low ELSE (s.low + s.high) / 2 + 1 END,
           CASE WHEN e.indexed_at >= $1 THEN (s.low + s.high) / 2 ELSE s.high END
    FROM search s LEFT JOIN firehose_events e ON e.id = (s.low + s.high) / 2
    WHERE s.low < s.high
)
SELECT low - 1 FROM search WHERE low >= high"""


class ReadSession:
    """One pooled connection for the duration of one request or one read."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy, timeouts: Timeouts,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self._conn = conn
        self._timeouts = timeouts
        self._read_timeout = read_timeout

    async def _read(self, call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
                    ) -> T:
        """``call``, bounded: ``TimeoutError`` after ``read_timeout`` (a database fault)."""
        with self._timeouts.fail_after(self._read_timeout, "a statement"):
            return await call(*args, **kwargs)

    async def events(self, f: EventFilter) -> Page:
        """The events matching ``f``, in log order, as one JSON fragment."""
        sql_text, args = event_query(f)
        count, first, last, text = await self._read(self._conn.fetchrow, sql_text, *args)
        return Page(count, first, last, text or b"")

    async def matching_events(self, f: EventFilter) -> list[LogEvent]:
        """The page of events matching ``f`` as separate events (one message each)."""
        where, args = _page_where(f)
        rows = await self._read(
            self._conn.fetch,
            f"SELECT {_LOG_EVENT} FROM firehose_events WHERE {where} ORDER BY id LIMIT $2",
            *args)
        return [LogEvent(*row) for row in rows]

    async def id_before(self, time: datetime) -> int:
        """The id after which the events committed at or after ``time`` start.

        The head when nothing was committed that late; one less than the oldest retained
        id when everything is that late.
        """
        return await self._read(self._conn.fetchval, _ID_BEFORE_TIME, time)

    async def event_range(self, after_id: int, last_id: int) -> list[LogEvent]:
        """Every event with ``after_id < id <= last_id``, in id order, each with its JSON."""
        rows = await self._read(self._conn.fetch, _RANGE_QUERY, after_id, last_id)
        return [LogEvent(*row) for row in rows]

    async def cursor(self) -> Cursor | None:
        """The committed cursor (also a liveness probe of the database)."""
        row = await self._read(self._conn.fetchrow,
                               "SELECT upstream, last_seq, last_id FROM firehose_cursor")
        return None if row is None else Cursor(row[0], row[1], row[2])

    async def head(self) -> int:
        """The id of the last committed event (0 for an empty log)."""
        return await self._read(self._conn.fetchval,
                                "SELECT coalesce(max(last_id), 0) FROM firehose_cursor")

    async def token(self, token_hash: bytes) -> Token | None:
        """The token with this keyed hash, revoked or not."""
        return await self._read(tokens.find_token, self._conn, token_hash)

    async def touch_token(self, name: str) -> None:
        """Record that a token was used just now."""
        await self._read(tokens.touch_token, self._conn, name)

    async def partitions(self) -> list[Partition]:
        """Every partition of the log, oldest first, the default partition last."""
        return await self._read(list_partitions, self._conn)

    async def archives(self) -> dict[date, Archive]:
        """The recorded Parquet archive of each day, by day."""
        return await self._read(archives.archived_days, self._conn)

    async def partition_status(self, policy: PartitionPolicy, today: date) -> PartitionStatus:
        """Where the partitions stand under ``policy`` (manager, retention, alarms)."""
        return await self._read(partman.status, self._conn, policy, today)

    async def oldest_id(self) -> int | None:
        """The smallest id still in the log (older days may have been dropped)."""
        return await self._read(self._conn.fetchval, "SELECT min(id) FROM firehose_events")

    async def default_rows(self) -> int:
        """Rows in the default partition (normally none)."""
        return await self._read(self._conn.fetchval,
                                "SELECT count(*) FROM firehose_events_default")


class ReadStore:
    """Read-side access: a small pool, one connection per request."""

    def __init__(self, pool: triopg._triopg.TrioPoolProxy, timeouts: Timeouts) -> None:
        self._pool = pool
        self._timeouts = timeouts

    @asynccontextmanager
    async def session(self) -> AsyncIterator[ReadSession]:
        """A connection from the pool for one request."""
        async with self._pool.acquire() as conn:
            yield ReadSession(conn, self._timeouts)


async def _keep(conn: object) -> None:
    """A connection returns to the pool as it is."""


@asynccontextmanager
async def open_read_store(database_url: str, size: int = 4) -> AsyncIterator[ReadStore]:
    """A pool for readers. ``min_size=0``: they start even while the database is down."""
    # reset=_keep: pooled connections hold no session state (LISTEN uses its own
    # connection), so asyncpg's reset query on every release is a wasted round trip.
    # No command_timeout, and the two lifetimes are 0, because each arms an asyncio timer
    # (per statement, per release, per cached statement) and trio-asyncio's timers copy the
    # caller's contextvars: every timer kept the request that last used the connection
    # (quart's request context) alive until it would have fired, 10 s to 5 minutes. 1,000
    # closed long-polls stayed in memory that long. Reads are bounded by ``_read``.
    async with triopg.create_pool(database_url, min_size=0, max_size=size, reset=_keep,
                                  max_inactive_connection_lifetime=0,
                                  max_cached_statement_lifetime=0) as pool:
        with Timeouts() as timeouts:
            yield ReadStore(pool, timeouts)


@asynccontextmanager
async def connect(database_url: str, timeout: float) -> AsyncIterator[ReadSession]:
    """A connection of its own, outside the pool (the API's health probe), with ``timeout``
    for connecting and for each statement."""
    async with triopg.connect(database_url, timeout=timeout) as conn:
        with Timeouts() as timeouts:
            yield ReadSession(conn, timeouts, timeout)
