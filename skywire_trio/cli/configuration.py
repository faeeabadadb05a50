"""``config``: the effective configuration, secrets masked; ``--markdown`` for the docs."""

from __future__ import annotations

import argparse

from .. import config
from ..config import Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config``."""
    command = commands.add_parser("config",
                                  help="print the effective configuration, secrets masked")
    command.add_argument("--markdown", nargs="?", const="all", choices=["all", "common"],
                         help="print the documents' table instead: every setting "
                              "(docs/configuration.md) or the common ones (README)")
    command.set_defaults(handler=_config, needs=None)


def _config(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        table = config.markdown_table() if args.markdown == "all" else config.readme_table()
        print(table, end="")
        return 0
    defaults = Settings().masked()
    for name, value in settings.masked().items():
        note = "" if value != defaults[name] else "  # default"
        print(f"{name} = {value}{note}")
    return 0
