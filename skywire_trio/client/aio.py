"""The asynchronous client: httpx over anyio, so it runs under trio and asyncio alike."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import anyio
import httpx

from .checkpoint import Checkpoint
from .events import Event, Page
from .follow import Backoff, Follower, FollowStats

USER_AGENT = "skywire-trio-client"


class AsyncClient:
    """Follows ``GET /events`` from a checkpoint: ``async for event in client.events()``.

    The position starts at ``since``, else at what ``checkpoint`` loaded, else at 0 (the
    oldest retained event). After each page has been handled (when the next one is asked
    for) the checkpoint saves the new cursor. Rate limits (429) and unavailability (503)
    are waited out as ``Retry-After`` says, network errors backed off; the same ``since``
    is asked again, so nothing is lost or repeated.
    """

    def __init__(self, base_url: str, token: str, *, collections: Sequence[str] = (),
                 repos: Sequence[str] = (), event_types: Sequence[str] = (),
                 action: str | None = None, since: int | None = None,
                 checkpoint: Checkpoint | None = None, limit: int = 1000, wait: float = 25.0,
                 backoff: Backoff | None = None, http: httpx.AsyncClient | None = None
                 ) -> None:
        self._checkpoint = checkpoint
        start = since if since is not None else (checkpoint.load() if checkpoint else None)
        self.follower = Follower(start or 0, limit, wait, collections, repos, event_types,
                                 action, backoff or Backoff())
        self._http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=wait + 15.0))
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

    async def next_page(self) -> Page:
        """The next page after ``cursor`` (long-polls; retries until it has one)."""
        follower = self.follower
        while True:
            try:
                response = await self._http.get(f"{self._base}/events", params=follower.params(),
                                                headers=self._headers)
            except httpx.TransportError:
                await anyio.sleep(follower.failure())
                continue
            outcome = follower.answer(response.status_code, response.headers, response.content)
            if isinstance(outcome, Page):
                return outcome
            await anyio.sleep(outcome)

    async def pages(self) -> AsyncIterator[Page]:
        """Pages forever; each one checkpointed once the loop body that got it is done."""
        while True:
            page = await self.next_page()
            yield page
            if self.follower.advance(page) and self._checkpoint is not None:
                saved = self._checkpoint.save(page.cursor)
                if inspect.isawaitable(saved):
                    await saved

    async def events(self) -> AsyncIterator[Event]:
        """Events forever, one at a time (checkpointed after each page's last one)."""
        async for page in self.pages():
            for event in page.events:
                yield event

    async def aclose(self) -> None:
        """Close the HTTP connections (unless the caller passed its own client)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
