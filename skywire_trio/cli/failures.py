"""Failures a user causes or can fix, said in one line (exit 2) instead of a traceback.

Anything not recognised here is a bug or an outage and keeps its traceback.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

import psycopg
from asyncpg.exceptions import InsufficientPrivilegeError, InvalidAuthorizationSpecificationError

from ..config import Settings, mask_password


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):  # trio nests failures in exception groups
        for inner in exc.exceptions:
            yield from _leaves(inner)
        return
    yield exc
    # SQLAlchemy (under alembic) wraps the driver's error: look at what it wraps too.
    if exc.__cause__ is not None:
        yield from _leaves(exc.__cause__)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def explain(exc: BaseException, settings: Settings) -> str | None:
    """One line naming the problem, or None if it is not one a user can fix."""
    database = ("the embedded PostgreSQL" if settings.database_url is None
                else mask_password(settings.database_url))
    for leaf in _leaves(exc):
        if isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE:
            return (f"cannot listen on {settings.host}:{settings.port}: the address is already "
                    "in use (another process holds it; set PORT or HOST)")
        if isinstance(leaf, psycopg.errors.InsufficientPrivilege | InsufficientPrivilegeError):
            return f"the database user lacks a permission on {database}: {_first_line(leaf)}"
        if isinstance(leaf, psycopg.OperationalError | InvalidAuthorizationSpecificationError):
            return f"cannot use the database {database}: {_first_line(leaf)}"
        if isinstance(leaf, ConnectionRefusedError):
            return f"cannot reach the database {database}: connection refused"
        if isinstance(leaf, PermissionError):
            return f"permission denied: {leaf.filename or _first_line(leaf)}"
    return None
