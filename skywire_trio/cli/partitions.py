"""``partitions list|maintain``: the log's daily partitions."""

from __future__ import annotations

import argparse

import trio

from .. import config
from ..config import Settings
from .database import database


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``partitions``."""
    group = commands.add_parser("partitions", help="list or maintain the log's partitions")
    group.add_argument("action", choices=["list", "maintain"])
    group.set_defaults(handler=_partitions,
                       needs=(*config.DATABASE, "retention_days", "premake_days"))


def _partitions(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings) as settings:
        trio.run(_main, settings, args.action)
    return 0


async def _main(settings: Settings, action: str) -> None:
    import trio_asyncio

    from ..log import partition_store
    from ..log.batcher import utc_now
    from ..log.partitions import maintain

    assert settings.database_url is not None
    async with trio_asyncio.open_loop(), \
            partition_store.connect(settings.database_url) as store:
        if action == "maintain":
            report = await maintain(store, utc_now(), settings.premake_days,
                                    settings.retention_days)
            print(report.summary())
            return
        now = utc_now()
        print(f"{'name':28} {'from':26} {'to':26} {'rows':>12} {'bytes':>14}")
        for p in await store.partitions():
            entry = p.as_json(now)
            flag = " current" if entry["current"] else (" DEFAULT" if entry["default"] else "")
            print(f"{p.name:28} {entry['from'] or '-':26} {entry['to'] or '-':26} "
                  f"{p.rows_estimate:>12} {p.bytes:>14}{flag}")
