"""Capture a live firehose into a recording that ``replay`` can serve."""

from __future__ import annotations

import logging
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .framefile import FrameWriter
from .receiver import WEBSOCKET_MAX_MESSAGE

log = logging.getLogger(__name__)


async def record(url: str, path: Path, limit: int | None = None) -> int:
    """Append every binary message from ``url`` to ``path`` until cancelled, closed or
    ``limit`` frames; returns the number of frames written."""
    writer = FrameWriter(path)
    count = 0
    try:
        async with open_websocket_url(url, max_message_size=WEBSOCKET_MAX_MESSAGE) as ws:
            log.info("recording %s into %s", url, path)
            while limit is None or count < limit:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    writer.write(message)
                    count += 1
    except ConnectionClosed as exc:
        log.info("upstream closed: %s", exc.reason)
    finally:
        writer.close()
        log.info("recorded %d frames", count)
    return count


async def record_until_signal(url: str, path: Path, limit: int | None = None) -> int:
    """``record`` that stops cleanly on SIGINT or SIGTERM."""
    import signal

    result = 0
    async with trio.open_nursery() as nursery:
        async def run() -> None:
            nonlocal result
            result = await record(url, path, limit)
            nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return result
