"""The batcher: frames from the reader into the log, by group commit over two connections.

A batch ends when it holds ``SKYWIRE_BATCH_SIZE`` events, when no frame has arrived for
``SKYWIRE_BATCH_LINGER`` (a few milliseconds), or ``SKYWIRE_BATCH_INTERVAL`` after its first
frame, whichever comes first. At live rates batches are small and committed within
milliseconds; under a backlog they are full.

Each batch is one transaction: COPY of its rows, then the guarded cursor UPDATE, then a
synchronous COMMIT (``writer.LogStore``). Batches alternate between two connections so that
the COPY of batch N+1 overlaps the COMMIT of batch N; PostgreSQL orders the commits (batch
N+1's cursor UPDATE waits for batch N's transaction and only matches if it committed), so
the log is still a prefix of the batches in order, each with its cursor. A batch the log
refuses for its data is narrowed to the frames at fault (``narrow``). Nothing is
acknowledged before a commit: if anything fails, ingestion restarts from the cursor that was
committed, and the relay replays the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import trio

from ..config import Settings
from ..firehose.codec import Frame, Row
from ..stats import IngestStats
from ..types import Cursor
from .narrow import REFUSED_DATA, narrow
from .writer import Batch, LogStore

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """The wall clock, in UTC (the default clock for ``indexed_at``)."""
    return datetime.now(UTC)


async def _collect(receive: trio.MemoryReceiveChannel[Frame],
                   settings: Settings) -> tuple[list[Frame], bool]:
    """Wait for a frame, then gather more until the batch is full, its input has been idle
    for the linger, or its interval is up.

    Returns the frames (none if the channel ended first) and whether the channel has ended.
    """
    try:
        first = await receive.receive()
    except trio.EndOfChannel:
        return [], True
    frames = [first]
    events = len(first.rows)
    with trio.move_on_after(settings.batch_interval):
        while events < settings.batch_size:
            try:
                # Frames already buffered are taken without yielding: one frame per
                # scheduler tick let the reader refill the buffer as fast as it drained,
                # so it sat blocked through every commit (~20% of the service idle).
                frame = receive.receive_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(settings.batch_linger) as idle:
                    try:
                        frame = await receive.receive()
                    except trio.EndOfChannel:
                        return frames, True
                if idle.cancelled_caught:
                    break
            except trio.EndOfChannel:
                return frames, True
            frames.append(frame)
            events += len(frame.rows)
    return frames, False


def _top_up(frames: list[Frame], receive: trio.MemoryReceiveChannel[Frame],
            settings: Settings) -> bool:
    """Add what arrived while the batch waited for a connection (up to the batch size,
    without waiting); returns whether the channel has ended."""
    events = sum(len(frame.rows) for frame in frames)
    while events < settings.batch_size:
        try:
            frame = receive.receive_nowait()
        except trio.WouldBlock:
            return False
        except trio.EndOfChannel:
            return True
        frames.append(frame)
        events += len(frame.rows)
    return False


@dataclasses.dataclass
class _InFlight:
    """A staged batch on its way to COMMIT, and the points its successor waits for."""

    batch: Batch
    frames: int
    started: float
    cursor_moved: trio.Event = dataclasses.field(default_factory=trio.Event)
    committed: trio.Event = dataclasses.field(default_factory=trio.Event)


def _batch(frames: Sequence[Frame], after: int, indexed_at: datetime) -> Batch:
    rows: list[Row] = [row for frame in frames for row in frame.rows]
    seqs = [frame.seq for frame in frames if frame.seq is not None]
    return Batch(rows, seqs[-1] if seqs else None, after, indexed_at)


async def _flush(nursery: trio.Nursery, store: LogStore, frames: list[Frame], batch: Batch,
                 previous: _InFlight | None, settings: Settings,
                 stats: IngestStats) -> _InFlight:
    """Stage ``batch`` on ``store`` (BEGIN + COPY, while ``previous`` may still be committing)
    and start its commit; returns it, for the next batch to wait on."""
    current = _InFlight(batch, len(frames), trio.current_time())
    try:
        await store.stage(batch)
    except REFUSED_DATA as exc:
        # Refused for its data (and rolled back): once the batches before it are in, it is
        # stored half by half and the frames at fault are dead-lettered, right here.
        if previous is not None:
            await previous.committed.wait()
        appended = await narrow(store, frames, batch.after, batch.indexed_at,
                                settings.deadletter_dir, exc)
        current.batch = dataclasses.replace(batch, rows=appended.rows)
        stats.frames_rejected += appended.refused
        current.cursor_moved.set()
        _committed(current, stats)
        current.committed.set()
        return current
    nursery.start_soon(_commit, store, current, previous, settings, stats)
    return current


async def _commit(store: LogStore, current: _InFlight, previous: _InFlight | None,
                  settings: Settings, stats: IngestStats) -> None:
    """Move the cursor and commit, strictly after ``previous``."""
    if previous is not None:
        # Our UPDATE must reach PostgreSQL after the predecessor's has taken the cursor
        # row, or it would find the old last_id and fail instead of waiting for it.
        await previous.cursor_moved.wait()
    await store.move_cursor(current.batch)  # returns once the predecessor has committed
    current.cursor_moved.set()
    if settings.test_hold_commit:
        log.warning("test hook: holding batch ids %d-%d before COMMIT for %gs",
                    current.batch.after + 1, current.batch.last_id, settings.test_hold_commit)
        await trio.sleep(settings.test_hold_commit)
    await store.commit()
    if previous is not None:
        await previous.committed.wait()  # committed in order; report in order too
    _committed(current, stats)
    current.committed.set()


def _committed(current: _InFlight, stats: IngestStats) -> None:
    batch = current.batch
    now = trio.current_time()
    stats.batch_seconds_total += now - current.started
    stats.batches_committed += 1
    stats.events_committed += len(batch.rows)
    stats.last_id = batch.last_id
    stats.last_seq = batch.last_seq if batch.last_seq is not None else stats.last_seq
    if batch.rows:
        stats.last_event_time = batch.rows[-1].event_time or stats.last_event_time
    stats.committed(now, stats.buffered_frames > 0)


async def run_batcher(receive: trio.MemoryReceiveChannel[Frame], stores: Sequence[LogStore],
                      cursor: Cursor, settings: Settings, stats: IngestStats,
                      clock: Callable[[], datetime] = utc_now) -> None:
    """Write everything received to the log until the channel ends, then return.

    ``stores`` are the writer's connections (two for a pipeline; one works, serially).
    """
    last_id = cursor.last_id
    # The batch last staged on each connection: a connection takes a new batch only once
    # its previous one has committed, so at most len(stores) batches are in flight.
    on_connection: list[_InFlight | None] = [None] * len(stores)
    previous: _InFlight | None = None
    async with receive, trio.open_nursery() as nursery:
        for turn in itertools.cycle(range(len(stores))):
            frames, ended = await _collect(receive, settings)
            if frames:
                stats.buffered_frames = receive.statistics().current_buffer_used + len(frames)
                waiting_for = on_connection[turn]
                if waiting_for is not None and not waiting_for.committed.is_set():
                    await waiting_for.committed.wait()
                    ended = _top_up(frames, receive, settings) or ended
                batch = _batch(frames, last_id, clock())
                previous = await _flush(nursery, stores[turn], frames, batch, previous,
                                        settings, stats)
                on_connection[turn] = previous
                last_id = previous.batch.last_id
                stats.buffered_frames = receive.statistics().current_buffer_used
            if ended:
                break
