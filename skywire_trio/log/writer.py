"""The log's single writer: the writer locks, the ingest cursor, and appending batches.

The hot path uses triopg (asyncpg under trio-asyncio): COPY for the batch and the cursor
update in the same transaction. triopg is unmaintained upstream, which is one more reason
to keep its use inside ``log/``.

A batch is written in three steps so that the batcher can pipeline two connections:
``stage`` (BEGIN, COPY the rows), ``move_cursor`` (the guarded cursor UPDATE, which waits
inside PostgreSQL until the predecessor batch's transaction has ended), ``commit``. See
docs/architecture.md for why this keeps the log exactly-once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import datetime

import trio
import triopg

from ..firehose.codec import Row
from ..timeouts import Timeouts
from ..types import Cursor
from .notify import NOTIFY_CHANNEL

COLUMNS = ("id", "seq", "repo", "event_type", "action", "collection", "rkey", "cid", "rev",
           "record", "record_error", "raw", "event_time", "sanitized", "indexed_at")
# Session-level advisory locks held by whoever writes the log (an ingest run, `cursor set`):
# a second instance waits as a standby instead of writing beside the first. An ingest run
# writes through two connections and each holds one of the two, so that a new writer (which
# needs both) cannot start while either connection of the old one is still alive.
WRITER_LOCK = 0x736B7977  # "skyw"
WRITER_LOCKS = (WRITER_LOCK, WRITER_LOCK + 1)

# The guarded cursor move, run after the batch's COPY. It has no WHERE clause on purpose:
# a WHERE on `last_id` would be evaluated against the row version in the statement's
# snapshot, which the predecessor batch (on the other connection, not yet committed) has
# already replaced, so the row would be skipped without waiting. Without one, the UPDATE
# waits for the predecessor's transaction to end (row lock); READ COMMITTED then computes
# the SET list from the row as that transaction left it: the cursor moves only if
# `last_id` is ours (the predecessor committed, nobody else wrote), and the caller checks
# the returned value. The NOTIFY is delivered only if this transaction commits.
_MOVE_CURSOR = """
WITH moved AS (
    UPDATE firehose_cursor SET
        last_seq = CASE WHEN last_id = $3 THEN coalesce($1, last_seq) ELSE last_seq END,
        last_id = CASE WHEN last_id = $3 THEN $2 ELSE last_id END,
        updated_at = now()
    RETURNING last_id)
SELECT last_id, pg_notify($4, last_id::text) FROM moved"""


@dataclasses.dataclass(frozen=True)
class Batch:
    """Rows to append after log id ``after``, and the upstream seq they bring the cursor to."""

    rows: Sequence[Row]
    last_seq: int | None
    after: int
    indexed_at: datetime

    @property
    def last_id(self) -> int:
        """The log id of the batch's last row (``after`` if it has none)."""
        return self.after + len(self.rows)


class CursorMismatch(RuntimeError):
    """The stored cursor belongs to a different upstream than the configured one."""


class ConcurrentWriter(RuntimeError):
    """The cursor moved under us: another process is writing the log."""


class WriterActive(RuntimeError):
    """Another session holds the writer lock: a service is ingesting into this database."""


# How long one step of the writer (a statement, or the wait for the predecessor batch) may
# take before the ingest run fails and restarts: a hung server must not hang ingest.
STATEMENT_TIMEOUT = 30.0


class LogStore:
    """One connection to the log, used by its single writer (the batcher)."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy, timeouts: Timeouts) -> None:
        self._conn = conn
        self._timeouts = timeouts

    def _bounded(self, what: str) -> AbstractContextManager[None]:
        """At most ``STATEMENT_TIMEOUT`` for ``what``; then ``TimeoutError`` (a transient
        fault).

        Timed by the store's ``Timeouts``, not asyncpg's ``command_timeout``: under
        trio-asyncio each statement's timeout timer stays in the loop's heap, cancelled,
        until it would have fired. At hundreds of small commits a second that was ~20,000
        dead timers (~100,000 objects) and garbage-collection pauses of up to 250 ms in the
        service. Nor a trio deadline each: that entry stays in trio's deadline heap for the
        30 s too, ~100 of them a second at live rates, and pins the memory a wave of
        connections used (timeouts.py).
        """
        return self._timeouts.fail_after(STATEMENT_TIMEOUT, what)

    async def lock_writer(self, role: int = 0) -> None:
        """Take writer lock ``role`` (0 or 1, one per writer connection) for this
        connection's life, or raise ``WriterActive``."""
        with self._bounded("taking the writer lock"):
            locked = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)",
                                               WRITER_LOCKS[role])
        if not locked:
            raise WriterActive("another skywire-trio instance is ingesting into this database")

    async def claim_cursor(self, upstream: str, reset: bool = False) -> Cursor:
        """Return the cursor for ``upstream``, creating the row on first start.

        A cursor recorded for another upstream is refused (seqs of different relays are
        unrelated) unless ``reset``, which starts the new upstream live and keeps log ids.
        """
        with self._bounded("claiming the cursor"):
            await self._conn.execute(
                "INSERT INTO firehose_cursor (upstream) VALUES ($1) ON CONFLICT DO NOTHING",
                upstream)
            row = await self._conn.fetchrow(
                "SELECT upstream, last_seq, last_id FROM firehose_cursor")
            if row["upstream"] != upstream:
                if not reset and row["last_seq"] is not None:
                    raise CursorMismatch(
                        f"the stored cursor (seq {row['last_seq']}) belongs to "
                        f"{row['upstream']}, not {upstream}; set SKYWIRE_RESET_CURSOR=true to "
                        "start over on the new upstream (log ids continue; upstream seqs "
                        "restart)")
                await self._conn.execute(
                    "UPDATE firehose_cursor SET upstream = $1, last_seq = NULL, "
                    "updated_at = now()", upstream)
                return Cursor(upstream, None, row["last_id"])
        return Cursor(upstream, row["last_seq"], row["last_id"])

    async def stage(self, batch: Batch) -> None:
        """Open the batch's transaction and COPY its rows (invisible until ``commit``)."""
        records = [(batch.after + i, *row, batch.indexed_at)
                   for i, row in enumerate(batch.rows, 1)]
        try:
            with self._bounded("staging a batch (BEGIN, COPY)"):
                await self._conn.execute("BEGIN")
                await self._conn.copy_records_to_table(
                    "firehose_events", records=records, columns=COLUMNS)
        except Exception:
            await self.rollback()
            raise

    async def move_cursor(self, batch: Batch) -> None:
        """Move the cursor to the end of the staged batch, in its transaction.

        Waits for the transaction holding the cursor row (the predecessor batch's) to end.
        Raises ``ConcurrentWriter``, after rolling back, if the committed last id is not
        ``batch.after`` (a second writer, or a predecessor that did not commit).
        """
        with self._bounded("moving the cursor (after the batch before)"):
            moved = await self._conn.fetchval(_MOVE_CURSOR, batch.last_seq, batch.last_id,
                                              batch.after, NOTIFY_CHANNEL)
        if moved != batch.last_id:
            await self.rollback()
            raise ConcurrentWriter(f"log id moved past {batch.after}, or the batch before it "
                                   "did not commit: another writer is active")

    async def commit(self) -> None:
        """Commit the staged batch (synchronously: durable when this returns)."""
        with self._bounded("COMMIT"):
            await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        """Abandon the staged batch, if there is one."""
        if self._conn.is_in_transaction():
            # Shielded (it cleans up after a failure or cancellation), but never for long.
            with trio.CancelScope(shield=True), self._bounded("ROLLBACK"):
                await self._conn.execute("ROLLBACK")

    async def append(self, rows: Sequence[Row], last_seq: int | None, last_id: int,
                     indexed_at: datetime) -> int:
        """Append ``rows`` after log id ``last_id`` and move the cursor, in one transaction.

        Returns the new last id. Raises ``ConcurrentWriter`` if the committed last id is not
        ``last_id`` (a second writer), in which case nothing is written.
        """
        batch = Batch(rows, last_seq, last_id, indexed_at)
        await self.stage(batch)
        try:
            await self.move_cursor(batch)
            await self.commit()
        except Exception:
            await self.rollback()
            raise
        return batch.last_id


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[LogStore]:
    """Open one connection (inside a trio-asyncio loop) and yield a ``LogStore``."""
    # No command_timeout: LogStore bounds each step itself (see LogStore._bounded).
    async with triopg.connect(database_url) as conn:
        with Timeouts() as timeouts:
            yield LogStore(conn, timeouts)
