"""Singleton roles (ingest, publisher): run only in the instance that holds the role's lock.

    supervise("<role>-leader"): forever {
        wait, blocked, for the role's advisory lock (log/leadership.py)
        run the role's own supervised task while the lock is held
    }

A standby waits inside ``pg_advisory_lock`` on a connection of its own, so it takes over
the moment the leader's session ends (SIGKILL included: the kernel closes the socket and
PostgreSQL frees the lock). The lock is held across the role's own restarts (an upstream
blip does not hand leadership over); it is given up only when its connection fails, which
cancels the role and lets ``supervise`` ask for the lock again after a backoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from .config import Settings
from .log.leadership import lead
from .stats import Roles
from .supervise import TaskHealth, supervise

log = logging.getLogger(__name__)


async def lead_role(role: str, key: int, work: Callable[[], Awaitable[None]],
                    settings: Settings, roles: Roles, tasks: dict[str, TaskHealth], *,
                    fatal: tuple[type[BaseException], ...] = (),
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``work`` whenever this instance holds lock ``key``; stand by otherwise.

    Reports started at once: standing by is a normal state, not a failure to start.
    ``roles`` shows the state in /health; exceptions in ``fatal`` stop the service.
    """
    assert settings.database_url is not None
    database_url = settings.database_url
    roles.states[role] = "standby"

    async def body(ready: Callable[[], None]) -> None:
        ready()
        async with lead(database_url, key):
            roles.states[role] = "leader"
            roles.since[role] = time.time()
            log.info("%s: this instance is the leader", role)
            try:
                await work()
            finally:
                roles.states[role] = "standby"

    await supervise(f"{role}-leader", body, settings, tasks, fatal=fatal,
                    task_status=task_status)
