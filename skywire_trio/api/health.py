"""What ``/health`` reports about the database, kept fresh by a probe of its own.

``/health`` is public and must stay cheap: answering it from a query per request put it
in the queue for the API's four pooled connections, and under load it reported a healthy
database as down. The probe checks the database once a second on a connection of its own
(so a busy pool cannot starve it), and ``/health`` only reads the result.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

import trio

from ..errors import describe
from ..log import reader
from ..log.reader import ReadSession
from ..stats import IngestStats
from ..types import PartitionPolicy, PartitionStatus
from .errors import UNREACHABLE, database_fault

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0
# A probe that takes longer than this counts as a timeout. Generous: it is wall time, which
# includes waiting for this process's own busy event loop, not only for the database.
PROBE_TIMEOUT = 5.0
# The partitions' status (manager, days ahead, rows in the default partition: a count, so a
# scan) is read this often.
PARTITIONS_INTERVAL = 10.0


@dataclasses.dataclass
class DatabaseHealth:
    """The database as last probed: ``fault`` is None when it answered, else its kind."""

    fault: str | None = UNREACHABLE
    checked_at: float | None = None
    partitions: PartitionStatus | None = None  # as of the last read (PARTITIONS_INTERVAL)

    def age(self) -> float | None:
        """Seconds since the last probe finished (None before the first)."""
        return None if self.checked_at is None else trio.current_time() - self.checked_at


async def _probe(session: ReadSession, health: DatabaseHealth, stats: IngestStats,
                 policy: PartitionPolicy | None) -> None:
    cursor = await session.cursor()
    if policy is not None:
        health.partitions = await session.partition_status(policy, datetime.now(UTC).date())
        stats.default_partition_rows = health.partitions.default_rows
    if health.fault is not None and health.checked_at is not None:
        log.info("database reachable again")
    health.fault = None
    health.checked_at = trio.current_time()
    if cursor is not None and stats.last_id == 0:
        # Not ingesting here (yet): report the log's position as committed.
        stats.last_id, stats.last_seq = cursor.last_id, cursor.last_seq


async def probe_database(database_url: str, policy: PartitionPolicy, health: DatabaseHealth,
                         stats: IngestStats, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Probe the database every ``PROBE_INTERVAL`` until cancelled; started after the first.

    The probe has a connection of its own, opened again after any failure: a connection
    whose statement failed or timed out is never trusted again.
    """
    count_due = 0.0
    started = False
    while True:
        try:
            async with reader.connect(database_url, PROBE_TIMEOUT) as session:
                while True:
                    due = trio.current_time() >= count_due
                    # asyncpg's own timeouts end a slow statement cleanly; this is a backstop.
                    with trio.fail_after(3 * PROBE_TIMEOUT):
                        await _probe(session, health, stats, policy if due else None)
                    if due:
                        count_due = trio.current_time() + PARTITIONS_INTERVAL
                    if not started:
                        task_status.started()
                        started = True
                    await trio.sleep(PROBE_INTERVAL)
        except Exception as exc:
            kind = database_fault(exc)
            if kind is None:
                raise
            if health.fault != kind:
                log.warning("database health check: %s (%s)", kind, describe(exc))
            health.fault = kind
            health.checked_at = trio.current_time()
        if not started:
            task_status.started()
            started = True
        await trio.sleep(PROBE_INTERVAL)
