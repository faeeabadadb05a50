"""All database access. SQL lives here and in the alembic migrations, nowhere else.

The hot path uses triopg (asyncpg under trio-asyncio): COPY for the batch and the cursor
update in the same transaction. triopg is unmaintained upstream, which is one more reason
to keep it behind this one small module. Migrations and admin commands use psycopg 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import psycopg
import triopg
from alembic.config import Config
from psycopg import sql

from alembic import command

from ..firehose.codec import Row

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("id", "seq", "repo", "event_type", "action", "collection", "rkey", "cid", "rev",
           "record", "record_error", "raw", "event_time", "indexed_at")
NOTIFY_CHANNEL = "skywire_events"


class CursorMismatch(RuntimeError):
    """The stored cursor belongs to a different upstream than the configured one."""


class ConcurrentWriter(RuntimeError):
    """The cursor moved under us: another process is writing the log."""


@dataclasses.dataclass(frozen=True)
class Cursor:
    """The committed position: upstream seq and the last log id."""

    upstream: str
    last_seq: int | None
    last_id: int


def _conninfo(database_url: str, dbname: str | None = None) -> str:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    if dbname is not None:
        info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def create_database_if_missing(database_url: str) -> bool:
    """Create the configured database when it does not exist; True if it was created."""
    name = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname") or "postgres"
    with psycopg.connect(_conninfo(database_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def alembic_config(sqlalchemy_url: str) -> Config:
    """An alembic Config for this repository's migrations, aimed at one database."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = sqlalchemy_url
    return cfg


def migrate(sqlalchemy_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (head by default)."""
    command.upgrade(alembic_config(sqlalchemy_url), revision)


def partition_name(day: date) -> str:
    """The pg_partman 5 name of the partition holding one UTC day."""
    return f"firehose_events_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    """UTC midnight at the start of ``day``."""
    return datetime.combine(day, time(0), tzinfo=UTC)


class LogStore:
    """One connection to the log, used by a single writer (the batcher) or by admin tasks."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy) -> None:
        self._conn = conn

    async def claim_cursor(self, upstream: str, reset: bool = False) -> Cursor:
        """Return the cursor for ``upstream``, creating the row on first start.

        A cursor recorded for another upstream is refused (seqs of different relays are
        unrelated) unless ``reset``, which starts the new upstream live and keeps log ids.
        """
        await self._conn.execute(
            "INSERT INTO firehose_cursor (upstream) VALUES ($1) ON CONFLICT DO NOTHING", upstream)
        row = await self._conn.fetchrow("SELECT upstream, last_seq, last_id FROM firehose_cursor")
        if row["upstream"] != upstream:
            if not reset:
                raise CursorMismatch(
                    f"the stored cursor (seq {row['last_seq']}) belongs to {row['upstream']}, "
                    f"not {upstream}; set SKYWIRE_RESET_CURSOR=true to start over on the new "
                    "upstream (log ids continue; upstream seqs restart)")
            await self._conn.execute(
                "UPDATE firehose_cursor SET upstream = $1, last_seq = NULL, updated_at = now()",
                upstream)
            return Cursor(upstream, None, row["last_id"])
        return Cursor(upstream, row["last_seq"], row["last_id"])

    async def read_cursor(self) -> Cursor | None:
        """The committed cursor, or None before the first start."""
        row = await self._conn.fetchrow("SELECT upstream, last_seq, last_id FROM firehose_cursor")
        return None if row is None else Cursor(row["upstream"], row["last_seq"], row["last_id"])

    async def append(self, rows: Sequence[Row], last_seq: int | None, last_id: int,
                     indexed_at: datetime) -> int:
        """Append ``rows`` after log id ``last_id`` and move the cursor, in one transaction.

        Returns the new last id. Raises ``ConcurrentWriter`` if the committed last id is not
        ``last_id`` (a second writer), in which case nothing is written.
        """
        records = [(last_id + i, *row, indexed_at) for i, row in enumerate(rows, 1)]
        new_last_id = last_id + len(records)
        async with self._conn.transaction():
            status = await self._conn.execute(
                "UPDATE firehose_cursor SET last_seq = coalesce($1, last_seq), last_id = $2, "
                "updated_at = now() WHERE last_id = $3", last_seq, new_last_id, last_id)
            if status != "UPDATE 1":
                raise ConcurrentWriter(f"log id moved past {last_id}: another writer is active")
            await self._conn.copy_records_to_table(
                "firehose_events", records=records, columns=COLUMNS)
            # Wakes long-polling API requests; delivered only if the transaction commits.
            await self._conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL,
                                     str(new_last_id))
        return new_last_id

    async def ensure_partitions(self, days: Sequence[date]) -> list[str]:
        """Create the daily partitions that are missing; returns the names created."""
        created = []
        for day in days:
            name = partition_name(day)
            exists = await self._conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
            if exists:
                continue
            lower, upper = day_start(day), day_start(day + timedelta(days=1))
            # Bounds are literals in DDL; they come from dates, never from input.
            await self._conn.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF firehose_events "
                f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')")
            created.append(name)
        return created


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[LogStore]:
    """Open one connection (inside a trio-asyncio loop) and yield a ``LogStore``."""
    # command_timeout bounds a statement on a hung server; the supervisor then restarts.
    async with triopg.connect(database_url, command_timeout=30) as conn:
        yield LogStore(conn)
