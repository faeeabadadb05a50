"""The API task: hypercorn's trio worker serving the app inside the service nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from ..config import Settings
from ..errors import describe
from ..log import db
from ..stats import IngestStats
from .app import ApiState, CommitSignal, create_app

log = logging.getLogger(__name__)


async def _relay_commits(settings: Settings, commits: CommitSignal) -> None:
    """LISTEN for committed batches and wake long-polls; reconnect if the database drops."""
    while True:
        try:
            async with db.listen_commits(settings.database_url) as notes:
                async for _ in notes:
                    commits.fire()
        except Exception as exc:  # the database went away: long-polls fall back to re-checks
            log.warning("commit listener stopped: %s", describe(exc))
        await trio.sleep(1.0)


async def serve_api(settings: Settings, stats: IngestStats, *,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API until cancelled; reports the bound URL when listening."""
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None  # metrics, not a log line per request
    config.graceful_timeout = 2.0
    commits = CommitSignal()
    store_cm = db.open_read_store(settings.database_url, settings.api_pool_size)
    async with store_cm as store, trio.open_nursery() as nursery:
        nursery.start_soon(_relay_commits, settings, commits)
        app = create_app(ApiState(store, stats, commits, settings.api_token_salt,
                                  settings.stall_seconds))
        binds = await nursery.start(partial(serve, app, config,
                                            shutdown_trigger=trio.sleep_forever))
        log.info("API listening on %s", binds[0])
        task_status.started(binds[0])
