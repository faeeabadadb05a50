"""``status``: one screen on the service: role, cursor, lag, rates, partitions, tokens, errors.

What the database knows is always shown; what only the running process knows (role,
rates, lag, recent warnings) comes from its ``/status.json`` when it answers on
``HOST:PORT``.
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from datetime import UTC, datetime

from .. import config
from ..config import Settings
from ..log import cursor, tokens
from .database import database
from .output import FAILED, OK, dumps, text

LIVE_TIMEOUT = 0.5


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status``."""
    status = commands.add_parser("status", help="one screen: role, cursor, lag, rates, "
                                 "partitions, tokens, last errors")
    status.add_argument("--json", action="store_true", help="the same as one JSON object")
    status.set_defaults(handler=_status, needs=(*config.DATABASE, "host", "port"))


def _live(settings: Settings) -> dict | None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/status.json",
                                    timeout=LIVE_TIMEOUT) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _partitions(database_url: str) -> list[dict[str, object]]:
    import trio

    from .. import aioloop
    from ..log import partition_store

    async def read() -> list[dict[str, object]]:
        async with aioloop.open_loop(), partition_store.connect(database_url) as store:
            now = datetime.now(UTC)
            return [p.as_json(now) for p in await store.partitions()]

    return trio.run(read)


def _status(settings: Settings, args: argparse.Namespace) -> int:
    live = _live(settings)
    with database(settings, migrate=False) as settings:
        assert settings.database_url is not None
        state = {
            "service": "running" if live else "not answering on "
                       f"{settings.host}:{settings.port}",
            "cursor": cursor.show_cursor(settings.database_url),
            "tokens_active": sum(1 for t in tokens.list_tokens(settings.database_url)
                                 if t["revoked_at"] is None),
            "partitions": _partitions(settings.database_url),
            "live": live,
        }
    if args.json:
        print(dumps(state))
    else:
        print(_screen(state))
    return OK if live is None or live.get("healthy") else FAILED


def _rate(live: dict) -> str:
    rates = live["history"]["rate"]
    return f"{rates[-1]:.1f} events/s (max {max(rates):.1f} over the last hour)" if rates \
        else "no sample yet"


def _screen(state: dict) -> str:
    cur, live = state["cursor"] or {}, state["live"]
    lines = [f"service     {state['service']}"]
    if live:
        health = live["health"]
        lines += [f"status      {live['status']} (role {live['role']}, up "
                  f"{live['uptime_seconds']:.0f} s)",
                  f"upstream    {live['upstream']} "
                  f"({'connected' if health['upstream_connected'] else 'not connected'})",
                  f"lag         {text(health['lag_seconds'])} s behind the newest event's time",
                  f"rate        {_rate(live)}",
                  f"restarts    {health['ingest_restarts']}"]
    lines += [f"cursor      seq {text(cur.get('last_seq'))}, last id {text(cur.get('last_id'))}"
              f", updated {text(cur.get('updated_at'))}",
              f"tokens      {state['tokens_active']} active"]
    parts = state["partitions"]
    total = sum(int(p["bytes"]) for p in parts)
    default_rows = sum(int(p["rows_estimate"]) for p in parts if p["default"])
    lines.append(f"partitions  {len(parts) - 1} daily + default, {total / 2**20:.1f} MiB, "
                 f"{default_rows} row(s) in the default partition"
                 + ("  <-- ALARM" if default_rows else ""))
    for p in parts:
        lines.append(f"            {p['name']:28} {text(p['rows_estimate']):>12} rows "
                     f"{int(p['bytes']) / 2**20:9.1f} MiB")
    warnings = live["warnings"][-5:] if live else []
    if live is None:
        lines.append("last errors (the service is not answering)")
    else:
        lines.append("last errors " + ("none" if not warnings else ""))
    for w in warnings:
        lines.append(f"            {w['at']} {w['level']} {w['message'][:120]}")
    return "\n".join(lines)
