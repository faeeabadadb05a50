"""Command line: ``python -m skywire_trio [COMMAND] ...``.

One module per command group; each ``register``s its subcommands on the parser and gives
every subcommand a handler and the names of the settings it reads (``needs``), so a
command loads only the configuration it uses: ``replay`` starts with a broken
``DATABASE_URL``, ``tokens`` does not care about batch sizes. To add a group: a module
with ``register(subparsers)``, listed in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import config
from . import (
    archive,
    configuration,
    cursor,
    partitions,
    replay,
    run,
    status,
    subscriptions,
    tail,
    tokens,
)
from .failures import explain
from .logs import setup_logging

# In --help order. ``run`` is also what no command means.
GROUPS = (run, status, tail, tokens, subscriptions, partitions, archive, cursor, configuration,
          replay)


def parser() -> argparse.ArgumentParser:
    """The whole command line, every group registered."""
    top = argparse.ArgumentParser(prog="python -m skywire_trio",
                                  description="ATProto firehose -> PostgreSQL log")
    commands = top.add_subparsers(dest="command")
    for group in GROUPS:
        group.register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parser().parse_args(argv)
    if args.command is None:
        args = parser().parse_args(["run"])
    for warning in config.unknown_variables():
        print(f"warning: {warning}", file=sys.stderr)
    try:
        settings = config.from_env(only=args.needs)
    except config.ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    setup_logging(settings.environment == "production")
    try:
        return args.handler(settings, args)
    except Exception as exc:  # only to say a fixable failure in one line; others re-raise
        message = explain(exc, settings)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
