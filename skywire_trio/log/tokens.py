"""API tokens in the log's database: stored as keyed hashes with their scope.

The API looks tokens up through ``ReadSession`` (async, pooled); the command line creates,
lists and revokes them here (synchronous, psycopg).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
import triopg

from ..types import Token
from .schema import conninfo

_TOKEN_COLUMNS = "name, token_hash, collections, event_types, repos, rate_limit, revoked_at"


def _token(row: Sequence[object]) -> Token:
    name, token_hash, collections, event_types, repos, rate_limit, revoked_at = row
    return Token(str(name), bytes(token_hash), tuple(collections), tuple(event_types),
                 tuple(repos), int(rate_limit), revoked_at is not None)


async def find_token(conn: triopg._triopg.TrioConnectionProxy, token_hash: bytes
                     ) -> Token | None:
    """The token with this keyed hash, revoked or not."""
    row = await conn.fetchrow(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1", token_hash)
    return None if row is None else _token(tuple(row))


async def touch_token(conn: triopg._triopg.TrioConnectionProxy, name: str) -> None:
    """Record that a token was used just now."""
    await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE name = $1", name)


def create_token(database_url: str, name: str, token_hash: bytes, collections: Sequence[str],
                 event_types: Sequence[str], repos: Sequence[str], rate_limit: int) -> None:
    """Store a new token's hash and scope; raises ``ValueError`` if the name is taken."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        try:
            conn.execute(
                "INSERT INTO api_tokens (name, token_hash, collections, event_types, repos, "
                "rate_limit) VALUES (%s, %s, %s, %s, %s, %s)",
                (name, token_hash, list(collections), list(event_types), list(repos),
                 rate_limit))
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"a token named {name!r} already exists") from None


def list_tokens(database_url: str) -> list[dict[str, object]]:
    """Every token's name, scope and dates (no hashes)."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT name, collections, event_types, repos, rate_limit, created_at, revoked_at, "
            "last_used_at FROM api_tokens ORDER BY created_at, name")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def revoke_token(database_url: str, name: str) -> bool:
    """Revoke a token; False if there is no such active token."""
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        cur = conn.execute("UPDATE api_tokens SET revoked_at = now() "
                           "WHERE name = %s AND revoked_at IS NULL", (name,))
        return cur.rowcount == 1
