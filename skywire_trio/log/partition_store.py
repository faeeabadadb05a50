"""Partition DDL and listings: what the partition manager and the listings run.

DDL on the log waits at most ``LOCK_TIMEOUT_MS`` for a lock, so it never holds up the
writer (whose batches take ~10-50 ms) for longer than about one batch interval.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, timedelta

import triopg

from ..types import PARTITION_PREFIX, Partition, day_start, partition_name

LOCK_TIMEOUT_MS = 100


class PartitionStore:
    """Partition maintenance and listings on one connection."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy) -> None:
        self._conn = conn

    @property
    def conn(self) -> triopg._triopg.TrioConnectionProxy:
        """The connection, for the other partition modules (partitions, partman)."""
        return self._conn

    async def partitions(self) -> list[Partition]:
        """Every partition of the log, oldest first, the default partition last."""
        return await list_partitions(self._conn)

    async def default_days(self) -> list[date]:
        """The UTC days of the rows sitting in the default partition."""
        return await default_days(self._conn)

    async def create_partition(self, day: date) -> int:
        """Create the partition for ``day``; see the module-level ``create_partition``."""
        return await create_partition(self._conn, day)

    async def drop_partition(self, name: str) -> None:
        """Drop one daily partition (never the default one), under a short lock timeout."""
        suffix = name[len(PARTITION_PREFIX):]
        if not name.startswith(PARTITION_PREFIX) or not suffix.isdigit():
            raise ValueError(f"{name!r} is not a daily partition")
        async with self._conn.transaction():
            await self._conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            await self._conn.execute(f"DROP TABLE {name}")

    async def default_rows(self) -> int:
        """Rows in the default partition (normally none)."""
        return await self._conn.fetchval("SELECT count(*) FROM firehose_events_default")


async def list_partitions(conn: triopg._triopg.TrioConnectionProxy) -> list[Partition]:
    """Every partition of the log, oldest first, the default partition last."""
    # Row counts are the statistics' live-tuple estimate (cheap, no scan), except for the
    # default partition, counted exactly: any row there is something an operator must see.
    rows = await conn.fetch(
        "SELECT c.relname, CASE WHEN c.relname = 'firehose_events_default' "
        "THEN (SELECT count(*) FROM firehose_events_default) "
        "ELSE pg_stat_get_live_tuples(c.oid) END, pg_total_relation_size(c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'firehose_events'::regclass")
    return sorted((Partition.named(r[0], r[1], r[2]) for r in rows),
                  key=lambda p: (p.lower is None, p.name))


async def default_days(conn: triopg._triopg.TrioConnectionProxy) -> list[date]:
    """The UTC days of the rows sitting in the default partition."""
    rows = await conn.fetch(
        "SELECT DISTINCT (indexed_at AT TIME ZONE 'UTC')::date FROM firehose_events_default "
        "ORDER BY 1")
    return [row[0] for row in rows]


async def create_partition(conn: triopg._triopg.TrioConnectionProxy, day: date) -> int:
    """Create the partition for ``day``, moving its rows out of the default partition.

    Built beside the table and attached (SHARE UPDATE EXCLUSIVE on the parent, unlike
    CREATE TABLE ... PARTITION OF), under a short lock timeout so that it never queues
    in front of the writer for long; a timeout raises and the next pass retries.
    Returns how many rows were moved from the default partition.
    """
    name = partition_name(day)
    lower, upper = day_start(day).isoformat(), day_start(day + timedelta(days=1)).isoformat()
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        # Names and bounds come from dates, never from input.
        await conn.execute(
            f"CREATE TABLE {name} (LIKE firehose_events INCLUDING DEFAULTS INCLUDING "
            "CONSTRAINTS)")
        status = await conn.execute(
            f"WITH moved AS (DELETE FROM firehose_events_default WHERE indexed_at >= "
            f"'{lower}' AND indexed_at < '{upper}' RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved")
        await conn.execute(
            f"ALTER TABLE firehose_events ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{lower}') TO ('{upper}')")
    return int(status.split()[-1])


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[PartitionStore]:
    """Open one connection (inside a trio-asyncio loop) and yield a ``PartitionStore``."""
    async with triopg.connect(database_url, command_timeout=30) as conn:
        yield PartitionStore(conn)
