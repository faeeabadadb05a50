"""pg_partman 5 and the log: hand the partitions over, take them back, read its settings.

pg_partman derives partition names and bounds from the session's time zone
(``date_trunc('day', ...)``, ``to_char(..., 'YYYYMMDD')``): outside UTC it makes days that
overlap ours or whose names are a day off. So everything here runs with
``SET LOCAL timezone = 'UTC'``, and the handover sets the database's default time zone to
UTC for every later session, pg_partman's background worker and cron jobs included.

Each operation is one transaction: the handover either happens completely or not at all.
``status`` reports where the partitions stand under either manager.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import triopg

from .. import types
from ..types import day_start, partition_name
from . import partition_store

PARENT = "public.firehose_events"
SUPPORTED_MAJOR = 5
# pg_partman's ACCESS EXCLUSIVE lock on the log waits behind the writer's open batch at
# most this long; a handover that cannot get it fails (and changes nothing) instead of
# stalling ingestion and every reader queued behind it.
HANDOVER_LOCK_TIMEOUT = "10s"
# Time zone names PostgreSQL treats as UTC itself.
UTC_NAMES = frozenset({"utc", "etc/utc", "uct", "etc/uct", "zulu", "etc/zulu", "universal",
                       "etc/universal", "gmt", "etc/gmt", "gmt0", "etc/gmt0", "greenwich",
                       "etc/greenwich"})

Connection = triopg._triopg.TrioConnectionProxy


class PartmanError(RuntimeError):
    """pg_partman is missing, unsuitable, or not (or no longer) managing the log.

    The message says what is wrong and what the operator can do about it.
    """


@dataclasses.dataclass(frozen=True)
class PartmanConfig:
    """pg_partman's configuration for the log (its ``part_config`` row)."""

    schema: str  # where the extension's objects live
    version: str
    interval: str
    control: str
    premake: int
    retention: str | None  # e.g. "14 days"; None keeps every partition
    retention_seconds: float | None
    retention_keep_table: bool
    infinite_time_partitions: bool
    automatic_maintenance: str
    template_table: str | None


@dataclasses.dataclass(frozen=True)
class AdoptReport:
    """What ``adopt`` did."""

    version: str
    created_extension: bool
    moved_rows: int
    moved_into: list[str]
    created: list[str]  # partitions pg_partman made while taking over
    retention_days: int
    premake: int
    timezone_was: str

    def lines(self) -> list[str]:
        """What happened, one line per step, for the operator."""
        out = [f"pg_partman {self.version}"
               + (" installed (CREATE EXTENSION)" if self.created_extension else " found")]
        if self.moved_rows:
            out.append(f"moved {self.moved_rows} row(s) out of firehose_events_default into "
                       + ", ".join(self.moved_into))
        else:
            out.append("firehose_events_default was empty")
        out.append("create_parent: pg_partman now manages public.firehose_events; created "
                   + (", ".join(self.created) or "no new partition (all existed)"))
        out.append(f"retention {self.retention_days} days (partitions dropped, not detached), "
                   f"premake {self.premake} days, infinite_time_partitions on")
        out.append(f"database TimeZone: {self.timezone_was} -> UTC (ALTER DATABASE ... SET)")
        out.append("next: run partman.run_maintenance_proc() regularly (pg_partman_bgw or cron) "
                   "and start skywire-trio with SKYWIRE_PARTITION_MANAGER=pg_partman")
        return out


@dataclasses.dataclass(frozen=True)
class ReleaseReport:
    """What ``release`` did."""

    version: str
    retention: str | None
    template_table: str | None


def _ident(name: str) -> str:
    """A quoted SQL identifier (the extension's schema is chosen by whoever installed it)."""
    return '"' + name.replace('"', '""') + '"'


async def installed(conn: Connection) -> tuple[str, str] | None:
    """The schema and version of the pg_partman extension in this database, if any."""
    row = await conn.fetchrow(
        "SELECT n.nspname, e.extversion FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_partman'")
    return None if row is None else (row[0], row[1])


async def config(conn: Connection) -> PartmanConfig | None:
    """pg_partman's configuration of the log, or None when it does not manage it."""
    found = await installed(conn)
    if found is None:
        return None
    schema, version = found
    row = await conn.fetchrow(
        "SELECT partition_interval, control, premake, retention, "
        "extract(epoch FROM retention::interval)::float8, retention_keep_table, "
        "infinite_time_partitions, automatic_maintenance, template_table "
        f"FROM {_ident(schema)}.part_config WHERE parent_table = $1", PARENT)
    if row is None:
        return None
    return PartmanConfig(schema, version, row[0], row[1], row[2], row[3], row[4], row[5],
                         row[6], row[7], row[8])


def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


async def database_timezone(conn: Connection) -> str:
    """The time zone a new session of this database starts with."""
    # reset_val: the session default (database and role settings, postgresql.conf),
    # whatever this session may have SET since.
    return await conn.fetchval("SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'")


async def require_managed(conn: Connection) -> PartmanConfig:
    """pg_partman's configuration, or ``PartmanError`` saying why it cannot be relied on.

    Checks that pg_partman 5.x is installed, manages the log by ``indexed_at`` in days,
    and that the database's sessions start in UTC (else its partitions are misnamed).
    """
    found = await installed(conn)
    adopt_hint = ("hand the log over with `python -m skywire_trio partitions adopt-partman` "
                  "(docs/operations.md), or set SKYWIRE_PARTITION_MANAGER=builtin")
    if found is None:
        raise PartmanError("SKYWIRE_PARTITION_MANAGER=pg_partman, but the pg_partman extension "
                           f"is not installed in this database: {adopt_hint}")
    if _major(found[1]) != SUPPORTED_MAJOR:
        raise PartmanError(f"pg_partman {found[1]} is installed; skywire-trio needs "
                           f"{SUPPORTED_MAJOR}.x (its partition names and functions differ)")
    cfg = await config(conn)
    if cfg is None:
        raise PartmanError(f"SKYWIRE_PARTITION_MANAGER=pg_partman, but pg_partman {found[1]} "
                           f"does not manage {PARENT}: {adopt_hint}")
    if cfg.control != "indexed_at" or cfg.interval != "1 day":
        raise PartmanError(f"pg_partman manages {PARENT} by {cfg.control} every "
                           f"{cfg.interval}; skywire-trio needs daily partitions by indexed_at "
                           "(release-partman, then adopt-partman)")
    zone = await database_timezone(conn)
    if zone.lower() not in UTC_NAMES:
        raise PartmanError(f"sessions of this database start in time zone {zone!r}: pg_partman "
                           "would make partitions whose names and bounds are not UTC days; "
                           "run `ALTER DATABASE <name> SET timezone = 'UTC'` (adopt-partman "
                           "does this)")
    return cfg


async def require_unmanaged(conn: Connection) -> None:
    """Raise ``PartmanError`` if pg_partman manages the log (two managers would fight)."""
    cfg = await config(conn)
    if cfg is not None:
        raise PartmanError(
            f"pg_partman {cfg.version} manages {PARENT} (retention "
            f"{cfg.retention or 'none'}); the builtin partition manager will not create or "
            "drop partitions beside it: set SKYWIRE_PARTITION_MANAGER=pg_partman, or give the "
            "table back first with `python -m skywire_trio partitions release-partman`")


async def adopt(conn: Connection, today: date, retention_days: int,
                premake: int) -> AdoptReport:
    """Hand the log's partitions to pg_partman 5, all or nothing.

    In one transaction: install the extension if it is available and missing (schema
    ``partman``), move the default partition's rows into their days (pg_partman cannot
    premake a day that has rows in the default partition), ``create_parent`` starting at
    ``today`` (with ``p_default_table := false``: the migration made the default partition),
    set retention, and make UTC the database's default time zone.
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL timezone = 'UTC'")
        await conn.execute(f"SET LOCAL lock_timeout = '{HANDOVER_LOCK_TIMEOUT}'")
        found = await installed(conn)
        created_extension = found is None
        if found is None:
            available = await conn.fetchval(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_partman'")
            if available is None:
                raise PartmanError("the pg_partman extension is not available on this server: "
                                   "install pg_partman 5 (docs/operations.md)")
            if _major(available) != SUPPORTED_MAJOR:
                raise PartmanError(f"this server offers pg_partman {available}; skywire-trio "
                                   f"needs {SUPPORTED_MAJOR}.x")
            await conn.execute("CREATE SCHEMA IF NOT EXISTS partman")
            await conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
            found = await installed(conn)
        schema, version = found
        if _major(version) != SUPPORTED_MAJOR:
            raise PartmanError(f"pg_partman {version} is installed; skywire-trio needs "
                               f"{SUPPORTED_MAJOR}.x (ALTER EXTENSION pg_partman UPDATE)")
        if await config(conn) is not None:
            raise PartmanError(f"pg_partman already manages {PARENT}; to change its settings "
                               f"update {schema}.part_config, or release-partman and adopt "
                               "again")
        timezone_was = await database_timezone(conn)
        moved, moved_into = 0, []
        for day in await partition_store.default_days(conn):
            moved += await partition_store.create_partition(conn, day)
            moved_into.append(partition_name(day))
        before = {p.name for p in await partition_store.list_partitions(conn)}
        # Each move above set its own short lock timeout for the rest of the transaction.
        await conn.execute(f"SET LOCAL lock_timeout = '{HANDOVER_LOCK_TIMEOUT}'")
        await conn.fetchval(
            f"SELECT {_ident(schema)}.create_parent(p_parent_table := $1, "
            "p_control := 'indexed_at', p_interval := '1 day', p_premake := $2, "
            "p_start_partition := $3, p_default_table := false)",
            PARENT, premake, day_start(today).isoformat())
        status = await conn.execute(
            f"UPDATE {_ident(schema)}.part_config SET retention = $2, "
            "retention_keep_table = false, infinite_time_partitions = true, "
            # The default partition exists (ours); recorded so that pg_partman's own
            # dump_partitioned_table_definition describes the set as it is.
            "default_table = true WHERE parent_table = $1",
            PARENT, f"{retention_days} days")
        if status != "UPDATE 1":
            raise PartmanError(f"create_parent left no configuration for {PARENT} ({status})")
        dbname = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE {_ident(dbname)} SET timezone = 'UTC'")
        after = await partition_store.list_partitions(conn)
        await _check_bounds(conn)
        created = sorted({p.name for p in after} - before)
    return AdoptReport(version, created_extension, moved, moved_into, created, retention_days,
                       premake, timezone_was)


async def partition_bounds(conn: Connection) -> list[tuple[str, datetime, datetime]]:
    """Each daily partition's name and its bounds as the catalog has them (not its name)."""
    rows = await conn.fetch(
        "SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid, regexp_match(pg_get_expr(c.relpartbound, "
        "c.oid), $$FROM \\('([^']+)'\\) TO \\('([^']+)'\\)$$) b "
        "WHERE i.inhparent = 'firehose_events'::regclass AND b IS NOT NULL ORDER BY 2")
    return [(r[0], r[1], r[2]) for r in rows]


async def _check_bounds(conn: Connection) -> None:
    """Raise unless every daily partition's name is the UTC day of its bounds."""
    for name, lower, upper in await partition_bounds(conn):
        day = lower.astimezone(UTC).date()
        if (name != partition_name(day) or lower != day_start(day)
                or upper != day_start(day + timedelta(days=1))):
            raise PartmanError(f"partition {name} covers {lower.isoformat()} to "
                               f"{upper.isoformat()}, not the UTC day its name says; "
                               "nothing was changed")


async def release(conn: Connection) -> ReleaseReport:
    """Take the log back from pg_partman: remove its configuration and template table.

    The partitions stay where they are; the builtin manager adopts them by name.
    """
    async with conn.transaction():
        cfg = await config(conn)
        if cfg is None:
            raise PartmanError(f"pg_partman does not manage {PARENT}: nothing to release")
        schema = _ident(cfg.schema)
        await conn.execute(f"DELETE FROM {schema}.part_config_sub WHERE sub_parent = $1", PARENT)
        await conn.execute(f"DELETE FROM {schema}.part_config WHERE parent_table = $1", PARENT)
        if cfg.template_table:
            template_schema, _, template_name = cfg.template_table.partition(".")
            await conn.execute(
                f"DROP TABLE IF EXISTS {_ident(template_schema)}.{_ident(template_name)}")
    return ReleaseReport(cfg.version, cfg.retention, cfg.template_table)


def _ahead(partitions: list[types.Partition], today: date) -> int:
    days = {p.lower.date() for p in partitions if p.lower is not None}
    n = 0
    while today + timedelta(days=n + 1) in days:
        n += 1
    return n


async def status(conn: Connection, policy: types.PartitionPolicy,
                 today: date) -> types.PartitionStatus:
    """The partitions' status under ``policy``, read now."""
    listing = await partition_store.list_partitions(conn)
    ahead = _ahead(listing, today)
    default_rows = sum(p.rows_estimate for p in listing if p.lower is None)
    cfg = await config(conn)
    if policy.manager == types.BUILTIN_MANAGER:
        problem = None
        if cfg is not None:
            problem = ("pg_partman manages public.firehose_events while "
                       "SKYWIRE_PARTITION_MANAGER=builtin: the builtin manager creates and "
                       "drops nothing until one of them is switched off")
        return types.PartitionStatus(
            types.BUILTIN_MANAGER, f"{policy.retention_days} days", policy.retention_days * 86400.0,
            policy.premake_days, ahead, default_rows, problem)
    if cfg is None:
        return types.PartitionStatus(
            types.PG_PARTMAN_MANAGER, None, None, None, ahead, default_rows,
            "pg_partman no longer manages public.firehose_events: nobody premakes or drops "
            "partitions")
    return types.PartitionStatus(types.PG_PARTMAN_MANAGER, cfg.retention, cfg.retention_seconds,
                                 cfg.premake, ahead, default_rows)
