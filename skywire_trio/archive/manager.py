"""The partition manager's archive step: export every closed day that has no archive yet.

Runs inside the builtin partition manager's pass, before it drops anything (see
``log/partitions.maintain``). A day is closed ``SKYWIRE_ARCHIVE_GRACE`` after its UTC
midnight. An export that fails is logged, counted and shown in /health and /metrics; its
day's partition stays, and the next pass tries again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

import pyarrow as pa
import trio

from ..config import Settings
from ..errors import describe
from ..log import archives
from ..log.partition_store import PartitionStore
from ..stats import ArchiveStats
from .export import export_day
from .parquet import ArchiveMismatch

log = logging.getLogger(__name__)


async def archive_closed_days(settings: Settings, stats: ArchiveStats, store: PartitionStore,
                              now: datetime) -> None:
    """Export each closed day whose archive is missing or no longer matches, oldest first.

    Stops at the first failure (an unwritable directory fails every day alike); the next
    pass retries from there.
    """
    recorded = await archives.archived_days(store.conn)
    grace = timedelta(seconds=settings.archive_grace)
    for partition in await store.partitions():
        if partition.lower is None or partition.upper is None or now < partition.upper + grace:
            continue
        day = partition.lower.date()
        done = recorded.get(day)
        if done is not None and await archives.matches(store.conn, done):
            continue
        if not await archives.has_rows(store.conn, day):
            continue  # nothing to keep
        try:
            # In a worker thread: psycopg and pyarrow block (pyarrow's C++ work leaves the
            # GIL). On shutdown the thread is abandoned; its temporary file is cleared later.
            exported = await trio.to_thread.run_sync(
                partial(export_day, settings.database_url, settings.archive_dir, day,
                        now.date(), record=True), abandon_on_cancel=True)
        except (OSError, pa.ArrowException, ArchiveMismatch) as exc:
            stats.failures += 1
            stats.failing_day, stats.last_error = day, describe(exc)
            log.warning("archiving %s failed; its partition stays until it succeeds: %s",
                        day, describe(exc))
            return
        stats.written += 1
        stats.rows += exported.rows
        stats.bytes += exported.bytes
        stats.last_day = day
        if stats.failing_day is not None and stats.failing_day <= day:
            stats.failing_day = stats.last_error = None
        log.info("archive: %s", exported.summary())
