"""The ingest cursor for operators: show it, or move it while no writer runs."""

from __future__ import annotations

import psycopg

from .schema import conninfo
from .writer import WRITER_LOCKS, WriterActive


def show_cursor(database_url: str) -> dict[str, object] | None:
    """The cursor row, for an operator."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute("SELECT upstream, last_seq, last_id, updated_at FROM firehose_cursor")
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description], row,
                                                 strict=True))


def set_cursor(database_url: str, last_seq: int) -> None:
    """Point the cursor at ``last_seq`` (rewind or skip); refused while a writer runs."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        # Both writer locks: either one held means an ingest run still has a connection.
        locked = conn.execute("SELECT pg_try_advisory_lock(%s), pg_try_advisory_lock(%s)",
                              WRITER_LOCKS).fetchone()
        if not all(locked):
            conn.execute("SELECT pg_advisory_unlock_all()")
            raise WriterActive("the service is running (it holds the writer lock); stop it "
                               "first")
        try:
            cur = conn.execute("UPDATE firehose_cursor SET last_seq = %s, updated_at = now()",
                               (last_seq,))
            if cur.rowcount != 1:
                raise WriterActive("there is no cursor yet: start the service once first")
        finally:
            conn.execute("SELECT pg_advisory_unlock_all()")
