"""The log's single writer: the writer lock, the ingest cursor, and appending batches.

The hot path uses triopg (asyncpg under trio-asyncio): COPY for the batch and the cursor
update in the same transaction. triopg is unmaintained upstream, which is one more reason
to keep its use inside ``log/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import triopg

from ..firehose.codec import Row
from ..types import Cursor
from .notify import NOTIFY_CHANNEL

COLUMNS = ("id", "seq", "repo", "event_type", "action", "collection", "rkey", "cid", "rev",
           "record", "record_error", "raw", "event_time", "indexed_at")
# Session-level advisory lock held by whoever writes the log (an ingest run, `cursor set`):
# a second instance waits as a standby instead of writing beside the first.
WRITER_LOCK = 0x736B7977  # "skyw"


class CursorMismatch(RuntimeError):
    """The stored cursor belongs to a different upstream than the configured one."""


class ConcurrentWriter(RuntimeError):
    """The cursor moved under us: another process is writing the log."""


class WriterActive(RuntimeError):
    """Another session holds the writer lock: a service is ingesting into this database."""


class LogStore:
    """One connection to the log, used by its single writer (the batcher)."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy) -> None:
        self._conn = conn

    async def lock_writer(self) -> None:
        """Take the writer lock for this connection's life, or raise ``WriterActive``."""
        if not await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", WRITER_LOCK):
            raise WriterActive("another skywire-trio instance is ingesting into this database")

    async def claim_cursor(self, upstream: str, reset: bool = False) -> Cursor:
        """Return the cursor for ``upstream``, creating the row on first start.

        A cursor recorded for another upstream is refused (seqs of different relays are
        unrelated) unless ``reset``, which starts the new upstream live and keeps log ids.
        """
        await self._conn.execute(
            "INSERT INTO firehose_cursor (upstream) VALUES ($1) ON CONFLICT DO NOTHING", upstream)
        row = await self._conn.fetchrow("SELECT upstream, last_seq, last_id FROM firehose_cursor")
        if row["upstream"] != upstream:
            if not reset and row["last_seq"] is not None:
                raise CursorMismatch(
                    f"the stored cursor (seq {row['last_seq']}) belongs to {row['upstream']}, "
                    f"not {upstream}; set SKYWIRE_RESET_CURSOR=true to start over on the new "
                    "upstream (log ids continue; upstream seqs restart)")
            await self._conn.execute(
                "UPDATE firehose_cursor SET upstream = $1, last_seq = NULL, updated_at = now()",
                upstream)
            return Cursor(upstream, None, row["last_id"])
        return Cursor(upstream, row["last_seq"], row["last_id"])

    async def append(self, rows: Sequence[Row], last_seq: int | None, last_id: int,
                     indexed_at: datetime) -> int:
        """Append ``rows`` after log id ``last_id`` and move the cursor, in one transaction.

        Returns the new last id. Raises ``ConcurrentWriter`` if the committed last id is not
        ``last_id`` (a second writer), in which case nothing is written.
        """
        records = [(last_id + i, *row, indexed_at) for i, row in enumerate(rows, 1)]
        new_last_id = last_id + len(records)
        async with self._conn.transaction():
            status = await self._conn.execute(
                "UPDATE firehose_cursor SET last_seq = coalesce($1, last_seq), last_id = $2, "
                "updated_at = now() WHERE last_id = $3", last_seq, new_last_id, last_id)
            if status != "UPDATE 1":
                raise ConcurrentWriter(f"log id moved past {last_id}: another writer is active")
            await self._conn.copy_records_to_table(
                "firehose_events", records=records, columns=COLUMNS)
            # Wakes the readers (long-polls, ...); delivered only if the transaction commits.
            await self._conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL,
                                     str(new_last_id))
        return new_last_id


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[LogStore]:
    """Open one connection (inside a trio-asyncio loop) and yield a ``LogStore``."""
    # command_timeout bounds a statement on a hung server; the supervisor then restarts.
    async with triopg.connect(database_url, command_timeout=30) as conn:
        yield LogStore(conn)
