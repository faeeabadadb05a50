"""The ingest supervisor and the ingest nursery it restarts.

    supervise("ingest"): forever { open ingest nursery; on failure: log, back off, repeat }
    └── ingest nursery
        ├── reader   websocket -> decoded frames -> bounded channel
        └── batcher  channel -> COPY + cursor, one transaction per batch, over two
                     connections (the COPY of one batch overlaps the COMMIT of the last)

Every failure -- upstream gone, buffer overflow, database down, a bug -- ends in the same
place: the nursery is torn down and a new one starts from the cursor committed in Postgres.
That one path is what makes crash-and-replay trustworthy, so there is no other. What is
*reported* differs (supervise.py): the faults named in ``TRANSIENT`` are a warning line; a
bug is logged with its traceback, counted as a crash and restarted after a longer backoff.

On shutdown the reader stops taking frames, the batcher commits what it holds, and the
supervisor stops (at once if it is between runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import trio

from .config import Settings
from .errors import describe
from .firehose.codec import Frame
from .firehose.reader import BufferOverflow, Receivers, UpstreamError, read_upstream
from .log import writer
from .log.batcher import run_batcher, utc_now
from .shutdown import Shutdown
from .stats import IngestStats
from .supervise import TRANSIENT, supervise

log = logging.getLogger(__name__)

OpenStore = Callable[[str], AbstractAsyncContextManager[writer.LogStore]]
# Retried quietly: besides network and database faults, the upstream misbehaving, our own
# buffer overflowing, and another instance holding the writer lock (we are the standby).
INGEST_TRANSIENT = TRANSIENT + (UpstreamError, BufferOverflow, writer.WriterActive,
                                writer.ConcurrentWriter)


async def run_ingest_once(settings: Settings, stores: Sequence[writer.LogStore],
                          stats: IngestStats, clock: Callable[[], datetime] = utc_now,
                          shutdown: Shutdown | None = None,
                          receivers: Receivers | None = None) -> None:
    """One ingest nursery: resume after the committed cursor until something fails.

    Runs only while this instance holds the ingest lock (``leaders.py``). ``stores``: the
    writer's connections, each holding its own writer lock as well, and the cursor's
    ``last_id`` check stops a second writer all the same. When ``shutdown`` begins, the
    reader stops and the batcher commits what it holds.
    """
    shutdown = shutdown or Shutdown()
    for role, store in enumerate(stores):
        await store.lock_writer(role)
    cursor = await stores[0].claim_cursor(settings.subscribe_url, settings.reset_cursor)
    stats.last_id, stats.last_seq = cursor.last_id, cursor.last_seq
    stats.ingest_started = trio.current_time()
    send, receive = trio.open_memory_channel[Frame](settings.buffer_frames)
    upstream_fault: UpstreamError | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_batcher, receive, stores, cursor, settings, stats, clock)
        async with send:
            try:
                with shutdown.intake():
                    await read_upstream(settings, cursor.last_seq, send, stats, receivers)
            except UpstreamError as exc:
                # Not fatal to what is buffered: closing `send` lets the batcher commit
                # it before the nursery exits.
                upstream_fault = exc
    if upstream_fault is not None:
        raise upstream_fault


async def supervise_ingest(settings: Settings, stats: IngestStats,
                           open_store: OpenStore = writer.connect,
                           clock: Callable[[], datetime] = utc_now,
                           shutdown: Shutdown | None = None,
                           receivers: Receivers | None = None,
                           *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """Run ingestion, restarting it from the committed cursor after any failure.

    Runs until cancelled, or until ``shutdown`` begins and the last batch is committed.
    ``CursorMismatch`` (configuration, not a fault) stops the service with its message.
    """
    shutdown = shutdown or Shutdown()
    runs = 0
    running = False
    supervising = trio.CancelScope()
    # A standby that just became the leader has been "disconnected" only from now on.
    stats.disconnected_since = trio.current_time()

    async def ingest_once(ready: Callable[[], None]) -> None:
        nonlocal runs, running
        ready()  # the service does not wait for the upstream
        if runs:
            stats.reconnects += 1
        runs += 1
        running = True
        try:
            async with open_store(settings.database_url) as store, \
                    open_store(settings.database_url) as pipelined:
                await run_ingest_once(settings, (store, pipelined), stats, clock, shutdown,
                                      receivers)
        except Exception as exc:  # counted here, reported and retried by supervise
            stats.ingest_failed(describe(exc), trio.current_time())
            if isinstance(exc, UpstreamError):
                stats.upstream_errors += 1
            raise
        finally:
            running = False
        if shutdown.begun:  # the reader stopped and the last batch is committed
            supervising.cancel()
            await trio.lowlevel.checkpoint()

    async def stop_between_runs() -> None:
        await shutdown.wait()
        if not running:  # backing off: nothing in flight
            supervising.cancel()

    with supervising:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_between_runs)
            await supervise("ingest", ingest_once, settings, stats.tasks,
                            transient=INGEST_TRANSIENT, fatal=(writer.CursorMismatch,),
                            task_status=task_status)
