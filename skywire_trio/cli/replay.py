"""``replay`` and ``record``: recorded firehose frames, served or captured. No database."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import trio

from ..config import Settings

NEEDS = ("environment",)  # for the log format only


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay`` and ``record``."""
    replay = commands.add_parser("replay",
                                 help="serve recorded frames as a subscribeRepos server")
    replay.add_argument("files", nargs="+", type=Path)
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8765)
    replay.add_argument("--rate", type=float, default=0.0, help="frames per second (0: max)")
    replay.add_argument("--le", action="store_true", help="little-endian length prefixes")
    replay.set_defaults(handler=_replay, needs=NEEDS)
    record = commands.add_parser("record", help="capture a live firehose into FILE")
    record.add_argument("url")
    record.add_argument("file", type=Path)
    record.add_argument("--limit", type=int, default=None, help="stop after N frames")
    record.set_defaults(handler=_record, needs=NEEDS)


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from ..firehose.framefile import read_frames
    from ..firehose.replay import serve_replay

    try:
        frames = [f for path in args.files for f in read_frames(path, args.le)]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

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


def _record(settings: Settings, args: argparse.Namespace) -> int:
    from ..firehose.record import record_until_signal

    trio.run(record_until_signal, args.url, args.file, args.limit)
    return 0
