"""Following ``/events`` without I/O: the next request, and what each answer means.

The asynchronous and the blocking client share this; they only send the requests and
sleep. The rules: pass the cursor back as ``since``; on 429 and 503 wait ``Retry-After``
and ask again for the same ``since``; on network errors and other 5xx back off
exponentially (with jitter); 400/401/403/404 are errors retrying cannot fix.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .events import Page, parse_page

# Statuses answered by waiting and asking again.
RETRY_AFTER_STATUSES = (429, 503)


class ClientError(Exception):
    """The service refused the request for a reason retrying cannot fix (4xx)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass
class FollowStats:
    """What following took: answers by kind, and the time spent waiting to retry."""

    pages: int = 0
    events: int = 0
    rate_limited: int = 0  # 429 answers
    unavailable: int = 0  # 503 answers
    failures: int = 0  # network errors and other 5xx
    waited: float = 0.0  # seconds slept before retries


@dataclasses.dataclass
class Backoff:
    """Exponential backoff with full jitter, reset by each success."""

    initial: float = 0.5
    maximum: float = 30.0
    _current: float = 0.0

    def next(self) -> float:
        """Seconds to wait before the next attempt."""
        self._current = min(self.maximum, self._current * 2 if self._current else self.initial)
        return random.uniform(self._current / 2, self._current)

    def reset(self) -> None:
        """The last attempt succeeded."""
        self._current = 0.0


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclasses.dataclass
class Follower:
    """Where a consumer stands in the log and how it asks for the next page."""

    since: int
    limit: int = 1000
    wait: float = 25.0
    collections: Sequence[str] = ()
    repos: Sequence[str] = ()
    event_types: Sequence[str] = ()
    action: str | None = None
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    max_retry_after: float = 300.0
    stats: FollowStats = dataclasses.field(default_factory=FollowStats)

    def params(self) -> list[tuple[str, str]]:
        """The query of the next request."""
        query = [("since", str(self.since)), ("limit", str(self.limit)),
                 ("wait", f"{self.wait:g}")]
        query += [("collection", c) for c in self.collections]
        query += [("repo", r) for r in self.repos]
        query += [("event_type", t) for t in self.event_types]
        if self.action:
            query.append(("action", self.action))
        return query

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> Page | float:
        """A page, or the seconds to wait before asking again (ClientError: give up)."""
        if status == 200:
            page = parse_page(body)
            self.backoff.reset()
            self.stats.pages += 1
            self.stats.events += len(page.events)
            return page
        if status in RETRY_AFTER_STATUSES:
            if status == 429:
                self.stats.rate_limited += 1
            else:
                self.stats.unavailable += 1
            asked = retry_after(headers)
            delay = min(asked, self.max_retry_after) if asked is not None else self.backoff.next()
            self.stats.waited += delay
            return delay
        if status >= 500:
            return self.failure()
        code, message = _error(body)
        raise ClientError(status, code, message)

    def failure(self) -> float:
        """The seconds to wait after a network error or a server error."""
        self.stats.failures += 1
        delay = self.backoff.next()
        self.stats.waited += delay
        return delay

    def advance(self, page: Page) -> bool:
        """Move past ``page``; whether the position changed (a checkpoint is due)."""
        moved = page.cursor != self.since
        self.since = page.cursor
        return moved


def _error(body: bytes) -> tuple[str, str]:
    try:
        decoded = json.loads(body)
        return str(decoded["error"]), str(decoded.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return "http_error", body[:200].decode(errors="replace")
