"""``subscriptions create|list|pause|resume|delete`` and ``deadletters list|retry``.

Webhook subscriptions and the batches whose retries ran out. The service's delivery task
picks every change up within a few seconds, without a restart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from .. import config
from ..config import Settings
from ..delivery.matching import BadExpression, compile_expression
from ..delivery.safety import Policy, UnsafeDestination, resolve_now
from ..delivery.signing import new_secret
from ..identifiers import ACTIONS, check_scope
from ..log import subscriptions
from .database import database

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NEEDS = (*config.DATABASE, "webhook_allow_private")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``subscriptions`` and ``deadletters`` and their subcommands."""
    group = commands.add_parser("subscriptions", help="manage webhook subscriptions")
    group.set_defaults(handler=run, needs=NEEDS)
    sub = group.add_subparsers(dest="subscriptions_command", required=True)
    create = sub.add_parser("create", help="create a subscription; prints its signing secret "
                                           "(shown once) alone on the last line")
    create.add_argument("name")
    create.add_argument("--url", required=True, help="receiver URL (https in production)")
    create.add_argument("--collection", action="append", default=[],
                        help="collection NSID or prefix.*; repeatable")
    create.add_argument("--event-type", action="append", default=[],
                        help="event type; repeatable")
    create.add_argument("--repo", action="append", default=[], help="repo DID; repeatable")
    create.add_argument("--action", action="append", default=[],
                        help=f"commit action ({', '.join(ACTIONS)}); repeatable")
    create.add_argument("--jmespath", help="JMESPath expression on each event's JSON; "
                                           "an event is sent when the result is true")
    create.add_argument("--batch", type=int, default=100, help="events per request (1..1000)")
    create.add_argument("--start", default="latest",
                        help="latest (default), oldest, or the first log id to deliver")
    create.add_argument("--on-exhausted", choices=("deadletter", "pause"),
                        default="deadletter",
                        help="when a batch's retries run out: dead-letter it and go on "
                             "(default), or pause the subscription")
    listing = sub.add_parser("list", help="cursor, lag, state and last error of each")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for verb, text in (("pause", "stop delivering (the cursor is kept)"),
                       ("resume", "deliver again (also a disabled one)"),
                       ("delete", "delete a subscription and its dead letters")):
        sub.add_parser(verb, help=text).add_argument("name")

    group = commands.add_parser("deadletters", help="batches whose retries ran out")
    group.set_defaults(handler=run, needs=NEEDS)
    sub = group.add_subparsers(dest="deadletters_command", required=True)
    listing = sub.add_parser("list", help="dead letters, of one subscription or all")
    listing.add_argument("name", nargs="?")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    retry = sub.add_parser("retry", help="have the service re-send dead letters")
    retry.add_argument("name")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every dead letter of NAME")
    which.add_argument("id", nargs="?", type=int, help="one dead letter's id")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run one command; returns the exit code (2: refused input or an unknown name)."""
    if args.command == "subscriptions" and args.subscriptions_command == "create":
        # Checked before the database is touched: refused input needs no connection.
        refused = _check_create(settings, args)
        if refused is not None:
            return _refuse(refused)
    with database(settings) as settings:
        return _run(settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    assert settings.database_url is not None
    url = settings.database_url
    try:
        if args.command == "deadletters":
            return _deadletters(url, args)
        command = args.subscriptions_command
        if command == "create":
            return _create(settings, args)
        if command == "list":
            rows = subscriptions.list_subscriptions(url)
            _print_rows(rows, args.json, ("name", "state", "cursor", "lag_events",
                                          "lag_seconds", "delivered_events", "dead_lettered",
                                          "last_error"))
            return 0
        if command == "delete":
            subscriptions.delete_subscription(url, args.name)
        else:
            subscriptions.set_state(url, args.name,
                                    {"pause": "paused", "resume": "active"}[command])
        done = {"pause": "paused", "resume": "resumed", "delete": "deleted"}[command]
        print(f"{done} {args.name}", file=sys.stderr)
        return 0
    except LookupError as exc:  # an unknown name is a refusal, as everywhere (cli/output.py)
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _check_create(settings: Settings, args: argparse.Namespace) -> str | None:
    """Why ``subscriptions create`` refuses its arguments, or None."""
    if not _NAME.fullmatch(args.name):
        return ("NAME must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit")
    try:
        resolve_now(args.url, Policy.for_environment(settings.environment == "production",
                                                     settings.webhook_allow_private))
    except UnsafeDestination as exc:
        return f"--url {args.url[:200]!r} refused: {exc}"
    try:
        check_scope(args.collection, args.event_type, args.repo)
    except ValueError as exc:
        return str(exc).replace("event_type", "--event-type", 1)
    bad = [a for a in args.action if a not in ACTIONS]
    if bad:
        return f"--action {bad[0][:50]!r} is not one of {', '.join(ACTIONS)}"
    if args.jmespath is not None:
        try:
            compile_expression(args.jmespath)
        except BadExpression as exc:
            return str(exc)
    if not 1 <= args.batch <= 1000:
        return "--batch must be from 1 to 1000"
    if args.start not in ("latest", "oldest") and not re.fullmatch(r"[1-9][0-9]{0,18}",
                                                                   args.start):
        return "--start must be latest, oldest or a log id (1 or more)"
    return None


def _create(settings: Settings, args: argparse.Namespace) -> int:
    assert settings.database_url is not None
    cursor = subscriptions.start_cursor(settings.database_url, args.start)
    secret = new_secret()
    try:
        created = subscriptions.create_subscription(
            settings.database_url, name=args.name, url=args.url,
            collections=tuple(dict.fromkeys(args.collection)),
            event_types=tuple(dict.fromkeys(args.event_type)),
            repos=tuple(dict.fromkeys(args.repo)), actions=tuple(dict.fromkeys(args.action)),
            jmespath=args.jmespath, batch_size=args.batch, secret=secret,
            on_exhausted=args.on_exhausted, cursor=cursor)
    except ValueError as exc:
        return _refuse(str(exc))
    print(f"created subscription {created.name}: events after id {created.cursor} go to "
          f"{created.url}")
    print("signing secret (shown once; verify each request's webhook-signature with it):")
    print(secret)
    return 0


def _deadletters(url: str, args: argparse.Namespace) -> int:
    if args.deadletters_command == "list":
        rows = subscriptions.list_dead_letters(url, args.name)
        _print_rows(rows, args.json, ("id", "subscription", "webhook_id", "from_id", "to_id",
                                      "event_count", "attempts", "last_error"))
        return 0
    queued = subscriptions.request_retry(url, args.name, None if args.all else args.id)
    print(f"{queued} dead letter(s) of {args.name} queued; the service re-sends them within "
          "a few seconds (they leave the list once delivered)", file=sys.stderr)
    return 0


def _print_rows(rows: list[dict[str, object]], as_json: bool, columns: tuple[str, ...]) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    shown = [[str(row[c]) if row[c] is not None else "-" for c in columns] for row in rows]
    widths = [max([len(c)] + [min(len(r[i]), 60) for r in shown]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in shown:
        print("  ".join(v[:60].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
