"""``partitions list|maintain|adopt-partman|release-partman``: the log's daily partitions."""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timedelta
from functools import partial

import trio

from .. import config
from ..config import Settings
from ..types import Archive, Partition
from .database import database
from .output import add_json_flag, print_rows

PARTITION_COLUMNS = ("name", "from", "to", "rows_estimate", "bytes", "current", "default",
                     "archive")
NEEDS = (*config.DATABASE, "retention_days", "premake_days", "partition_manager",
         "archive_dir", "archive_grace")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``partitions``."""
    group = commands.add_parser("partitions", help="list or maintain the log's partitions")
    actions = group.add_subparsers(dest="action", required=True)
    add_json_flag(actions.add_parser("list",
                                     help="partitions, the manager's status and any alarm"))
    actions.add_parser("maintain", help="one builtin maintenance pass now")
    adopt = actions.add_parser("adopt-partman",
                               help="hand the partitions to pg_partman 5 (all or nothing)")
    adopt.add_argument("--retention-days", type=int, default=None,
                       help="pg_partman's retention (default SKYWIRE_RETENTION_DAYS)")
    adopt.add_argument("--premake", type=int, default=None,
                       help="days pg_partman keeps ahead (default SKYWIRE_PREMAKE_DAYS)")
    actions.add_parser("release-partman", help="take the partitions back from pg_partman")
    group.set_defaults(handler=_partitions, needs=NEEDS)


def _partitions(settings: Settings, args: argparse.Namespace) -> int:
    from asyncpg import PostgresError

    from ..log.partman import PartmanError

    if args.action == "adopt-partman":
        retention = settings.retention_days if args.retention_days is None else \
            args.retention_days
        premake = settings.premake_days if args.premake is None else args.premake
        if not 1 <= retention <= 3650 or not 1 <= premake <= 90:
            print("error: --retention-days must be 1..3650 and --premake 1..90",
                  file=sys.stderr)
            return 2
        args.retention_days, args.premake = retention, premake
    refused: list[BaseException] = []
    failed: list[BaseException] = []
    with database(settings) as settings:
        try:
            return trio.run(_main, settings, args)
        except* PartmanError as group:  # a refusal: said plainly, nothing was changed
            refused.append(_leaf(group))
        except* PostgresError as group:
            failed.append(_leaf(group))
    if refused:
        print(f"error: {refused[0]}", file=sys.stderr)
        return 2
    print(f"error: {failed[0]!r}; nothing was changed", file=sys.stderr)
    return 1


def _archive_state(partition: Partition, archived: dict[date, Archive], now: datetime,
                   settings: Settings) -> str:
    """``archived (N rows)``, ``pending`` (closed, not archived yet) or ``-``."""
    if partition.lower is None or partition.upper is None:
        return "-"
    found = archived.get(partition.lower.date())
    if found is not None:
        return f"archived ({found.rows} rows)"
    closed = now >= partition.upper + timedelta(seconds=settings.archive_grace)
    return "pending" if settings.archive_dir and closed else "-"


def _leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(error, BaseExceptionGroup):  # nurseries nest the groups
        error = error.exceptions[0]
    return error


async def _main(settings: Settings, args: argparse.Namespace) -> int:
    from .. import aioloop
    from ..log import archives, partition_store, partman
    from ..log.batcher import utc_now
    from ..log.partitions import PG_PARTMAN, maintain, policy_of

    assert settings.database_url is not None
    async with aioloop.open_loop(), \
            partition_store.connect(settings.database_url) as store:
        if args.action == "maintain":
            if settings.partition_manager == PG_PARTMAN:
                print("error: SKYWIRE_PARTITION_MANAGER=pg_partman: pg_partman creates and "
                      "drops the partitions (SELECT partman.run_maintenance("
                      "'public.firehose_events'))", file=sys.stderr)
                return 2
            archive = None
            if settings.archive_dir:
                from ..archive.manager import archive_closed_days
                from ..stats import ArchiveStats

                archive = partial(archive_closed_days, settings, ArchiveStats())
            report = await maintain(store, utc_now(), settings.premake_days,
                                    settings.retention_days, archive)
            print(report.summary())
            return 0
        if args.action == "adopt-partman":
            adopted = await partman.adopt(store.conn, utc_now().date(), args.retention_days,
                                          args.premake)
            print("\n".join(adopted.lines()))
            return 0
        if args.action == "release-partman":
            released = await partman.release(store.conn)
            print(f"pg_partman {released.version} no longer manages public.firehose_events "
                  f"(its retention was {released.retention or 'none'}); removed its "
                  f"configuration and template table {released.template_table or '-'}; the "
                  "partitions stay. Start skywire-trio with SKYWIRE_PARTITION_MANAGER=builtin: "
                  f"it keeps SKYWIRE_RETENTION_DAYS={settings.retention_days} days.")
            return 0
        now = utc_now()
        status = await partman.status(store.conn, policy_of(settings), now.date())
        # The manager's status above the table (on stderr with --json, which prints only
        # the partitions, one JSON object each).
        summary = sys.stderr if args.json else sys.stdout
        print(f"manager: {status.manager}; retention: {status.retention or 'none'}; "
              f"premake: {status.premake}; partitions ahead of today: "
              f"{status.partitions_ahead}; rows in the default partition: "
              f"{status.default_rows}", file=summary)
        for alarm in status.alarms():
            print(f"ALARM: {alarm}", file=summary)
        archived = await archives.archived_days(store.conn)
        listing = [{**p.as_json(now), "archive": _archive_state(p, archived, now, settings)}
                   for p in await store.partitions()]
        print_rows(listing, PARTITION_COLUMNS, args.json)
        return 0
