"""``cursor show|set``: the ingest cursor, for operators."""

from __future__ import annotations

import argparse
import sys

from .. import config
from ..config import Settings
from ..log import cursor, writer
from .database import database
from .output import add_json_flag, print_rows, refuse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cursor`` and its subcommands."""
    group = commands.add_parser("cursor", help="show or set the ingest cursor")
    group.set_defaults(handler=_cursor, needs=config.DATABASE)
    sub = group.add_subparsers(dest="cursor_command", required=True)
    add_json_flag(sub.add_parser("show", help="print the committed cursor"))
    setter = sub.add_parser("set", help="set the upstream seq to resume after "
                                        "(refused while the service runs)")
    setter.add_argument("seq", type=int)


def _cursor(settings: Settings, args: argparse.Namespace) -> int:
    if args.cursor_command == "set" and args.seq < 0:
        return refuse("SEQ must be >= 0")
    with database(settings) as settings:
        assert settings.database_url is not None
        if args.cursor_command == "show":
            row = cursor.show_cursor(settings.database_url)
            print_rows([row] if row else [], ("upstream", "last_seq", "last_id", "updated_at"),
                       args.json)
            return 0
        try:
            cursor.set_cursor(settings.database_url, args.seq)
        except writer.WriterActive as exc:
            return refuse(str(exc))
    print(f"cursor set: the next start resumes after seq {args.seq}", file=sys.stderr)
    return 0
