"""The API task: hypercorn's trio worker serving the app inside the service nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..config import Settings
from ..log.notify import CommitFeed
from ..log.partitions import policy_of
from ..log.reader import ReadStore
from ..stats import DeliveryStats, IngestStats, PublisherStats, Roles
from . import subscribe
from .app import ApiState, create_app
from .status_page import StatusSources

log = logging.getLogger(__name__)


async def serve_api(settings: Settings, stats: IngestStats, store: ReadStore, feed: CommitFeed,
                    status: StatusSources | None = None,
                    delivery: DeliveryStats | None = None, *,
                    roles: Roles | None = None, publisher: PublisherStats | None = None,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API until cancelled; reports the bound URL when listening."""
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None  # metrics, not a log line per request
    config.graceful_timeout = 2.0
    async with trio.open_nursery() as nursery:
        app = create_app(ApiState(store, stats, feed, settings.api_token_salt,
                                  settings.stall_seconds, partition_policy=policy_of(settings),
                                  status=status, delivery=delivery or DeliveryStats(),
                                  subscribe_limits=subscribe.Limits.from_settings(settings),
                                  roles=roles or Roles(settings.role), publisher=publisher))
        binds = await nursery.start(partial(serve, app, config,
                                            shutdown_trigger=trio.sleep_forever))
        log.info("API listening on %s", binds[0])
        task_status.started(binds[0])
