"""The API's one error type, and database failures sorted by kind."""

from __future__ import annotations

import trio
from asyncpg.exceptions import InterfaceError, PostgresError

# Database failures a websocket closes with code 4503 (subscribe.py); HTTP requests are
# answered by kind (``database_fault`` below).
DB_ERRORS = (OSError, PostgresError, InterfaceError, trio.TooSlowError, TimeoutError)


class ApiError(Exception):
    """Answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# What can go wrong talking to PostgreSQL, as the API and /health name it.
TIMEOUT, PERMISSION, UNREACHABLE, FAILED = "timeout", "permission", "unreachable", "error"
# SQLSTATE classes and codes per kind (the PostgreSQL manual, appendix A).
_PERMISSION_STATES = ("42501",)  # insufficient_privilege
_PERMISSION_CLASSES = ("28",)  # invalid authorization: the role cannot log in
_UNREACHABLE_CLASSES = ("08", "53")  # connection exceptions, insufficient resources
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03", "3D000")  # shut down, starting, no database


def database_fault(exc: BaseException) -> str | None:
    """The kind of a database failure (``TIMEOUT`` ...), or None if ``exc`` is not one."""
    if isinstance(exc, TimeoutError | trio.TooSlowError):  # asyncpg's command_timeout, ours
        return TIMEOUT
    if isinstance(exc, OSError | InterfaceError):  # no connection, or it broke
        return UNREACHABLE
    if not isinstance(exc, PostgresError):
        return None
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "57014":  # query_canceled: statement_timeout
        return TIMEOUT
    if state in _PERMISSION_STATES or state[:2] in _PERMISSION_CLASSES:
        return PERMISSION
    if state in _UNREACHABLE_STATES or state[:2] in _UNREACHABLE_CLASSES:
        return UNREACHABLE
    return FAILED


def database_error(kind: str) -> ApiError:
    """The answer to a request that failed on the database with ``kind``."""
    retry = {"Retry-After": "5"}
    if kind == TIMEOUT:
        return ApiError(503, "database_timeout", "the query took too long; retry shortly, or "
                        "ask for less (a smaller limit or a narrower filter)", retry)
    if kind == UNREACHABLE:
        return ApiError(503, "database_unavailable",
                        "the database is unreachable; retry shortly", retry)
    if kind == PERMISSION:
        return ApiError(500, "database_permission", "the service's database role lacks a "
                        "privilege it needs; the operator has to fix this")
    return ApiError(500, "database_error", "the database reported an error")
