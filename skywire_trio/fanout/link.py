"""The publisher's NATS connection: batches of events out, their acknowledgements back.

nats-py is asyncio; the service runs inside ``trio_asyncio.open_loop()``. Each crossing
from trio into asyncio costs 100-300 us, so a whole batch is published in one crossing
and its acknowledgements are awaited in another (one crossing per message would cap the
rate at 3-4k messages/s; see shared/DESIGN.md).

Acknowledgements are tracked per batch, not per message: every message of a batch carries
the same reply subject, and the batch is confirmed when as many acks as messages arrived,
or fails on the first refusal. ``publish_async`` is not used: it has no ack timeout and
costs a future and a task per message.

The connection never reconnects by itself (``allow_reconnect=False``): nats-py would
replay messages buffered during a reconnect after ones that were lost in the break. When
the connection breaks, the publisher starts over from what the stream holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import nats
import trio
import trio_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from ..config import Settings
from ..errors import describe
from ..stats import PublisherStats
from ..types import LogEvent
from . import stream
from .subjects import headers_for, subject_for, too_large_body

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
# Room left under the server's max_payload for the headers.
HEADER_ROOM = 1024


class PublishFailed(RuntimeError):
    """JetStream refused a message, an ack did not come in time, or the connection broke."""


class Batch:
    """One published batch, confirmed when every message is acknowledged."""

    def __init__(self, token: str, events: Sequence[LogEvent], deadline: float) -> None:
        self.token = token
        self.first_id = events[0].id
        self.last_id = events[-1].id
        self.last_time_us = events[-1].time_us
        self.count = len(events)
        self.deadline = deadline  # asyncio loop time by which every ack must be in
        self.pending = self.count
        self.duplicates = 0
        self.error: str | None = None
        self.done = asyncio.Event()

    def acknowledged(self, data: bytes, status: str | None) -> None:
        """Count one ack (``data`` is JetStream's JSON reply)."""
        if status == "503":
            self.fail("no JetStream stream listens on the subject (no responders)")
            return
        if b'"error"' in data:
            error = json.loads(data).get("error", {})
            self.fail(f"{error.get('description', data[:200])} (error {error.get('err_code')})")
            return
        if b'"duplicate":true' in data:
            self.duplicates += 1
        self.pending -= 1
        if not self.pending:
            self.done.set()

    def fail(self, reason: str) -> None:
        """The batch cannot be confirmed."""
        if self.error is None:
            self.error = reason
        self.done.set()


@dataclasses.dataclass(frozen=True)
class Confirmed:
    """A batch JetStream acknowledged in full."""

    last_id: int
    last_time_us: int
    count: int
    duplicates: int


class NatsLink:
    """One NATS connection used from trio: stream management and batch publishing."""

    def __init__(self, nc: Client, settings: Settings) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.nats_ack_timeout)
        self._settings = settings
        self._inbox = nc.new_inbox() + "."
        self._batches: dict[str, Batch] = {}
        self._next_token = 0
        self._max_body = nc.max_payload - HEADER_ROOM
        self.too_large = 0

    # -- asyncio side -------------------------------------------------------------------

    async def _subscribe(self) -> None:
        await self._nc.subscribe(self._inbox + "*", cb=self._on_ack,
                                 pending_msgs_limit=4 * self._settings.nats_max_pending)

    async def _on_ack(self, msg: Msg) -> None:
        batch = self._batches.get(msg.subject[len(self._inbox):])
        if batch is not None:
            batch.acknowledged(msg.data, (msg.headers or {}).get("Status"))

    def connection_lost(self, reason: str) -> None:
        """Fail every batch still waiting (called from nats-py's callbacks)."""
        for batch in self._batches.values():
            batch.fail(reason)

    async def _publish(self, events: Sequence[LogEvent], expected_last_seq: int) -> Batch:
        loop = asyncio.get_running_loop()
        token = str(self._next_token)
        self._next_token += 1
        batch = Batch(token, events, loop.time() + self._settings.nats_ack_timeout)
        self._batches[token] = batch
        reply = self._inbox + token
        prefix = self._settings.nats_subject_prefix
        publish = self._nc.publish
        for event in events:
            body = event.json
            if len(body) > self._max_body:
                # The server would close the connection over it; publish what a consumer
                # needs to fetch it from /events instead.
                log.warning("event %d is %d bytes, over the NATS max payload: published as "
                            "a too_large stub", event.id, len(body))
                self.too_large += 1
                body = too_large_body(event)
            await publish(subject_for(prefix, event), body, reply=reply,
                          headers=headers_for(event, expected_last_seq))
            expected_last_seq += 1
        return batch

    async def _confirm(self, batch: Batch) -> Confirmed:
        try:
            timeout = max(0.0, batch.deadline - asyncio.get_running_loop().time())
            try:
                await asyncio.wait_for(batch.done.wait(), timeout)
            except TimeoutError:
                batch.fail(f"{batch.pending} of {batch.count} acks (ids {batch.first_id}-"
                           f"{batch.last_id}) not received within "
                           f"{self._settings.nats_ack_timeout:g}s")
        finally:
            del self._batches[batch.token]
        if batch.error is not None:
            raise PublishFailed(batch.error)
        return Confirmed(batch.last_id, batch.last_time_us, batch.count, batch.duplicates)

    # -- trio side: one crossing each -------------------------------------------------

    async def ensure_stream(self) -> None:
        """Create or update the stream (``stream.StreamRefused`` if JetStream refuses)."""
        await trio_asyncio.aio_as_trio(stream.ensure_stream)(self._js, self._settings)

    async def stream_end(self) -> stream.StreamEnd:
        """The stream's last sequence and the log id of its last message."""
        return await trio_asyncio.aio_as_trio(stream.stream_end)(
            self._js, self._settings.nats_stream)

    async def publish(self, events: Sequence[LogEvent], expected_last_seq: int) -> Batch:
        """Publish ``events`` in order, the first expected after stream sequence
        ``expected_last_seq``; returns the batch to ``confirm``."""
        return await trio_asyncio.aio_as_trio(self._publish)(events, expected_last_seq)

    async def confirm(self, batch: Batch) -> Confirmed:
        """Wait for every ack of ``batch`` (raises ``PublishFailed``)."""
        return await trio_asyncio.aio_as_trio(self._confirm)(batch)


@asynccontextmanager
async def connect(settings: Settings, stats: PublisherStats, attempt: int
                  ) -> AsyncIterator[NatsLink]:
    """A connection to the first server that answers, trying them in turn from the
    ``attempt``-th (so retries spread over the cluster)."""
    urls = settings.nats_urls
    order = [urls[(attempt + i) % len(urls)] for i in range(len(urls))]
    holder: list[NatsLink] = []

    async def on_error(exc: Exception) -> None:
        if holder:  # connection failures before that are reported by open_connection
            log.warning("NATS: %s: %s", type(exc).__name__, exc)

    async def on_closed() -> None:
        stats.connected = False
        for link in holder:
            link.connection_lost("the NATS connection closed")

    async def open_connection() -> Client:
        failures = []
        for url in order:
            try:
                # nats-py retries one server many times over (max_reconnect_attempts) even
                # without reconnection: one try here, the next server after a failure.
                return await asyncio.wait_for(nats.connect(
                    servers=[url], allow_reconnect=False, connect_timeout=CONNECT_TIMEOUT,
                    max_reconnect_attempts=1, reconnect_time_wait=0,
                    name="skywire-trio publisher", error_cb=on_error, closed_cb=on_closed,
                    disconnected_cb=on_closed, ping_interval=5, max_outstanding_pings=3),
                    CONNECT_TIMEOUT)
            except (OSError, TimeoutError, nats.errors.Error) as exc:
                failures.append(f"{url}: {describe(exc)}")
        raise ConnectionError("no NATS server reachable (" + "; ".join(failures) + ")")

    nc = await trio_asyncio.aio_as_trio(open_connection)()
    link = NatsLink(nc, settings)
    holder.append(link)
    try:
        await trio_asyncio.aio_as_trio(link._subscribe)()
        stats.connected = True
        yield link
    finally:
        stats.connected = False
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await trio_asyncio.aio_as_trio(nc.close)()
