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
from typing import TYPE_CHECKING

import psycopg
import trio
import triopg
from psycopg import sql

from ..firehose.codec import Row

if TYPE_CHECKING:
    from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]
# The newest revision in alembic/versions (tests/test_migrations.py checks that it is).
HEAD_REVISION = "0002"
COLUMNS = ("id", "seq", "repo", "event_type", "action", "collection", "rkey", "cid", "rev",
           "record", "record_error", "raw", "event_time", "indexed_at")
NOTIFY_CHANNEL = "skywire_events"
# DDL on the log waits at most this long for a lock, so it never holds up the writer
# (whose batches take ~10-50 ms) for longer than about one batch interval.
LOCK_TIMEOUT_MS = 100


class CursorMismatch(RuntimeError):
    """The stored cursor belongs to a different upstream than the configured one."""


class ConcurrentWriter(RuntimeError):
    """The cursor moved under us: another process is writing the log."""


class WriterActive(RuntimeError):
    """Another session holds the writer lock: a service is ingesting into this database."""


# Session-level advisory lock held by whoever writes the log (an ingest run, `cursor set`):
# a second instance waits as a standby instead of writing beside the first.
WRITER_LOCK = 0x736B7977  # "skyw"


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
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = sqlalchemy_url
    return cfg


def migrate(sqlalchemy_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (head by default)."""
    # Imported here: alembic and SQLAlchemy are ~0.25 s of the service's ~1 s start, and a
    # database already at head (every start but the first after an upgrade) skips them.
    from alembic import command

    command.upgrade(alembic_config(sqlalchemy_url), revision)


def at_head(database_url: str) -> bool:
    """Whether the schema is already at ``HEAD_REVISION`` (no migration to run)."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return False
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return versions == [(HEAD_REVISION,)]


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

    async def lock_writer(self) -> None:
        """Take the writer lock for this connection's life, or raise ``WriterActive``."""
        if not await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", WRITER_LOCK):
            raise WriterActive("another skywire-trio instance is ingesting into this database")

    async def claim_cursor(self, upstream: str, reset: bool = False) -> Cursor:
        """Return the cursor for ``upstream``, creating the row on first start.

        A cursor recorded for another upstream is refused (seqs of different relays are
        unrelated) unless ``reset``, which starts the new upstream live and keeps log ids.
        """
        await self._conn.execute(
            "INSERT INTO firehose_cursor (upstream) VALUES ($1) ON CONFLICT DO NOTHING", upstream)
        row = await self._conn.fetchrow("SELECT upstream, last_seq, last_id FROM firehose_cursor")
        if row["upstream"] != upstream:
            if not reset and row["last_seq"] is not None:
                raise CursorMismatch(
                    f"the stored cursor (seq {row['last_seq']}) belongs to {row['upstream']}, "
                    f"not {upstream}; set SKYWIRE_RESET_CURSOR=true to start over on the new "
                    "upstream (log ids continue; upstream seqs restart)")
            await self._conn.execute(
                "UPDATE firehose_cursor SET upstream = $1, last_seq = NULL, updated_at = now()",
                upstream)
            return Cursor(upstream, None, row["last_id"])
        return Cursor(upstream, row["last_seq"], row["last_id"])

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

    async def partitions(self) -> list[Partition]:
        """Every partition of the log, oldest first, the default partition last."""
        return await _partitions(self._conn)

    async def default_days(self) -> list[date]:
        """The UTC days of the rows sitting in the default partition."""
        rows = await self._conn.fetch(
            "SELECT DISTINCT (indexed_at AT TIME ZONE 'UTC')::date FROM firehose_events_default "
            "ORDER BY 1")
        return [row[0] for row in rows]

    async def create_partition(self, day: date) -> int:
        """Create the partition for ``day``, moving its rows out of the default partition.

        Built beside the table and attached (SHARE UPDATE EXCLUSIVE on the parent, unlike
        CREATE TABLE ... PARTITION OF), under a short lock timeout so that it never queues
        in front of the writer for long; a timeout raises and the next pass retries.
        Returns how many rows were moved from the default partition.
        """
        name = partition_name(day)
        lower, upper = day_start(day).isoformat(), day_start(day + timedelta(days=1)).isoformat()
        async with self._conn.transaction():
            await self._conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            # Names and bounds come from dates, never from input.
            await self._conn.execute(
                f"CREATE TABLE {name} (LIKE firehose_events INCLUDING DEFAULTS INCLUDING "
                "CONSTRAINTS)")
            status = await self._conn.execute(
                f"WITH moved AS (DELETE FROM firehose_events_default WHERE indexed_at >= "
                f"'{lower}' AND indexed_at < '{upper}' RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved")
            await self._conn.execute(
                f"ALTER TABLE firehose_events ATTACH PARTITION {name} "
                f"FOR VALUES FROM ('{lower}') TO ('{upper}')")
        return int(status.split()[-1])

    async def drop_partition(self, name: str) -> None:
        """Drop one daily partition (never the default one), under a short lock timeout."""
        if not name.startswith("firehose_events_p") or not name[17:].isdigit():
            raise ValueError(f"{name!r} is not a daily partition")
        async with self._conn.transaction():
            await self._conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
            await self._conn.execute(f"DROP TABLE {name}")

    async def default_rows(self) -> int:
        """Rows in the default partition (normally none)."""
        return await self._conn.fetchval("SELECT count(*) FROM firehose_events_default")


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """A validated /events query. Prefixes are LIKE patterns (already escaped)."""

    since: int = 0
    limit: int = 100
    collections: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    action: str | None = None


# Postgres writes each event's JSON text by concatenation (about twice as cheap as
# jsonb_build_object, measured) and a whole page as one UTF-8 value, so the API neither
# parses stored records nor decodes and re-encodes rows: it wraps the bytes it receives.
# Deletes carry no record and no cid, as in Jetstream (concat_ws skips NULLs);
# `record_error` appears only when the record could not be stored.
_EVENT_JSON = """
'{"id":' || id || ',"seq":' || coalesce(seq::text, 'null')
|| ',"did":' || coalesce(to_json(repo)::text, 'null')
|| ',"time_us":' || (extract(epoch FROM indexed_at) * 1000000)::bigint
|| ',"kind":' || to_json(event_type)::text
|| CASE WHEN event_type = 'commit' THEN ',"commit":{' || concat_ws(',',
       '"rev":' || to_json(rev)::text, '"operation":' || to_json(action)::text,
       '"collection":' || to_json(collection)::text, '"rkey":' || to_json(rkey)::text,
       '"record":' || record::text, '"cid":' || to_json(cid)::text,
       '"record_error":' || to_json(record_error)::text) || '}}'
   ELSE ',' || to_json(event_type)::text || ':' || coalesce(record::text, 'null') || '}'
   END"""

# Identity and account events pass a collection filter: consumers need them to see
# deletions and handle changes (an event_type filter can still exclude them).
_PASS_COLLECTION_FILTER = "event_type IN ('identity', 'account')"


def _event_query(f: EventFilter) -> tuple[str, list[object]]:
    args: list[object] = [f.since, f.limit]
    where = ["id > $1"]

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.collections or f.prefixes:
        parts = []
        if f.collections:
            parts.append(f"collection = ANY({arg(list(f.collections))}::text[])")
        if f.prefixes:
            parts.append(f"collection LIKE ANY({arg(list(f.prefixes))}::text[])")
        parts.append(_PASS_COLLECTION_FILTER)
        where.append("(" + " OR ".join(parts) + ")")
    if f.repos:
        where.append(f"repo = ANY({arg(list(f.repos))}::text[])")
    if f.event_types:
        where.append(f"event_type = ANY({arg(list(f.event_types))}::text[])")
    if f.action:
        where.append(f"(action = {arg(f.action)} OR event_type <> 'commit')")
    sql_text = (f"SELECT count(*), min(id), max(id), convert_to(string_agg(event, ',' "
                f"ORDER BY id), 'UTF8') FROM (SELECT id, {_EVENT_JSON} AS event "
                f"FROM firehose_events WHERE {' AND '.join(where)} ORDER BY id LIMIT $2) page")
    return sql_text, args


@dataclasses.dataclass(frozen=True)
class Page:
    """A page of events: how many, the first and last ids, and their JSON, comma-joined."""

    count: int
    first_id: int | None
    last_id: int | None
    json: bytes


@dataclasses.dataclass(frozen=True)
class Token:
    """A stored API token (never the token itself)."""

    name: str
    token_hash: bytes
    collections: tuple[str, ...]
    event_types: tuple[str, ...]
    repos: tuple[str, ...]
    rate_limit: int
    revoked: bool


_TOKEN_COLUMNS = "name, token_hash, collections, event_types, repos, rate_limit, revoked_at"


def _token(row: Sequence[object]) -> Token:
    name, token_hash, collections, event_types, repos, rate_limit, revoked_at = row
    return Token(str(name), bytes(token_hash), tuple(collections), tuple(event_types),
                 tuple(repos), int(rate_limit), revoked_at is not None)


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of the log."""

    name: str
    lower: datetime | None  # None for the default partition
    upper: datetime | None
    rows_estimate: int
    bytes: int

    def as_json(self, now: datetime) -> dict[str, object]:
        """The listing entry shared by ``GET /partitions`` and ``partitions list``."""
        return {
            "name": self.name,
            "from": self.lower.isoformat() if self.lower else None,
            "to": self.upper.isoformat() if self.upper else None,
            "rows_estimate": self.rows_estimate,
            "bytes": self.bytes,
            "current": self.lower is not None and self.lower <= now < self.upper,
            "default": self.lower is None,
        }


class ReadSession:
    """One pooled connection for the duration of one API request."""

    def __init__(self, conn: triopg._triopg.TrioConnectionProxy) -> None:
        self._conn = conn

    async def events(self, f: EventFilter) -> Page:
        """The events matching ``f``, in log order, as one JSON fragment."""
        sql_text, args = _event_query(f)
        count, first, last, text = await self._conn.fetchrow(sql_text, *args)
        return Page(count, first, last, text or b"")

    async def cursor(self) -> Cursor | None:
        """The committed cursor (also a liveness probe of the database)."""
        row = await self._conn.fetchrow("SELECT upstream, last_seq, last_id FROM firehose_cursor")
        return None if row is None else Cursor(row[0], row[1], row[2])

    async def token(self, token_hash: bytes) -> Token | None:
        """The token with this keyed hash, revoked or not."""
        row = await self._conn.fetchrow(
            f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1", token_hash)
        return None if row is None else _token(tuple(row))

    async def touch_token(self, name: str) -> None:
        """Record that a token was used just now."""
        await self._conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE name = $1",
                                 name)

    async def partitions(self) -> list[Partition]:
        """Every partition of the log, oldest first, the default partition last."""
        return await _partitions(self._conn)

    async def oldest_id(self) -> int | None:
        """The smallest id still in the log (older days may have been dropped)."""
        return await self._conn.fetchval("SELECT min(id) FROM firehose_events")

    async def default_rows(self) -> int:
        """Rows in the default partition (normally none)."""
        return await self._conn.fetchval("SELECT count(*) FROM firehose_events_default")


class ReadStore:
    """Read-side access for the API: a small pool, one connection per request."""

    def __init__(self, pool: triopg._triopg.TrioPoolProxy) -> None:
        self._pool = pool

    @asynccontextmanager
    async def session(self) -> AsyncIterator[ReadSession]:
        """A connection from the pool for one request."""
        async with self._pool.acquire() as conn:
            yield ReadSession(conn)


async def _partitions(conn: triopg._triopg.TrioConnectionProxy) -> list[Partition]:
    # Row counts are the statistics' live-tuple estimate (cheap, no scan), except for the
    # default partition, counted exactly: any row there is something an operator must see.
    rows = await conn.fetch(
        "SELECT c.relname, CASE WHEN c.relname = 'firehose_events_default' "
        "THEN (SELECT count(*) FROM firehose_events_default) "
        "ELSE pg_stat_get_live_tuples(c.oid) END, pg_total_relation_size(c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'firehose_events'::regclass")
    return sorted((_partition(r[0], r[1], r[2]) for r in rows),
                  key=lambda p: (p.lower is None, p.name))


def _partition(name: str, rows: int, size: int) -> Partition:
    if name.startswith("firehose_events_p"):
        day = datetime.strptime(name[len("firehose_events_p"):], "%Y%m%d").date()
        return Partition(name, day_start(day), day_start(day + timedelta(days=1)), rows, size)
    return Partition(name, None, None, rows, size)


async def _keep(conn: object) -> None:
    """A connection returns to the pool as it is."""


@asynccontextmanager
async def open_read_store(database_url: str, size: int = 4) -> AsyncIterator[ReadStore]:
    """A pool for the API. ``min_size=0``: the API starts even while the database is down."""
    # reset=_keep: pooled connections hold no session state (LISTEN uses its own
    # connection), so asyncpg's reset query on every release is a wasted round trip.
    async with triopg.create_pool(database_url, min_size=0, max_size=size,
                                  command_timeout=10, reset=_keep) as pool:
        yield ReadStore(pool)


@asynccontextmanager
async def listen_commits(database_url: str) -> AsyncIterator[trio.MemoryReceiveChannel[str]]:
    """Notifications sent by each committed batch (payload: the new last id)."""
    async with triopg.connect(database_url) as conn, conn.listen(
            NOTIFY_CHANNEL, max_buffer_size=16) as notes:
        yield notes


# Admin operations for the command line (synchronous, psycopg).

def create_token(database_url: str, name: str, token_hash: bytes, collections: Sequence[str],
                 event_types: Sequence[str], repos: Sequence[str], rate_limit: int) -> None:
    """Store a new token's hash and scope; raises ``ValueError`` if the name is taken."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        try:
            conn.execute(
                "INSERT INTO api_tokens (name, token_hash, collections, event_types, repos, "
                "rate_limit) VALUES (%s, %s, %s, %s, %s, %s)",
                (name, token_hash, list(collections), list(event_types), list(repos),
                 rate_limit))
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"a token named {name!r} already exists") from None


def list_tokens(database_url: str) -> list[dict[str, object]]:
    """Every token's name, scope and dates (no hashes)."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT name, collections, event_types, repos, rate_limit, created_at, revoked_at, "
            "last_used_at FROM api_tokens ORDER BY created_at, name")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def show_cursor(database_url: str) -> dict[str, object] | None:
    """The cursor row, for an operator."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute("SELECT upstream, last_seq, last_id, updated_at FROM firehose_cursor")
        row = cur.fetchone()
        return None if row is None else dict(zip([c.name for c in cur.description], row,
                                                 strict=True))


def set_cursor(database_url: str, last_seq: int) -> None:
    """Point the cursor at ``last_seq`` (rewind or skip); refused while a writer runs."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()[0]:
            raise WriterActive("the service is running (it holds the writer lock); stop it "
                               "first")
        try:
            cur = conn.execute("UPDATE firehose_cursor SET last_seq = %s, updated_at = now()",
                               (last_seq,))
            if cur.rowcount != 1:
                raise WriterActive("there is no cursor yet: start the service once first")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (WRITER_LOCK,))


def revoke_token(database_url: str, name: str) -> bool:
    """Revoke a token; False if there is no such active token."""
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute("UPDATE api_tokens SET revoked_at = now() "
                           "WHERE name = %s AND revoked_at IS NULL", (name,))
        return cur.rowcount == 1


@asynccontextmanager
async def connect(database_url: str) -> AsyncIterator[LogStore]:
    """Open one connection (inside a trio-asyncio loop) and yield a ``LogStore``."""
    # command_timeout bounds a statement on a hung server; the supervisor then restarts.
    async with triopg.connect(database_url, command_timeout=30) as conn:
        yield LogStore(conn)
