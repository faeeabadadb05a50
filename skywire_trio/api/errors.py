"""The API's one error type: a status, a stable code and a human message, as JSON."""

from __future__ import annotations

import trio
from asyncpg import PostgresError
from asyncpg.exceptions import InterfaceError

# Database failures the API answers with 503 (a websocket: close code 4503).
DB_ERRORS = (OSError, PostgresError, InterfaceError, trio.TooSlowError, TimeoutError)


class ApiError(Exception):
    """Answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
