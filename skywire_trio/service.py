"""The service nursery: everything ``python -m skywire_trio run`` keeps alive.

    service nursery (until SIGINT/SIGTERM)                       roles that run it
    ├── commit-feed        follows commits for every in-process reader     every role
    │                      (log/notify.py)
    ├── progress           samples stats for the status page, logs a       every role
    │                      progress line
    ├── api                quart-trio app on hypercorn's trio worker       every role
    │                      (api/server.py)
    ├── partition-manager  premakes daily partitions on a timer            all, ingest
    ├── ingest-leader      waits for the ingest lock, then runs the        all, ingest
    │                      ingest supervisor (leaders.py, ingest.py)
    ├── publisher-leader   waits for the publisher lock, then publishes    all, publisher
    │                      the log to NATS JetStream (fanout/)             (SKYWIRE_NATS_URL)
    └── delivery           webhook subscriptions, leader only              all, publisher
                           (delivery/manager.py)

The API sits beside the supervisors, not inside them, so consumers keep reading while
ingestion restarts, and a standby instance serves reads while it waits for a lock.

Shutdown is ordered. SIGTERM (or SIGINT) begins it: intake stops (the upstream reader,
the HTTP listeners, waiting long-polls, the partition manager's timer, the publisher and
webhook delivery, which resume from their saved positions next time, and a standby's wait
for a lock) while what was taken in finishes (requests being answered, the batch in the
channel, which is committed). Whatever is still running ``SKYWIRE_SHUTDOWN_GRACE`` seconds
later is cancelled; a second signal cancels at once.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial

import trio

from . import aioloop, gctune
from .api.server import serve_api
from .api.status_page import StatusSources
from .config import Settings, mask_password
from .delivery.manager import run_delivery
from .firehose.reader import Receivers, open_receivers
from .ingest import OpenStore, supervise_ingest
from .leaders import lead_role
from .log import reader, writer
from .log.batcher import utc_now
from .log.leadership import INGEST_LOCK, PUBLISHER_LOCK
from .log.notify import CommitFeed
from .log.partitions import Archiver, check_manager, manage_partitions, policy_of
from .progress import History, RecentWarnings, watch_progress
from .shutdown import Shutdown
from .stats import DeliveryStats, IngestStats, PublisherStats, Roles

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Running:
    """What a started service reports: its live stats and the API's URL."""

    stats: IngestStats
    api_url: str
    roles: Roles = dataclasses.field(default_factory=Roles)
    publisher: PublisherStats | None = None


async def _until_shutdown(shutdown: Shutdown, run: Callable[..., Awaitable[None]],
                          *args: object,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """``run(*args)``, cancelled as soon as shutdown begins: for tasks with nothing in flight
    that must finish (an interrupted partition pass rolls back and is repeated; the
    publisher and webhook delivery resume from their saved positions)."""
    with shutdown.intake():
        await run(*args, task_status=task_status)


async def _lead_ingest(shutdown: Shutdown, settings: Settings, stats: IngestStats,
                       open_store: OpenStore, clock: Callable[[], datetime], roles: Roles,
                       receivers: Receivers, *,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Ingest while this instance leads it; on shutdown, stop once the last batch is in
    (a standby, waiting for the lock, stops at once)."""
    with trio.CancelScope() as done:
        async def work() -> None:
            await supervise_ingest(settings, stats, open_store, clock, shutdown, receivers)
            done.cancel()  # shutdown: the last batch is committed, leadership ends too
            await trio.lowlevel.checkpoint()  # (returning would count as a crash)

        async def stop_standby() -> None:
            await shutdown.wait()
            if roles.states.get("ingest") != "leader":
                done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_standby)
            await nursery.start(partial(
                lead_role, "ingest", INGEST_LOCK, work, settings, roles, stats.tasks,
                fatal=(writer.CursorMismatch,)))
            task_status.started()


async def serve(settings: Settings, open_store: OpenStore = writer.connect,
                clock: Callable[[], datetime] = utc_now, shutdown: Shutdown | None = None, *,
                task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED) -> None:
    """Run every long-lived task; reports ``Running`` when ready.

    Runs until cancelled, or until ``shutdown`` begins and the API and ingest have finished
    their work in flight. ``clock`` gives the wall time for ``indexed_at`` and partition
    maintenance (tests inject one to make days pass).
    """
    stats = IngestStats(disconnected_since=trio.current_time())
    warnings = RecentWarnings()
    logging.getLogger().addHandler(warnings)  # for this service's lifetime only
    try:
        await _serve(settings, open_store, clock, stats, warnings, shutdown or Shutdown(),
                     task_status)
    finally:
        logging.getLogger().removeHandler(warnings)


async def _serve(settings: Settings, open_store: OpenStore, clock: Callable[[], datetime],
                 stats: IngestStats, warnings: RecentWarnings, shutdown: Shutdown,
                 task_status: trio.TaskStatus[Running]) -> None:
    roles = Roles(settings.role)
    publisher = PublisherStats() if settings.runs_publisher else None
    # The receiver's spare starts first: it loads while the rest of the service starts.
    async with open_receivers(spare=settings.runs_ingest) as receivers, aioloop.open_loop():
        if settings.runs_ingest:
            async with open_store(settings.database_url) as store:
                # Refuse early, with the message, if the cursor belongs to another upstream
                # (resetting it is the leader's to do, once it holds the lock).
                try:
                    await store.claim_cursor(settings.subscribe_url)
                except writer.CursorMismatch:
                    if not settings.reset_cursor:
                        raise
            # ... or if the configured partition manager does not match the database.
            await check_manager(settings.database_url, policy_of(settings))
        async with reader.open_read_store(settings.database_url,
                                          settings.api_pool_size) as read_store, \
                trio.open_nursery() as nursery:
            feed = CommitFeed()
            await nursery.start(feed.run, settings, stats.tasks)
            status = StatusSources(History(), warnings, mask_password(settings.subscribe_url))
            await nursery.start(watch_progress, stats, status.history,
                                settings.progress_interval)
            delivery = DeliveryStats()
            # The tasks that finish by themselves once shutdown begins.
            async with trio.open_nursery() as draining:
                api_url = await draining.start(partial(
                    serve_api, settings, stats, read_store, feed, status, delivery,
                    shutdown, roles=roles, publisher=publisher))
                if settings.runs_ingest:
                    await draining.start(_until_shutdown, shutdown, manage_partitions,
                                         settings, clock, stats, _archiver(settings, stats))
                    await draining.start(_lead_ingest, shutdown, settings, stats, open_store,
                                         clock, roles, receivers)
                if publisher is not None:
                    from .fanout.publisher import run_publisher  # nats: only when publishing

                    await draining.start(_until_shutdown, shutdown, partial(
                        lead_role, "publisher", PUBLISHER_LOCK,
                        partial(run_publisher, settings, read_store, feed, publisher,
                                stats.tasks),
                        settings, roles, stats.tasks))
                if settings.runs_delivery:
                    roles.states["delivery"] = "standby"  # /health reads delivery.leader
                    await draining.start(_until_shutdown, shutdown, run_delivery, settings,
                                         read_store, feed, delivery, stats.tasks)
                task_status.started(Running(stats, api_url, roles, publisher))
            log.info("shutdown: requests answered and the last batch committed")
            nursery.cancel_scope.cancel()  # the commit feed and the progress sampler


def _archiver(settings: Settings, stats: IngestStats) -> Archiver | None:
    """The partition manager's archive step, when ``SKYWIRE_ARCHIVE_DIR`` is set."""
    if not settings.archive_dir:
        return None
    from .archive.manager import archive_closed_days  # pyarrow: only when archiving

    stats.archive.enabled = True
    return partial(archive_closed_days, settings, stats.archive)


async def _stop_on_signals(signals: AsyncIterator[int], shutdown: Shutdown,
                           scope: trio.CancelScope, grace: float) -> None:
    """First signal: begin the shutdown, cancel after ``grace``; second: cancel now."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not shutdown.begun:
            log.info("received %s; stopping intake, finishing work in flight (up to %gs)",
                     name, grace)
            shutdown.begin()
            scope.deadline = trio.current_time() + grace
        else:
            log.info("received %s again; stopping now", name)
            scope.cancel()


async def _serve_then_stop(settings: Settings, shutdown: Shutdown, watching: trio.CancelScope,
                           *, task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    await serve(settings, shutdown=shutdown, task_status=task_status)
    watching.cancel()  # everything finished: stop waiting for signals


async def run_until_signal(settings: Settings) -> None:
    """``serve`` until SIGINT or SIGTERM, then shut down in order (see the module doc)."""
    shutdown = Shutdown()
    # A signal during start-up waits in the receiver until the service is running.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            trio.CancelScope() as grace:
        async with trio.open_nursery() as nursery:
            watching = trio.CancelScope()
            await nursery.start(_serve_then_stop, settings, shutdown, watching)
            # Everything alive now (imports, the app, ~130,000 objects) lives as long as the
            # process: take it out of the garbage collector's full passes, which otherwise
            # walked it every few seconds at live commit rates (50-100 ms pauses of the
            # whole service, ingest included; docs/performance.md); and collect the young
            # generation less often (gctune.py).
            gctune.settle()
            log.info("skywire-trio running as role %s%s", settings.role,
                     f"; ingesting from {settings.subscribe_url} when leader"
                     if settings.runs_ingest else "")
            with watching:
                await _stop_on_signals(signals, shutdown, grace, settings.shutdown_grace)
    if grace.cancelled_caught:
        log.warning("shutdown: grace period over; cancelled what was still running")
