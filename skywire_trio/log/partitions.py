"""Partition lifecycle: premake daily partitions, empty the default one, drop expired days.

The log is a replication buffer, not an archive: whole days are dropped once their
entire range is older than the retention (never ``DELETE``). Names, bounds and the default
partition follow pg_partman 5 (``firehose_events_pYYYYMMDD``, UTC midnights), so an
operator can hand the table to pg_partman instead (``SKYWIRE_PARTITION_MANAGER=pg_partman``,
docs/operations.md): this manager then creates and drops nothing, and only checks and
reports. Either way it never works beside pg_partman: two managers would fight over
retention.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import trio

from .. import types
from ..config import Settings
from ..stats import IngestStats
from ..supervise import supervise
from . import archives, partition_store, partman

log = logging.getLogger(__name__)

BUILTIN, PG_PARTMAN = types.BUILTIN_MANAGER, types.PG_PARTMAN_MANAGER


def policy_of(settings: Settings) -> types.PartitionPolicy:
    """The partition policy the configuration asks for."""
    return types.PartitionPolicy(settings.partition_manager, settings.retention_days,
                                 settings.premake_days)


@dataclasses.dataclass(frozen=True)
class MaintenanceReport:
    """What one maintenance pass did."""

    created: list[str]
    dropped: list[str]
    moved_rows: int
    default_rows: int  # left in the default partition after the pass
    waiting: list[str] = dataclasses.field(default_factory=list)  # expired, not archived yet

    def summary(self) -> str:
        """One human line."""
        return (f"created: {', '.join(self.created) or 'none'}; "
                f"dropped: {', '.join(self.dropped) or 'none'}; "
                f"moved {self.moved_rows} row(s) out of the default partition, "
                f"{self.default_rows} left there"
                + (f"; waiting for their archive: {', '.join(self.waiting)}"
                   if self.waiting else ""))


# Called between premaking and dropping, with the store and the time: archives the closed
# days (archive/manager.py). Injected so that the log does not depend on its readers.
Archiver = Callable[[partition_store.PartitionStore, datetime], Awaitable[None]]


async def maintain(store: partition_store.PartitionStore, now: datetime, premake_days: int,
                   retention_days: int, archive: Archiver | None = None) -> MaintenanceReport:
    """One builtin pass: premake today + ``premake_days``, move default rows, (archive,)
    drop expired days.

    With ``archive``, an expired day is dropped only when its recorded archive still
    matches the partition (rows and last id) or the partition is empty; the others wait.
    Raises ``partman.PartmanError`` (and changes nothing) if pg_partman manages the log.
    """
    await partman.require_unmanaged(store.conn)
    existing = {p.name for p in await store.partitions()}
    today = now.date()
    created, moved = [], 0
    # Days that have rows in the default partition first (their rows move out), then the
    # premake window.
    days = await store.default_days()
    days += [today + timedelta(days=n) for n in range(premake_days + 1)]
    for day in days:
        name = types.partition_name(day)
        if name not in existing:
            moved += await store.create_partition(day)
            existing.add(name)
            created.append(name)
    if archive is not None:
        await archive(store, now)
    cutoff = now - timedelta(days=retention_days)
    dropped, waiting = [], []
    for partition in await store.partitions():
        # Only whole days entirely older than the retention; never today's partition
        # (retention is at least one day) and never the default partition.
        if partition.upper is None or partition.upper > cutoff:
            continue
        if archive is not None and not await _archived(store, partition):
            waiting.append(partition.name)
            continue
        await store.drop_partition(partition.name)
        dropped.append(partition.name)
    return MaintenanceReport(created, dropped, moved, await store.default_rows(), waiting)


async def _archived(store: partition_store.PartitionStore, partition: types.Partition) -> bool:
    assert partition.lower is not None
    day = partition.lower.date()
    recorded = (await archives.archived_days(store.conn)).get(day)
    if recorded is None:
        return not await archives.has_rows(store.conn, day)
    return await archives.matches(store.conn, recorded)


async def check_manager(database_url: str, policy: types.PartitionPolicy) -> None:
    """Refuse (``partman.PartmanError``) a manager that does not match the database.

    pg_partman: it must manage the log (5.x, daily by indexed_at, sessions in UTC).
    builtin: pg_partman must not manage it.
    """
    async with partition_store.connect(database_url) as store:
        if policy.manager == PG_PARTMAN:
            await partman.require_managed(store.conn)
        else:
            await partman.require_unmanaged(store.conn)


async def manage_partitions(settings: Settings, clock: Callable[[], datetime],
                            stats: IngestStats, archive: Archiver | None = None, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
    """The partition-manager task: a pass at start, then every ``partition_interval``.

    The service checks the manager against the database first (``check_manager``).
    Under the one supervision rule (supervise.py): a pass that fails on the database (down,
    a lock not granted within its short timeout) is retried with backoff, a bug is reported
    as a crash. Rows still land safely meanwhile (in the default partition at worst), so
    this task never takes the service down. With pg_partman a pass only reads its status;
    a manager that stops matching the database later (pg_partman adopted or released while
    running) shows as an alarm, and nothing is created or dropped.
    """
    policy = policy_of(settings)

    async def passes(ready: Callable[[], None]) -> None:
        while True:
            async with partition_store.connect(settings.database_url) as store:
                current = await partman.status(store.conn, policy, clock().date())
                if policy.manager == BUILTIN and current.problem is None:
                    await _builtin_pass(store, clock(), settings, stats, archive)
                    current = await partman.status(store.conn, policy, clock().date())
            stats.partition_status = current
            stats.default_partition_rows = current.default_rows
            for alarm in current.alarms():
                log.warning("partitions: %s", alarm)
            ready()
            await trio.sleep(settings.partition_interval)

    await supervise("partition-manager", passes, settings, stats.tasks,
                    task_status=task_status)


async def _builtin_pass(store: partition_store.PartitionStore, now: datetime, settings: Settings,
                        stats: IngestStats, archive: Archiver | None) -> None:
    report = await maintain(store, now, settings.premake_days, settings.retention_days,
                            archive)
    if report.created or report.dropped or report.moved_rows:
        log.info("partition maintenance: %s", report.summary())
    stats.partitions_dropped += len(report.dropped)
    stats.partitions_waiting = len(report.waiting)
