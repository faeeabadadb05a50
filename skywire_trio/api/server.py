"""The API task: the app on hypercorn's trio worker, with its helpers, in one nursery.

    api
    ├── database probe   keeps /health's view of the database fresh (api/health.py)
    ├── long-polls       one commit-feed subscription for every waiting /events (longpoll.py)
    ├── memory release   free memory back to the system, after waves of connections (../memory.py)
    └── http server      connections capped, closed, drained on shutdown (http_server.py)
"""

from __future__ import annotations

import logging
import resource

import trio
from hypercorn.config import Config

from .. import memory
from ..config import Settings
from ..log.notify import CommitFeed
from ..log.partitions import policy_of
from ..log.reader import ReadStore
from ..shutdown import Shutdown
from ..stats import DeliveryStats, IngestStats, PublisherStats, Roles
from . import subscribe
from .app import ApiState, create_app
from .health import DatabaseHealth, probe_database
from .http_server import MAX_REFUSING, ConnectionCounts, serve_http
from .status_page import StatusSources

log = logging.getLogger(__name__)

# File descriptors kept for everything but HTTP connections, besides the API's pool: the
# other database connections (writer, probe, commit feed, partition manager), the
# receiver's pipes, dead letters, logs, the runtime's own (measured: 18 in use in all
# with no client connected), with room to spare.
RESERVED_DESCRIPTORS = 64
# Connections waiting to be accepted (the kernel's queue; it costs no descriptor).
LISTEN_BACKLOG = 1024
# Free memory goes back to the system this often (a trim takes 1-5 ms here). When this
# many fewer connections are open than at the peak since the last time, a full collection
# comes first: it frees what closed connections left in reference cycles, and pauses the
# service for 50-130 ms (measured after 1,000 long-polls), so not for a handful.
TRIM_SECONDS = 2.0
RELEASE_AFTER_CLOSED = 100


def connection_cap(requested: int, pool_size: int) -> int:
    """The connection cap that fits the process's descriptor limit.

    The soft limit is raised towards the hard one when ``requested`` needs it; if the hard
    limit is too low as well, the cap is lowered to fit and a warning says so.
    """
    # A refusal holds its descriptor for a moment too.
    reserved = RESERVED_DESCRIPTORS + pool_size + MAX_REFUSING
    needed = requested + reserved
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            log.info("raised the open-file limit from %d to %d for %d connections",
                     soft, raised, requested)
            soft = raised
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = max(1, soft - reserved)
        log.warning("SKYWIRE_MAX_CONNECTIONS=%d does not fit the open-file limit of %d "
                    "(%d kept for the database and ingest): accepting at most %d connections; "
                    "raise the limit (LimitNOFILE, ulimit -n) to allow more",
                    requested, soft, reserved, cap)
        return cap
    return requested


async def release_memory(counts: ConnectionCounts, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Give freed memory back to the system every ``TRIM_SECONDS``; after a wave of
    connections closed (``RELEASE_AFTER_CLOSED`` fewer open than at the peak), collect
    what they left in reference cycles first (memory.py)."""
    task_status.started()
    while True:
        await trio.sleep(TRIM_SECONDS)
        if counts.peak - counts.open >= RELEASE_AFTER_CLOSED:
            memory.release()
            counts.peak = counts.open
            counts.releases += 1
        else:
            memory.trim()


async def serve_api(settings: Settings, stats: IngestStats, store: ReadStore, feed: CommitFeed,
                    status: StatusSources | None = None,
                    delivery: DeliveryStats | None = None, shutdown: Shutdown | None = None, *,
                    roles: Roles | None = None, publisher: PublisherStats | None = None,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API; reports the bound URL when listening.

    Runs until cancelled, or until ``shutdown`` begins and the connections have drained
    (at most ``settings.shutdown_grace`` later).
    """
    shutdown = shutdown or Shutdown()
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None  # metrics, not a log line per request
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.graceful_timeout = settings.shutdown_grace
    config.backlog = LISTEN_BACKLOG
    counts = ConnectionCounts(connection_cap(settings.max_connections, settings.api_pool_size))
    health = DatabaseHealth()
    policy = policy_of(settings)
    state = ApiState(store, stats, feed, settings.api_token_salt, settings.stall_seconds,
                     partition_policy=policy, database=health, shutdown=shutdown,
                     connections=counts, status=status, delivery=delivery or DeliveryStats(),
                     subscribe_limits=subscribe.Limits.from_settings(settings),
                     roles=roles or Roles(settings.role), publisher=publisher)
    app = create_app(state)
    with state.timeouts:  # the long-polls' waits
        async with trio.open_nursery() as nursery:
            await nursery.start(probe_database, settings.database_url, policy, health, stats)
            await nursery.start(state.polls.run)
            await nursery.start(release_memory, counts)

            async def http(*, task_status: trio.TaskStatus[list[str]]) -> None:
                await serve_http(app, config, counts, shutdown.wait, task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: the probe and long-polls stop too

            binds = await nursery.start(http)
            log.info("API listening on %s (at most %d connections)", binds[0], counts.limit)
            task_status.started(binds[0])
