"""``cursor show|set``: the ingest cursor, for operators."""

from __future__ import annotations

import argparse
import json
import sys

from .. import config
from ..config import Settings
from ..log import cursor, writer
from .database import database


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cursor`` and its subcommands."""
    group = commands.add_parser("cursor", help="show or set the ingest cursor")
    group.set_defaults(handler=_cursor, needs=config.DATABASE)
    sub = group.add_subparsers(dest="cursor_command", required=True)
    sub.add_parser("show", help="print the committed cursor")
    setter = sub.add_parser("set", help="set the upstream seq to resume after "
                                        "(refused while the service runs)")
    setter.add_argument("seq", type=int)


def _cursor(settings: Settings, args: argparse.Namespace) -> int:
    if args.cursor_command == "set" and args.seq < 0:
        print("error: SEQ must be >= 0", file=sys.stderr)
        return 2
    with database(settings) as settings:
        assert settings.database_url is not None
        if args.cursor_command == "show":
            print(json.dumps(cursor.show_cursor(settings.database_url), default=str))
            return 0
        try:
            cursor.set_cursor(settings.database_url, args.seq)
        except writer.WriterActive as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"cursor set: the next start resumes after seq {args.seq}", file=sys.stderr)
    return 0
