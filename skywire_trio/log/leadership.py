"""Leadership of a singleton role (ingest, publisher, webhook delivery) through a session
advisory lock.

The lock is held on a dedicated connection and waited for *blocking*
(``pg_advisory_lock``), so a standby takes over the moment the leader's connection dies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import triopg

from .faults import UNAVAILABLE

# One key per role. Ingest's is not one of the writer's own locks (writer.WRITER_LOCKS),
# which the leader's writer connections take as well.
INGEST_LOCK = 0x736B7969  # "skyi"
PUBLISHER_LOCK = 0x736B7970  # "skyp"
DELIVERY_LOCK = 0x736B7764  # "skwd"
# How often the holder checks that its lock connection is still alive.
CHECK_SECONDS = 2.0


class LeadershipLost(ConnectionError):
    """The connection holding a role's lock failed: another instance may lead now."""


@asynccontextmanager
async def lead(database_url: str, key: int) -> AsyncIterator[None]:
    """Wait until this process holds lock ``key``, then run the body while it does.

    The body is cancelled, and ``LeadershipLost`` raised, if the lock's connection fails.
    """
    async with triopg.connect(database_url) as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", key)
        lost = False
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal lost
                try:
                    while True:
                        await trio.sleep(CHECK_SECONDS)
                        with trio.fail_after(CHECK_SECONDS * 2):
                            await conn.fetchval("SELECT 1")
                except (*UNAVAILABLE, OSError, trio.TooSlowError):
                    lost = True
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
        if lost:
            raise LeadershipLost(f"lost the connection holding advisory lock {key:#x}")
