"""The batcher: frames from the reader into the log, 500 events or 100 ms at a time.

Each flush is one transaction (COPY + cursor update, see ``writer.LogStore.append``). Nothing
is acknowledged before that commit: if anything fails, ingestion restarts from the cursor
that was committed, and the relay replays the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import trio

from ..config import Settings
from ..firehose.codec import Frame, Row
from ..stats import IngestStats
from ..types import Cursor
from .writer import LogStore


def utc_now() -> datetime:
    """The wall clock, in UTC (the default clock for ``indexed_at``)."""
    return datetime.now(UTC)


async def _next(receive: trio.MemoryReceiveChannel[Frame]) -> Frame:
    """The next frame; without yielding to the scheduler when one is already buffered."""
    # Receiving one frame per scheduler tick let the reader refill the buffer as fast as
    # it drained, so it stayed full and the reader sat blocked through every commit (~20%
    # of the service's time idle, measured with a trio instrument).
    try:
        return receive.receive_nowait()
    except trio.WouldBlock:
        return await receive.receive()


async def _collect(first: Frame, receive: trio.MemoryReceiveChannel[Frame],
                   settings: Settings) -> tuple[list[Frame], bool]:
    """Gather frames after ``first`` until the batch is full or its time is up.

    Returns the frames and whether the channel has ended.
    """
    frames = [first]
    events = len(first.rows)
    with trio.move_on_after(settings.batch_interval):
        while events < settings.batch_size:
            try:
                frame = await _next(receive)
            except trio.EndOfChannel:
                return frames, True
            frames.append(frame)
            events += len(frame.rows)
    return frames, False


async def run_batcher(receive: trio.MemoryReceiveChannel[Frame], store: LogStore,
                      cursor: Cursor, settings: Settings, stats: IngestStats,
                      clock: Callable[[], datetime] = utc_now) -> None:
    """Write everything received to the log until the channel ends, then return."""
    last_id = cursor.last_id
    async with receive:
        ended = False
        while not ended:
            try:
                first = await receive.receive()
            except trio.EndOfChannel:
                return
            stats.buffered_frames = receive.statistics().current_buffer_used + 1
            frames, ended = await _collect(first, receive, settings)
            rows: list[Row] = [row for frame in frames for row in frame.rows]
            seqs = [frame.seq for frame in frames if frame.seq is not None]
            started = trio.current_time()
            last_id = await store.append(rows, seqs[-1] if seqs else None, last_id, clock())
            stats.batch_seconds_total += trio.current_time() - started
            stats.batches_committed += 1
            stats.events_committed += len(rows)
            stats.last_id = last_id
            stats.last_seq = seqs[-1] if seqs else stats.last_seq
            stats.last_event_time = rows[-1].event_time or stats.last_event_time
            stats.last_commit_monotonic = trio.current_time()
            stats.buffered_frames = receive.statistics().current_buffer_used
