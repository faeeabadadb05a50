"""The NATS publisher's position in the log: the last id JetStream acknowledged.

Saved only after the acknowledgements (at-least-once); read at start, then reconciled with
the id carried by the stream's last message (``fanout/publisher.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import triopg


class PublisherCursorStore:
    """One connection holding the publisher's cursor row for one stream."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy, stream: str) -> None:
        self._conn = conn
        self._stream = stream

    async def load(self) -> int | None:
        """The last acknowledged id, or None before the first save."""
        return await self._conn.fetchval(
            "SELECT last_id FROM publisher_cursor WHERE stream = $1", self._stream)

    async def save(self, last_id: int, skipped: int = 0) -> None:
        """Record that every id up to ``last_id`` is in the stream (``skipped`` of them
        were dropped by retention before they could be published)."""
        await self._conn.execute(
            "INSERT INTO publisher_cursor (stream, last_id, skipped) VALUES ($1, $2, $3) "
            "ON CONFLICT (stream) DO UPDATE SET last_id = $2, "
            "skipped = publisher_cursor.skipped + $3, updated_at = now()",
            self._stream, last_id, skipped)


@asynccontextmanager
async def connect(database_url: str, stream: str) -> AsyncIterator[PublisherCursorStore]:
    """One connection (inside a trio-asyncio loop) for the cursor of ``stream``."""
    async with triopg.connect(database_url, command_timeout=10) as conn:
        yield PublisherCursorStore(conn, stream)
