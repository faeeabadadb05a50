"""The archive's view of the log: one day's rows for the exporter, and the ``archives`` table.

The exporter streams a day with ``COPY (SELECT ...) TO STDOUT (FORMAT csv)``: PostgreSQL
formats the values and pyarrow's C++ CSV reader parses them, so no Python code touches a
row (a per-row Python path could not reach 100,000 rows/s). Times leave as integer
microseconds and ``raw`` as hex, so nothing is lost in the text form; ``record`` leaves as
its JSON text.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from datetime import date

import psycopg
import triopg

from ..types import Archive, partition_name

# Name and CSV form of each exported column, in file order (archive/parquet.py types them).
EXPORT_COLUMNS = (
    ("id", "id"), ("seq", "seq"), ("repo", "repo"), ("event_type", "event_type"),
    ("action", "action"), ("collection", "collection"), ("rkey", "rkey"), ("cid", "cid"),
    ("rev", "rev"), ("record", "record::text"), ("record_error", "record_error"),
    ("raw", "encode(raw, 'hex')"),
    ("event_time", "(extract(epoch FROM event_time) * 1000000)::bigint"),
    ("indexed_at", "(extract(epoch FROM indexed_at) * 1000000)::bigint"),
)
_ARCHIVE_COLUMNS = "day, path, rows, first_id, last_id, bytes, sha256, created"


@contextmanager
def connect(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection for one export (autocommit: each statement sees the latest commits)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def partition_exists(conn: psycopg.Connection, day: date) -> bool:
    """Whether the log still has the partition of ``day``."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (partition_name(day),)).fetchone()[0]


def last_committed_id(conn: psycopg.Connection) -> int:
    """The last id the writer committed (0 before the first batch)."""
    row = conn.execute("SELECT last_id FROM firehose_cursor").fetchone()
    return 0 if row is None else int(row[0])


def upstream(conn: psycopg.Connection) -> str | None:
    """The upstream the log was ingested from (recorded in each file's metadata)."""
    row = conn.execute("SELECT upstream FROM firehose_cursor").fetchone()
    return None if row is None else row[0]


def day_extent(conn: psycopg.Connection, day: date,
               upto_id: int) -> tuple[int, int | None, int | None]:
    """Rows, first and last id of ``day`` up to ``upto_id``."""
    # The name comes from a date, never from input.
    row = conn.execute(f"SELECT count(*), min(id), max(id) FROM {partition_name(day)} "
                       "WHERE id <= %s", (upto_id,)).fetchone()
    return int(row[0]), row[1], row[2]


def copy_day(conn: psycopg.Connection, day: date, upto_id: int, *,
             ordered: bool) -> Generator[bytes, None, None]:
    """``day``'s rows up to ``upto_id`` as CSV (no header), in pieces.

    ``ordered=False`` reads the partition in its physical order, which is id order when its
    rows were written by the writer (the usual case) and costs a quarter less than the
    index scan; the caller checks the order and asks again with ``ordered=True`` if not.
    """
    select = ", ".join(expr for _, expr in EXPORT_COLUMNS)
    # COPY takes no parameters: the table name comes from a date and upto_id is an int.
    statement = (f"COPY (SELECT {select} FROM {partition_name(day)} "
                 f"WHERE id <= {int(upto_id)}{' ORDER BY id' if ordered else ''}) "
                 "TO STDOUT (FORMAT csv)")
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for piece in copy:
            yield bytes(piece)  # a memoryview into psycopg's buffer, reused by the next read


def _archive(row: tuple) -> Archive:
    return Archive(*row)


def find_archive(conn: psycopg.Connection, day: date) -> Archive | None:
    """The recorded archive of ``day``, if any."""
    row = conn.execute(f"SELECT {_ARCHIVE_COLUMNS} FROM archives WHERE day = %s",
                       (day,)).fetchone()
    return None if row is None else _archive(row)


def record_archive(conn: psycopg.Connection, day: date, path: str, rows: int, first_id: int,
                   last_id: int, size: int, sha256: str) -> Archive:
    """Record a verified archive of ``day`` (replacing an earlier record of the same day)."""
    row = conn.execute(
        f"INSERT INTO archives (day, path, rows, first_id, last_id, bytes, sha256) "
        f"VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (day) DO UPDATE SET "
        f"path = excluded.path, rows = excluded.rows, first_id = excluded.first_id, "
        f"last_id = excluded.last_id, bytes = excluded.bytes, sha256 = excluded.sha256, "
        f"created = now() RETURNING {_ARCHIVE_COLUMNS}",
        (day, path, rows, first_id, last_id, size, sha256)).fetchone()
    return _archive(row)


def list_archives(conn: psycopg.Connection) -> list[Archive]:
    """Every recorded archive, oldest day first."""
    rows = conn.execute(f"SELECT {_ARCHIVE_COLUMNS} FROM archives ORDER BY day").fetchall()
    return [_archive(r) for r in rows]


async def archived_days(conn: triopg._triopg.TrioConnectionProxy) -> dict[date, Archive]:
    """Every recorded archive by day (for the partition manager and the listings)."""
    rows = await conn.fetch(f"SELECT {_ARCHIVE_COLUMNS} FROM archives")
    return {r[0]: _archive(tuple(r)) for r in rows}


async def matches(conn: triopg._triopg.TrioConnectionProxy, archive: Archive) -> bool:
    """Whether ``archive`` still holds all of its day (rows committed late would not be)."""
    row = await conn.fetchrow(f"SELECT count(*), max(id) FROM {partition_name(archive.day)}")
    return (row[0], row[1]) == (archive.rows, archive.last_id)


async def has_rows(conn: triopg._triopg.TrioConnectionProxy, day: date) -> bool:
    """Whether ``day``'s partition holds any row."""
    return await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {partition_name(day)})")
