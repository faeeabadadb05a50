"""``tail``: follow the log live, one readable line per event (or its JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import trio

from .. import config
from ..config import Settings
from ..identifiers import split_collections, valid_collection, valid_did
from ..types import EventFilter
from .database import database
from .output import refuse

PAGE = 500


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tail``."""
    tail = commands.add_parser("tail", help="follow the log live (Ctrl-C to stop)")
    tail.add_argument("--collection", action="append", default=[],
                      help="an NSID or prefix.* (repeatable)")
    tail.add_argument("--repo", action="append", default=[], help="a DID (repeatable)")
    tail.add_argument("--since", type=int, default=None,
                      help="start after this id (default: the head, i.e. new events only)")
    tail.add_argument("--json", action="store_true", help="print each event's JSON")
    tail.set_defaults(handler=_tail, needs=config.DATABASE)


def line(event: dict) -> str:
    """One readable line: id, time, kind, DID, and for commits operation and path."""
    at = datetime.fromtimestamp(event["time_us"] / 1e6, UTC).isoformat(timespec="milliseconds")
    head = f"{event['id']:>10}  {at}  {event['kind']:<8} {event.get('did') or '-'}"
    commit = event.get("commit")
    if commit is None:
        return head
    if "operation" not in commit:
        return f"{head}  (a commit without operations)"
    path = f"{commit.get('collection', '-')}/{commit.get('rkey', '-')}"
    return f"{head}  {commit.get('operation', '-'):<6} {path}"


def _tail(settings: Settings, args: argparse.Namespace) -> int:
    bad = [c for c in args.collection if not valid_collection(c)]
    bad += [r for r in args.repo if not valid_did(r)]
    if bad:
        return refuse(f"{bad[0][:100]!r} is not an NSID, an NSID prefix ending in .*, or a DID")
    if args.since is not None and args.since < 0:
        return refuse("--since must be >= 0")
    exact, prefixes = split_collections(tuple(dict.fromkeys(args.collection)))
    event_filter = EventFilter(since=args.since or 0, limit=PAGE, collections=exact,
                               prefixes=prefixes, repos=tuple(dict.fromkeys(args.repo)))
    with database(settings) as settings:
        try:
            trio.run(_follow, settings, event_filter, args.since is None, args.json)
        except KeyboardInterrupt:
            pass
    return 0


async def _follow(settings: Settings, event_filter: EventFilter, from_head: bool,
                  as_json: bool) -> None:
    import dataclasses

    from .. import aioloop
    from ..log.notify import CommitFeed
    from ..log.reader import open_read_store

    assert settings.database_url is not None
    async with aioloop.open_loop(), open_read_store(settings.database_url, 2) as store, \
            trio.open_nursery() as nursery:
        feed = CommitFeed()
        await nursery.start(feed.run, settings, {})
        since = feed.head if from_head else event_filter.since
        print(f"tail: following the log after id {since} (Ctrl-C to stop)", file=sys.stderr,
              flush=True)
        while True:
            seen = feed.head
            async with store.session() as session:
                page = await session.events(dataclasses.replace(event_filter, since=since))
            if page.count:
                for event in json.loads(b"[" + page.json + b"]"):
                    print(json.dumps(event, separators=(",", ":")) if as_json else line(event))
                sys.stdout.flush()
                since = page.last_id
            else:
                await feed.wait_past(seen)
