"""Export one UTC day of the log to Parquet: write, verify by reading back, record.

Used by ``python -m skywire_trio export`` and by the partition manager (``archive/manager.py``).
Synchronous (psycopg and pyarrow): the manager runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, date, datetime
from functools import partial
from typing import BinaryIO

from ..log import archives
from ..types import Archive
from . import parquet
from .target import Target, file_name


class NothingToExport(RuntimeError):
    """The day has no partition (dropped or never made) or no rows."""


@dataclasses.dataclass(frozen=True)
class Exported:
    """What one export wrote."""

    day: date
    path: str
    rows: int
    first_id: int
    last_id: int
    bytes: int
    sha256: str
    snapshot: bool  # the current day, up to the last committed id
    recorded: Archive | None  # the ``archives`` row, when the export was recorded
    seconds: float

    def summary(self) -> str:
        """One line for the operator."""
        what = (f"snapshot of the current day {self.day} up to log id {self.last_id} "
                "(not recorded: the day is still open)" if self.snapshot else f"{self.day}")
        recorded = ("recorded in archives" if self.recorded else "not recorded in archives "
                    "(not the archive directory)") if not self.snapshot else ""
        return (f"exported {what}: {self.rows} rows, ids {self.first_id}..{self.last_id}, "
                f"{self.bytes} bytes, sha256 {self.sha256[:16]}..., {self.seconds:.2f} s "
                f"({self.rows / max(self.seconds, 1e-9):,.0f} rows/s) -> {self.path}"
                + (f"; {recorded}" if recorded else ""))


def export_day(database_url: str, location: str, day: date, today: date, *,
               record: bool) -> Exported:
    """Export ``day`` into ``location``; verify it; record it in ``archives`` if ``record``.

    ``today`` or later is a snapshot up to the last committed id, never recorded. Raises
    ``NothingToExport``, ``parquet.ArchiveMismatch`` (nothing recorded) or an I/O error.
    """
    started = time.monotonic()
    snapshot = day >= today
    target = Target(location)
    with archives.connect(database_url) as conn:
        if not archives.partition_exists(conn, day):
            raise NothingToExport(f"the log has no partition for {day} (dropped, or not made)")
        upto = archives.last_committed_id(conn)
        rows, first, last = archives.day_extent(conn, day, upto)
        if rows == 0 or first is None or last is None:
            raise NothingToExport(f"{day} has no rows in the log")
        metadata = {"schema_version": parquet.SCHEMA_VERSION,
                    "upstream": archives.upstream(conn) or "", "day": day.isoformat(),
                    "rows": str(rows), "first_id": str(first), "last_id": str(last),
                    "snapshot": "true" if snapshot else "false",
                    "exported_at": datetime.now(UTC).isoformat()}

        def produce(sink: BinaryIO, ordered: bool) -> int:
            pieces = archives.copy_day(conn, day, upto, ordered=ordered)
            try:
                written = parquet.write(pieces, sink, metadata)
            finally:
                pieces.close()  # ends an unfinished COPY now: the connection is needed again
            if written != rows:  # before the file gets its final name
                raise parquet.ArchiveMismatch(f"wrote {written} rows, the log has {rows}")
            return written

        name = file_name(first, last)
        try:
            path = target.write(day, name, partial(produce, ordered=False))
        except parquet.OutOfOrder:  # rows moved in from the default partition, for one
            path = target.write(day, name, partial(produce, ordered=True))
        with target.open(path) as source:
            parquet.verify(source, rows, first, last)
        size, sha256 = target.digest(path)
        recorded = None
        if record and not snapshot:
            recorded = archives.record_archive(conn, day, path, rows, first, last, size, sha256)
            target.remove_others(day, name)
    return Exported(day, path, rows, first, last, size, sha256, snapshot, recorded,
                    time.monotonic() - started)
