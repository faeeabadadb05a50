"""``run`` (the default) and ``migrate``: the service itself and its schema."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from .. import config
from ..config import Settings
from ..log import writer
from .database import database, migrate_database

log = logging.getLogger("skywire_trio")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``migrate``."""
    run = commands.add_parser("run", help="migrate, then run the service (the default)")
    run.add_argument("--role", choices=config.ROLES, default=None,
                     help="what this instance runs (default: SKYWIRE_ROLE, else all); "
                          "docs/deployment.md")
    run.set_defaults(handler=_run, needs=None)
    commands.add_parser("migrate", help="create the database if needed and migrate to head"
                        ).set_defaults(handler=_migrate, needs=config.DATABASE)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    with database(settings, migrate=False) as settings:
        migrate_database(settings, always=True)
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from ..log.partman import PartmanError
    from ..service import run_until_signal

    if getattr(args, "role", None):
        try:
            settings = config.with_role(settings, args.role)
        except config.ConfigError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
    with database(settings) as settings:
        refused: list[BaseException] = []
        try:
            trio.run(run_until_signal, settings)
        # Configuration, not a fault: say it plainly (a cursor of another upstream, or a
        # partition manager that does not match the database).
        except* (writer.CursorMismatch, PartmanError) as group:
            refused.extend(group.exceptions)
    if refused:
        reason = refused[0]
        while isinstance(reason, BaseExceptionGroup):  # nurseries nest the groups
            reason = reason.exceptions[0]
        log.error("%s", reason)
        return 2
    return 0
