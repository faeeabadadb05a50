"""A statement that hangs ends with TimeoutError, in the readers and in the writer.

Both are bounded by timeouts.Timeouts instead of asyncpg's command_timeout (whose timers
kept each caller's context alive after the statement). A lock held by another session makes
the statement wait, on a real database.
"""

from __future__ import annotations

import psycopg
import pytest
import trio
import trio_asyncio

from skywire_trio.log import reader, writer
from skywire_trio.log.batcher import utc_now

BOUND = 0.5


async def test_a_read_that_waits_too_long_is_a_timeout(database):
    with psycopg.connect(database) as blocker:
        blocker.execute("LOCK TABLE firehose_cursor IN ACCESS EXCLUSIVE MODE")
        async with trio_asyncio.open_loop(), reader.connect(database, BOUND) as session:
            started = trio.current_time()
            with pytest.raises(TimeoutError, match="a statement took longer than 0.5s"):
                await session.head()
            assert BOUND <= trio.current_time() - started < BOUND + 2
            blocker.rollback()  # the lock goes; the same session reads again
            assert await session.head() == 0


async def test_a_write_that_waits_too_long_is_a_timeout(database, monkeypatch):
    monkeypatch.setattr(writer, "STATEMENT_TIMEOUT", BOUND)
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        cursor = await store.claim_cursor("ws://bounds-test")
        with psycopg.connect(database) as blocker:
            # The cursor row is locked, as by a predecessor batch that never commits.
            blocker.execute("SELECT * FROM firehose_cursor FOR UPDATE")
            started = trio.current_time()
            with pytest.raises(TimeoutError, match="moving the cursor"):
                await store.append([], None, cursor.last_id, utc_now())
            assert BOUND <= trio.current_time() - started < BOUND + 2
        # Rolled back: nothing was committed, and the store writes once the lock is gone.
        assert await store.append([], None, cursor.last_id, utc_now()) == cursor.last_id
