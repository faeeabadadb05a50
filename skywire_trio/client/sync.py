"""The blocking client: the same following rules as ``AsyncClient``, for plain scripts."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import TracebackType

import httpx

from .aio import USER_AGENT
from .checkpoint import Checkpoint
from .events import Event, Page
from .follow import Backoff, Follower, FollowStats


class Client:
    """Follows ``GET /events`` from a checkpoint: ``for event in client.events()``.

    See ``AsyncClient`` for the rules; ``checkpoint.save`` must not return an awaitable.
    """

    def __init__(self, base_url: str, token: str, *, collections: Sequence[str] = (),
                 repos: Sequence[str] = (), event_types: Sequence[str] = (),
                 action: str | None = None, since: int | None = None,
                 checkpoint: Checkpoint | None = None, limit: int = 1000, wait: float = 25.0,
                 backoff: Backoff | None = None, http: httpx.Client | None = None) -> None:
        self._checkpoint = checkpoint
        start = since if since is not None else (checkpoint.load() if checkpoint else None)
        self.follower = Follower(start or 0, limit, wait, collections, repos, event_types,
                                 action, backoff or Backoff())
        self._http = http or httpx.Client(timeout=httpx.Timeout(10.0, read=wait + 15.0))
        self._owns_http = http is None
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT}

    @property
    def cursor(self) -> int:
        """The id of the last event of the last page received."""
        return self.follower.since

    @property
    def stats(self) -> FollowStats:
        """Pages, events, rate limits, failures and time waited so far."""
        return self.follower.stats

    def next_page(self) -> Page:
        """The next page after ``cursor`` (long-polls; retries until it has one)."""
        follower = self.follower
        while True:
            try:
                response = self._http.get(f"{self._base}/events", params=follower.params(),
                                          headers=self._headers)
            except httpx.TransportError:
                time.sleep(follower.failure())
                continue
            outcome = follower.answer(response.status_code, response.headers, response.content)
            if isinstance(outcome, Page):
                return outcome
            time.sleep(outcome)

    def pages(self) -> Iterator[Page]:
        """Pages forever; each one checkpointed once the loop body that got it is done."""
        while True:
            page = self.next_page()
            yield page
            if self.follower.advance(page) and self._checkpoint is not None:
                self._checkpoint.save(page.cursor)

    def events(self) -> Iterator[Event]:
        """Events forever, one at a time (checkpointed after each page's last one)."""
        for page in self.pages():
            yield from page.events

    def close(self) -> None:
        """Close the HTTP connections (unless the caller passed its own client)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
