"""The asyncio loop that asyncpg and nats-py run in, inside trio.

trio-asyncio's default exception handler raises every error asyncio reports into the loop's
nursery, which ends the service. That is right for an error in a callback, whose state may
now be wrong, but not for an *orphaned* future: one that was given an exception after every
task that could await it was gone. asyncpg makes such a future when a connection attempt is
cancelled as its socket opens (``TLSUpgradeProto.on_data`` then fails with "unexpected
connection_lost() call" and nobody reads it); a database outage with connection timeouts
makes that happen, and it once stopped the whole service in CI. The error has no owner left
to tell, so it is logged (and shown in ``/health``'s recent warnings) and the service runs on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_asyncio

log = logging.getLogger("skywire_trio.aioloop")


def _report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if "future" in context:  # asyncio's message for a future or task collected unread
        log.warning("asyncio: %s: %r", context.get("message"), context.get("exception"))
        return
    loop.default_exception_handler(context)  # trio-asyncio's: raise to the supervisor


@asynccontextmanager
async def open_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """``trio_asyncio.open_loop()`` that logs orphaned futures' errors instead of raising."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_report)
        yield loop
