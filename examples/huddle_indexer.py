"""Huddle's ingest worker on skywire-trio: com.huddle.* records into SQLite index tables.

    python examples/huddle_indexer.py --url http://127.0.0.1:4000 --db huddle.sqlite
    (the token comes from HUDDLE_TOKEN, or --token)

It follows the log with skywire_trio.client, asking only for ``com.huddle.*`` commits.
Creates and updates are upserted, deletes remove the row; a record that fails validation
goes to the ``dead_letters`` table (and removes the row it would have replaced: the index
never shows what the repository no longer holds). The position is saved in the same SQLite
transaction as the rows, every 100 events and whenever it has caught up, so a crash
replays at most 100 events, and replaying is harmless (upserts and deletes by URI).
Every 10 seconds, and at the end, it reports the filter's hit rate (Huddle events among
all events of the log it went past) and its lag (now minus the commit time of the last
event it handled).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
from datetime import datetime
from typing import Any

from skywire_trio.client import Client, Event

CHECKPOINT_EVERY = 100
AT_URI = re.compile(r"at://did:[a-z]+:[a-zA-Z0-9._:%-]+/com\.huddle\.group/[A-Za-z0-9._:~-]+")

SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (uri TEXT PRIMARY KEY, did TEXT NOT NULL,
    name TEXT NOT NULL, description TEXT, created_at TEXT NOT NULL, event_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS memberships (uri TEXT PRIMARY KEY, did TEXT NOT NULL,
    group_uri TEXT NOT NULL, created_at TEXT NOT NULL, event_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (uri TEXT PRIMARY KEY, did TEXT NOT NULL,
    group_uri TEXT NOT NULL, text TEXT NOT NULL, created_at TEXT NOT NULL,
    event_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (event_id INTEGER PRIMARY KEY, uri TEXT,
    collection TEXT, reason TEXT NOT NULL, record TEXT);
CREATE TABLE IF NOT EXISTS checkpoint (one INTEGER PRIMARY KEY CHECK (one = 1),
    cursor INTEGER NOT NULL);
"""
TABLES = {"com.huddle.group": "groups", "com.huddle.membership": "memberships",
          "com.huddle.message": "messages"}


class Invalid(ValueError):
    """A record that does not follow Huddle's lexicon."""


def _text(record: dict[str, Any], key: str, low: int, high: int, required: bool = True
          ) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not low <= len(value) <= high:
        raise Invalid(f"{key} must be a string of {low} to {high} characters")
    return value


def _created_at(record: dict[str, Any]) -> str:
    value = _text(record, "createdAt", 1, 64)
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid("createdAt is not a datetime") from None
    return value


def _group_uri(record: dict[str, Any]) -> str:
    value = _text(record, "group", 1, 8192)
    if not AT_URI.fullmatch(value):
        raise Invalid("group is not the at:// URI of a com.huddle.group")
    return value


def row(collection: str, record: dict[str, Any] | None) -> tuple[Any, ...]:
    """The validated columns of one record (after uri and did), or ``Invalid``."""
    if collection not in TABLES:
        raise Invalid(f"unknown collection {collection}")
    if not isinstance(record, dict) or record.get("$type") != collection:
        raise Invalid(f"$type is not {collection}")
    if collection == "com.huddle.group":
        return (_text(record, "name", 1, 64), _text(record, "description", 0, 300, False),
                _created_at(record))
    if collection == "com.huddle.membership":
        return _group_uri(record), _created_at(record)
    return _group_uri(record), _text(record, "text", 1, 1000), _created_at(record)


def apply(db: sqlite3.Connection, event: Event) -> None:
    """One commit event into the index (inside the caller's transaction)."""
    commit = event.commit
    assert commit is not None and commit.collection is not None
    table = TABLES.get(commit.collection)
    if commit.operation == "delete":
        if table:
            db.execute(f"DELETE FROM {table} WHERE uri = ?", (event.uri,))
        return
    try:
        if commit.record_error:
            raise Invalid(f"the service could not store the record: {commit.record_error}")
        values = row(commit.collection, commit.record)
    except Invalid as exc:
        db.execute("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                   (event.id, event.uri, commit.collection, str(exc),
                    json.dumps(commit.record)))
        if table:
            db.execute(f"DELETE FROM {table} WHERE uri = ?", (event.uri,))
        return
    marks = ", ".join("?" * (len(values) + 3))
    db.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})",
               (event.uri, event.did, *values, event.id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:4000")
    parser.add_argument("--token", default=os.environ.get("HUDDLE_TOKEN"))
    parser.add_argument("--db", default="huddle.sqlite")
    parser.add_argument("--once", action="store_true", help="exit once caught up")
    parser.add_argument("--limit", type=int, default=1000, help="events per page")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--crash-after", type=int, help="die after N events (for tests)")
    args = parser.parse_args()
    db = sqlite3.connect(args.db, isolation_level=None)  # transactions by hand
    db.executescript(SCHEMA)
    (since,) = db.execute("SELECT coalesce(max(cursor), 0) FROM checkpoint").fetchone()
    start, handled, reported = since, 0, time.monotonic()

    def checkpoint(cursor: int) -> None:  # with the rows written since the last one
        db.execute("INSERT OR REPLACE INTO checkpoint VALUES (1, ?)", (cursor,))
        db.execute("COMMIT")
        db.execute("BEGIN")

    def report(cursor: int, lag: float, out: Any = sys.stderr) -> None:
        scanned = cursor - start  # ids are gapless: every log event we went past
        print(json.dumps({"cursor": cursor, "events": handled, "scanned": scanned,
                          "hit_rate": round(handled / scanned, 4) if scanned else None,
                          "lag_seconds": round(lag, 3)}), file=out, flush=True)

    with Client(args.url, args.token, collections=["com.huddle.*"], event_types=["commit"],
                since=since, limit=args.limit, wait=0 if args.once else 25) as client:
        db.execute("BEGIN")
        for page in client.pages():
            for event in page.events:
                apply(db, event)
                handled += 1
                if args.crash_after and handled == args.crash_after:
                    os._exit(3)  # as if killed: the open transaction is lost
                if handled % CHECKPOINT_EVERY == 0:
                    checkpoint(event.id)
            caught_up = len(page.events) < client.follower.limit
            if caught_up:
                checkpoint(page.cursor)
            # Lag: how old the newest event handled is (none when at the head).
            lag = 0.0 if caught_up else time.time() - page.events[-1].time_us / 1e6
            if time.monotonic() - reported >= args.report_every:
                reported = time.monotonic()
                report(page.cursor, lag)
            if caught_up and args.once:
                break
        db.execute("COMMIT")
    report(page.cursor, lag, sys.stdout)


if __name__ == "__main__":
    main()
