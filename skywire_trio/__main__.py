"""Command line: ``python -m skywire_trio [run|migrate|replay|record] ...``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import trio

from . import config
from .log import db

log = logging.getLogger("skywire_trio")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m skywire_trio",
                                     description="ATProto firehose -> PostgreSQL log")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="migrate, then run the service (the default)")
    sub.add_parser("migrate", help="create the database if needed and migrate to head")
    replay = sub.add_parser("replay", help="serve recorded frames as a subscribeRepos server")
    replay.add_argument("files", nargs="+", type=Path)
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8765)
    replay.add_argument("--rate", type=float, default=0.0, help="frames per second (0: max)")
    replay.add_argument("--le", action="store_true", help="little-endian length prefixes")
    record = sub.add_parser("record", help="capture a live firehose into FILE")
    record.add_argument("url")
    record.add_argument("file", type=Path)
    record.add_argument("--limit", type=int, default=None, help="stop after N frames")
    return parser


def _migrate(settings: config.Settings) -> None:
    if db.create_database_if_missing(settings.database_url):
        log.info("created database %s", settings.database_url)
    db.migrate(settings.sqlalchemy_url)


def _run(settings: config.Settings) -> int:
    from .service import run_until_signal

    _migrate(settings)
    try:
        trio.run(run_until_signal, settings)
    except db.CursorMismatch as exc:
        log.error("%s", exc)
        return 2
    return 0


def _replay(args: argparse.Namespace) -> int:
    from .firehose.framefile import read_frames
    from .firehose.replay import serve_replay

    frames = [f for path in args.files for f in read_frames(path, args.le)]

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve_replay, frames, args.host, args.port,
                                               args.rate))
            print(f"ws://{args.host}:{port}", flush=True)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass
    return 0


def _record(args: argparse.Namespace) -> int:
    from .firehose.record import record_until_signal

    trio.run(record_until_signal, args.url, args.file, args.limit)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    if args.command == "record":
        return _record(args)
    try:
        settings = config.from_env()
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        _migrate(settings)
        return 0
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
