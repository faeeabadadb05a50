"""``run`` (the default) and ``migrate``: the service itself and its schema."""

from __future__ import annotations

import argparse
import logging

import trio

from .. import config
from ..config import Settings
from ..log import writer
from .database import database, migrate_database

log = logging.getLogger("skywire_trio")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``migrate``."""
    commands.add_parser("run", help="migrate, then run the service (the default)"
                        ).set_defaults(handler=_run, needs=None)
    commands.add_parser("migrate", help="create the database if needed and migrate to head"
                        ).set_defaults(handler=_migrate, needs=config.DATABASE)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, migrate=False) as settings:
        migrate_database(settings, always=True)
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ..service import run_until_signal

    with database(settings) as settings:
        refused: list[BaseException] = []
        try:
            trio.run(run_until_signal, settings)
        except* writer.CursorMismatch as group:  # configuration, not a fault: say it plainly
            refused.extend(group.exceptions)
    if refused:
        reason = refused[0]
        while isinstance(reason, BaseExceptionGroup):  # nurseries nest the groups
            reason = reason.exceptions[0]
        log.error("%s", reason)
        return 2
    return 0
