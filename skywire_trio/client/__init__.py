"""A Python client for consumers of skywire-trio's ``GET /events``.

It needs only httpx (and anyio, which httpx brings) and imports nothing else of
skywire_trio, so an application can vendor this package alone::

    from skywire_trio.client import AsyncClient, FileCheckpoint

    async with AsyncClient("http://127.0.0.1:4000", token, collections=["app.bsky.feed.*"],
                           checkpoint=FileCheckpoint("cursor.txt")) as client:
        async for event in client.events():
            print(event.id, event.kind, event.uri)

``Client`` is the same for blocking code (``for event in client.events()``).
"""

from .aio import AsyncClient
from .checkpoint import CallbackCheckpoint, Checkpoint, FileCheckpoint
from .events import Commit, Event, Page, parse_page
from .follow import Backoff, ClientError, Follower, FollowStats, retry_after
from .sync import Client

__all__ = ["AsyncClient", "Backoff", "CallbackCheckpoint", "Checkpoint", "Client",
           "ClientError", "Commit", "Event", "FileCheckpoint", "Follower", "FollowStats",
           "Page", "parse_page", "retry_after"]
