"""``tokens create|list|revoke``: API tokens, stored as keyed hashes with their scope."""

from __future__ import annotations

import argparse
import sys

from .. import config
from ..config import Settings
from ..identifiers import check_scope
from ..log import tokens
from .database import database
from .output import add_json_flag, print_rows, refuse

TOKEN_COLUMNS = ("name", "collections", "event_types", "repos", "rate_limit", "created_at",
                 "revoked_at", "last_used_at")
DEFAULT_RATE_LIMIT = 50
MAX_RATE_LIMIT = 100_000


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tokens`` and its subcommands."""
    group = commands.add_parser("tokens", help="manage API tokens")
    group.set_defaults(handler=_tokens, needs=(*config.DATABASE, "api_token_salt"))
    sub = group.add_subparsers(dest="tokens_command", required=True)
    create = sub.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("name")
    create.add_argument("--collection", action="append", default=[],
                        help="allowed collection (NSID or prefix.*); repeatable")
    create.add_argument("--event-type", action="append", default=[],
                        help="allowed event type; repeatable")
    create.add_argument("--repo", action="append", default=[], help="allowed DID; repeatable")
    create.add_argument("--rate-limit", type=int, default=DEFAULT_RATE_LIMIT,
                        help=f"requests per second (default {DEFAULT_RATE_LIMIT})")
    add_json_flag(sub.add_parser("list", help="list tokens (never the tokens themselves)"))
    revoke = sub.add_parser("revoke", help="revoke a token, effective immediately")
    revoke.add_argument("name")


def _tokens(settings: Settings, args: argparse.Namespace) -> int:
    if args.tokens_command == "create":
        # Checked before the database is touched: a refused scope needs no connection.
        collections = tuple(dict.fromkeys(args.collection))
        event_types = tuple(dict.fromkeys(args.event_type))
        repos = tuple(dict.fromkeys(args.repo))
        try:
            check_scope(collections, event_types, repos)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not 1 <= args.rate_limit <= MAX_RATE_LIMIT or not args.name.strip():
            print(f"error: --rate-limit must be 1..{MAX_RATE_LIMIT} and NAME non-empty",
                  file=sys.stderr)
            return 2
    with database(settings) as settings:
        assert settings.database_url is not None
        if args.tokens_command == "create":
            return _create(settings, args.name, collections, event_types, repos,
                           args.rate_limit)
        if args.tokens_command == "list":
            print_rows(tokens.list_tokens(settings.database_url), TOKEN_COLUMNS, args.json)
            return 0
        if not tokens.revoke_token(settings.database_url, args.name):
            return refuse(f"no active token named {args.name!r}")
    print(f"revoked {args.name}", file=sys.stderr)
    return 0


def _create(settings: Settings, name: str, collections: tuple[str, ...],
            event_types: tuple[str, ...], repos: tuple[str, ...], rate_limit: int) -> int:
    from ..api import auth

    assert settings.database_url is not None
    token = auth.new_token()
    try:
        tokens.create_token(settings.database_url, name,
                            auth.token_hash(settings.api_token_salt, token),
                            collections, event_types, repos, rate_limit)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0
