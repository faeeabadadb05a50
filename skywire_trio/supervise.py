"""One supervision rule for every long-lived task.

    supervise(name, body): forever {
        run body
        a fault the task names as transient (network, database unavailable, upstream):
            one warning line, restart after a backoff (min doubling to max)
        anything else (a bug: TypeError, bad SQL, ...):
            logged with its traceback, counted as a crash in metrics and /health,
            restart after a longer backoff (crash min doubling to crash max)
    }

A crash is never retried quietly: every one is an ERROR line with the traceback, and
``TaskHealth`` keeps what /health and /metrics show. Faults a task names as fatal (a
configuration problem such as ``CursorMismatch``) and cancellation propagate.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import trio

from .config import Settings
from .errors import describe
from .log.faults import UNAVAILABLE

log = logging.getLogger(__name__)

# Network faults: a socket refused, reset, timed out, or a trio stream broken under us.
NETWORK: tuple[type[Exception], ...] = (OSError, trio.BrokenResourceError)
# What every task may treat as transient; tasks add their own (e.g. upstream errors).
TRANSIENT: tuple[type[Exception], ...] = NETWORK + UNAVAILABLE

Body = Callable[[Callable[[], None]], Awaitable[object]]


class Backoff:
    """Exponential backoff with jitter: min doubling to max, reset by ``reset()``."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._minimum, self._maximum = minimum, maximum
        self._next = minimum

    def reset(self) -> None:
        """Start again from the minimum (after a healthy period)."""
        self._next = self._minimum

    def delay(self) -> float:
        """The next delay: uniformly between half and all of the current step."""
        step = self._next
        self._next = min(self._maximum, self._next * 2)
        return random.uniform(step / 2, step)


@dataclasses.dataclass
class TaskHealth:
    """What one supervised task has been through since the process started."""

    name: str
    state: str = "starting"  # running | backing_off
    runs: int = 0
    faults: int = 0  # transient faults, retried
    crashes: int = 0  # anything else
    last_fault: str | None = None
    last_crash: str | None = None  # "TypeError: ..." of the latest crash
    last_crash_where: str | None = None  # file:line in function, innermost frame
    last_crash_at: datetime | None = None

    def as_json(self) -> dict[str, object]:
        """The entry under ``tasks`` in /health."""
        return {
            "state": self.state,
            "restarts": self.faults + self.crashes,
            "faults": self.faults,
            "crashes": self.crashes,
            "last_fault": self.last_fault,
            "last_crash": None if self.last_crash is None else {
                "error": self.last_crash, "where": self.last_crash_where,
                "at": self.last_crash_at.isoformat() if self.last_crash_at else None},
        }


def _classify(exc: Exception, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` is one of ``kinds``; a group only if every exception in it is."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kinds)[1] is None
    return isinstance(exc, kinds)


def _contains(exc: Exception, kinds: tuple[type[BaseException], ...]) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(kinds)[0] is not None
    return isinstance(exc, kinds)


def _culprit(exc: BaseException, transient: tuple[type[BaseException], ...]
             ) -> tuple[BaseException, str | None]:
    """The first exception of a crash that is not transient, and where it was raised."""
    if isinstance(exc, BaseExceptionGroup):
        exc = exc.split(transient)[1] or exc
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
    return exc, where


async def supervise(name: str, body: Body, settings: Settings, tasks: dict[str, TaskHealth],
                    *, transient: tuple[type[BaseException], ...] = TRANSIENT,
                    fatal: tuple[type[BaseException], ...] = (),
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run ``body`` forever under the one supervision rule (see the module docstring).

    ``body(ready)`` calls ``ready()`` once it is up; the supervisor reports started then,
    or after the first failure, so a service can start while a dependency is down.
    A body that returns counts as a crash: a supervised task runs until cancelled.
    ``tasks[name]`` is kept up to date for /health and /metrics.
    """
    health = tasks.setdefault(name, TaskHealth(name))
    faults = Backoff(settings.backoff_min, settings.backoff_max)
    crashes = Backoff(settings.crash_backoff_min, settings.crash_backoff_max)
    started = False

    def ready() -> None:
        nonlocal started
        health.state = "running"
        if not started:
            started = True
            task_status.started()

    while True:
        began = trio.current_time()
        health.runs += 1
        try:
            await body(ready)
            raise RuntimeError(f"{name} returned; a supervised task runs until cancelled")
        except Exception as exc:
            if _contains(exc, fatal):
                raise
            if trio.current_time() - began >= settings.healthy_after:
                faults.reset()
                crashes.reset()
            if _classify(exc, transient):
                health.faults += 1
                health.last_fault = describe(exc)
                delay = faults.delay()
                log.warning("%s stopped: %s; restarting in %.1fs", name, describe(exc), delay)
            else:
                health.crashes += 1
                leaf, health.last_crash_where = _culprit(exc, transient)
                health.last_crash = f"{type(leaf).__name__}: {leaf}"
                health.last_crash_at = datetime.now(UTC)
                delay = crashes.delay()
                log.error("%s crashed (crash %d; not a transient fault): %s; restarting in "
                          "%.1fs", name, health.crashes, describe(exc), delay, exc_info=exc)
        health.state = "backing_off"
        if not started:  # the service starts even while this task cannot
            started = True
            task_status.started()
        await trio.sleep(delay)
