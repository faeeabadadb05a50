"""Command line: ``python -m skywire_trio [run|migrate|replay|record] ...``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

from . import config
from .log import cursor, partition_store, schema, tokens, writer

log = logging.getLogger("skywire_trio")
DEFAULT_RATE_LIMIT = 50


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
    tokens = sub.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="tokens_command", required=True)
    create = tokens.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("name")
    create.add_argument("--collection", action="append", default=[],
                        help="allowed collection (NSID or prefix.*); repeatable")
    create.add_argument("--event-type", action="append", default=[],
                        help="allowed event type; repeatable")
    create.add_argument("--repo", action="append", default=[], help="allowed DID; repeatable")
    create.add_argument("--rate-limit", type=int, default=DEFAULT_RATE_LIMIT,
                        help=f"requests per second (default {DEFAULT_RATE_LIMIT})")
    tokens.add_parser("list", help="list tokens (never the tokens themselves)")
    revoke = tokens.add_parser("revoke", help="revoke a token, effective immediately")
    revoke.add_argument("name")
    sub.add_parser("config", help="print the effective configuration, secrets masked")
    cursor = sub.add_parser("cursor", help="show or set the ingest cursor")
    cursor_sub = cursor.add_subparsers(dest="cursor_command", required=True)
    cursor_sub.add_parser("show", help="print the committed cursor")
    setter = cursor_sub.add_parser("set", help="set the upstream seq to resume after "
                                               "(refused while the service runs)")
    setter.add_argument("seq", type=int)
    partitions = sub.add_parser("partitions", help="list or maintain the log's partitions")
    partitions.add_argument("action", choices=["list", "maintain"])
    record = sub.add_parser("record", help="capture a live firehose into FILE")
    record.add_argument("url")
    record.add_argument("file", type=Path)
    record.add_argument("--limit", type=int, default=None, help="stop after N frames")
    return parser


@contextmanager
def _database(settings: config.Settings) -> Iterator[config.Settings]:
    """``settings`` with a database URL: the configured one, or the embedded server's."""
    if settings.database_url is not None:
        yield settings
        return
    from .embedded import embedded_postgres

    log.info("DATABASE_URL is not set: using the embedded PostgreSQL in %s",
             settings.data_dir / "pgdata")
    with embedded_postgres(settings.data_dir) as url:
        yield dataclasses.replace(settings, database_url=url)


def _migrate(settings: config.Settings, always: bool = False) -> None:
    if schema.create_database_if_missing(settings.database_url):
        log.info("created database %s", settings.database_url)
    if always or not schema.at_head(settings.database_url):
        schema.migrate(settings.sqlalchemy_url)


def _tokens(settings: config.Settings, args: argparse.Namespace) -> int:
    from .api import auth, params

    if args.tokens_command == "create":
        scope = {"collection": args.collection, "repo": args.repo,
                 "event_type": args.event_type}
        try:
            parsed = params.parse_events(scope)
        except params.ApiError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        if not 1 <= args.rate_limit <= 100_000 or not args.name.strip():
            print("error: --rate-limit must be 1..100000 and NAME non-empty", file=sys.stderr)
            return 2
        token = auth.new_token()
        try:
            tokens.create_token(settings.database_url, args.name,
                            auth.token_hash(settings.api_token_salt, token),
                            parsed.collections, parsed.filter.event_types, parsed.filter.repos,
                            args.rate_limit)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(token)
        return 0
    if args.tokens_command == "list":
        for row in tokens.list_tokens(settings.database_url):
            print(json.dumps(row, default=str))
        return 0
    if not tokens.revoke_token(settings.database_url, args.name):
        print(f"error: no active token named {args.name!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.name}", file=sys.stderr)
    return 0


def _partitions(settings: config.Settings, action: str) -> int:
    import trio_asyncio

    from .log.batcher import utc_now
    from .log.partitions import maintain

    async def main() -> None:
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

    trio.run(main)
    return 0


def _cursor(settings: config.Settings, args: argparse.Namespace) -> int:
    if args.cursor_command == "show":
        print(json.dumps(cursor.show_cursor(settings.database_url), default=str))
        return 0
    if args.seq < 0:
        print("error: SEQ must be >= 0", file=sys.stderr)
        return 2
    try:
        cursor.set_cursor(settings.database_url, args.seq)
    except writer.WriterActive as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"cursor set: the next start resumes after seq {args.seq}", file=sys.stderr)
    return 0


def _run(settings: config.Settings) -> int:
    from .service import run_until_signal

    _migrate(settings)
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


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(production: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if production else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # One line per request is what metrics are for.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # chatty at INFO


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = config.from_env()
    except config.ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.environment == "production")
    if args.command == "replay":
        return _replay(args)
    if args.command == "record":
        return _record(args)
    if args.command == "config":
        for name, value in settings.masked().items():
            print(f"{name} = {value}")
        return 0
    with _database(settings) as settings:
        return _with_database(settings, args)


def _with_database(settings: config.Settings, args: argparse.Namespace) -> int:
    if args.command == "migrate":
        _migrate(settings, always=True)
        return 0
    if args.command == "tokens":
        _migrate(settings)
        return _tokens(settings, args)
    if args.command == "partitions":
        _migrate(settings)
        return _partitions(settings, args.action)
    if args.command == "cursor":
        _migrate(settings)
        return _cursor(settings, args)
    return _run(settings)


if __name__ == "__main__":
    sys.exit(main())
