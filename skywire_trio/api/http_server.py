"""hypercorn's trio worker, arranged so that every connection ends.

Built from hypercorn 0.18's own parts (its per-connection ``TCPServer``, HTTP/1.1 protocol,
lifespan and worker context; the version is pinned in pyproject.toml) with four changes:

- **Connections close.** quart-trio answers a request in a nursery of two tasks and cancels
  that nursery as soon as the ``http.disconnect`` message arrives. hypercorn sends that
  message itself, from inside the app's final ``send`` call (end of body -> stream closed ->
  ``http.disconnect`` -> close the socket or arm the keep-alive timer), so the cancellation
  lands on hypercorn's own bookkeeping at its next checkpoint: the ``send_eof`` before
  ``aclose`` (``Connection: close``, HTTP/1.0) or the lock in the idle timer's restart
  (keep-alive). The socket stays open and no timer will ever close it. ``_Connection``
  runs exactly those two steps shielded: both are bounded (a socket shutdown and close;
  starting or stopping a timer task), so a shield there can never hang, unlike a shield
  around the whole ``send`` (which also waits for the app to take messages).
- **A cap on open connections** (``ConnectionCounts.limit``), so descriptors stay available
  for ingest and the database. At the cap, a new connection first displaces the connection
  that has been idle longest (a keep-alive connection between requests, or one that has not
  finished sending its request); only when every connection is busy is it answered at once
  with ``503 too_many_connections`` and closed. Idle connections therefore never lock
  clients out, and the keep-alive timeout can be long enough to outlast the clients' own
  (a server that closes first races the client's next request on that connection).
- **The server's own errors are JSON.** What hypercorn answers before the app sees a request
  (400 malformed, 431 headers too large, 501 unsupported transfer coding) carries the API's
  ``{"error", "message"}`` body instead of an empty one.
- **A write that makes no progress ends.** hypercorn shields every socket write; a client
  that stops reading would hold its connection (and delay shutdown) forever. Each write
  now has a deadline (``SEND_TIMEOUT``) after which the connection is dropped.

Shutdown follows hypercorn's graceful path: when ``shutdown_trigger`` returns, the listeners
close (new connections are refused by the kernel), idle keep-alive connections close, each
busy one closes after its response, and whatever is still running after
``config.graceful_timeout`` is cancelled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from itertools import chain

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIFramework,
    ConnectionState,
    LifespanState,
)
from hypercorn.utils import repr_socket_addr, wrap_app

from ..timeouts import Timeouts

# A single socket write may take this long; then the client is treated as gone.
SEND_TIMEOUT = 30.0
# A refused connection gets this long to receive its 503 before it is closed.
REFUSE_SECONDS = 1.0
# Refusals answered at the same time; beyond this a connection is closed without an answer
# (each refusal holds a descriptor for up to REFUSE_SECONDS).
MAX_REFUSING = 32


@dataclasses.dataclass
class ConnectionCounts:
    """Open, displaced and refused HTTP connections (for ``/metrics``), and the memory
    releases that follow waves of them."""

    limit: int
    open: int = 0
    peak: int = 0  # the most open at once since the last memory release (api/server.py)
    releases: int = 0  # memory releases after a wave of closed connections
    evicted: int = 0
    refused: int = 0


def error_body(status: int, code: str | None = None, message: str | None = None) -> bytes:
    """The API's JSON error shape for ``status`` (code and message from the status)."""
    phrase = HTTPStatus(status)
    body = {"error": code or phrase.phrase.lower().replace(" ", "_").replace("-", "_"),
            "message": message or phrase.description or phrase.phrase}
    return json.dumps(body, separators=(",", ":")).encode()


def _refusal() -> bytes:
    body = error_body(503, "too_many_connections",
                      "the server has too many open connections; retry shortly")
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode() + body


REFUSAL = _refusal()


class _JsonErrorsH11(H11Protocol):
    """HTTP/1.1 whose protocol-level error responses carry a JSON body."""

    async def _send_error_response(self, status_code: int) -> None:
        body = error_body(status_code)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        await self._send_h11_event(h11.Response(
            status_code=status_code,
            headers=list(chain(headers, self.config.response_headers("h11")))))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


class _Connection(TCPServer):
    """hypercorn's connection handler: JSON protocol errors, bounded writes, evictable idle.

    ``idle`` holds the connections that are idle right now, oldest first, each with the
    cancel scope that ends its idle wait early (and so closes it).
    """

    def __init__(self, app: AppWrapper, config: Config, context: WorkerContext,
                 state: ConnectionState, stream: trio.SocketStream,
                 idle: dict[_Connection, trio.CancelScope], timeouts: Timeouts) -> None:
        super().__init__(app, config, context, state, stream)
        self._idle = idle
        self._timeouts = timeouts

    @property  # type: ignore[override]
    def protocol(self) -> ProtocolWrapper:
        """The protocol wrapper; its HTTP/1.1 protocol is swapped for ``_JsonErrorsH11``."""
        return self._wrapper

    @protocol.setter
    def protocol(self, wrapper: ProtocolWrapper) -> None:
        # TCPServer.run builds the wrapper inline; this is the one place to swap the class.
        inner = wrapper.protocol
        if type(inner) is H11Protocol:
            wrapper.protocol = _JsonErrorsH11(
                inner.app, inner.config, inner.context, inner.task_group,
                inner.connection_state, inner.ssl, inner.client, inner.server, inner.send)
        self._wrapper = wrapper

    async def _idle_timeout(self) -> None:
        # hypercorn's, with a cancel scope of our own so that it can be cut short, timed by
        # the server's ``Timeouts`` (a trio deadline would outlive a closed connection).
        try:
            with self._timeouts.move_on_after(self.config.keep_alive_timeout) as wait:
                self._idle[self] = wait
                await self.context.terminated.wait()
        finally:
            # Also when a request arrives: hypercorn then cancels this whole task.
            self._idle.pop(self, None)
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client closed its end (or reading failed). hypercorn leaves the keep-alive
        # timer running, and the connection's task group waits for it: a client that
        # closed an idle keep-alive connection left it in CLOSE_WAIT, with its descriptor
        # and memory, until the timer fired (75 s). A request still being answered is not
        # affected (no timer runs meanwhile).
        with trio.CancelScope(shield=True):
            await self.idle_task.stop()

    async def _close(self) -> None:
        # Shielded: quart-trio cancels the request's nursery while hypercorn, on the app's
        # task, is closing the socket (see the module docstring). Both steps are bounded.
        with trio.CancelScope(shield=True):
            await super()._close()
            # The idle timer would otherwise keep this connection's task alive (and
            # counted) for up to keep_alive_timeout after its socket closed, e.g. after
            # a 400.
            await self.idle_task.stop()

    def write_now(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` right now, without waiting or yielding:
        the bytes written, 0 when the write has to take ``protocol_send``'s path (another
        write holds the connection, the socket is full or gone)."""
        if self.send_lock.locked():
            return 0
        return _write_now(self.stream, data) or 0

    async def protocol_send(self, event: Event) -> None:
        """As hypercorn's, with the idle timer's changes shielded and bounded writes."""
        if isinstance(event, Updated):
            # Arming or stopping the keep-alive timer (bounded: a lock held only by these
            # two steps, and starting a task); see ``_close`` for why it is shielded.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            data = event.data
            sent = _write_now(self.stream, data)
            if sent == len(data):
                return
            # Shielded like hypercorn's (a response is never cut off by the app's own
            # cancellation), but with a deadline of its own.
            with trio.CancelScope(shield=True,
                                  deadline=trio.current_time() + SEND_TIMEOUT) as scope:
                try:
                    if sent is None:
                        raise trio.BrokenResourceError
                    await self.stream.send_all(memoryview(data)[sent:])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.protocol.handle(Closed())
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self.stream)
                with trio.CancelScope(shield=True):
                    await self.protocol.handle(Closed())


def _write_now(stream: trio.abc.Stream, data: bytes) -> int | None:
    """How much of ``data`` a socket stream's socket takes right now, without waiting (0
    if it would wait, or if ``stream`` is not a plain socket); None if the connection is
    gone.

    A /subscribe connection writes every few milliseconds, and nearly every write fits in
    the socket's buffer. Going straight to the (non-blocking) socket skips trio's
    ``send_all`` and the deadline scope around it, which were ~25% of the service's CPU
    with 1,100 subscribers (py-spy); a write that would wait takes the full path. The
    caller holds the connection's send lock, which is also a checkpoint.
    """
    if not isinstance(stream, trio.SocketStream):
        return 0
    try:
        # After a close, fileno() is -1 (EBADF), never a reused descriptor.
        return os.write(stream.socket.fileno(), data)
    except BlockingIOError:
        return 0
    except OSError:  # EPIPE, ECONNRESET, EBADF
        return None


async def _refuse(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(REFUSE_SECONDS):
        await stream.send_all(REFUSAL)
        await stream.send_eof()
        # Read what the client sent until it closes: closing with unread data would reset
        # the connection, and the client could lose the answer.
        while await stream.receive_some(4096):
            pass


async def serve_http(app: ASGIFramework, config: Config, counts: ConnectionCounts,
                     shutdown_trigger: Callable[[], Awaitable[object]], *,
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """Serve ``app`` on ``config.bind`` until ``shutdown_trigger`` returns, then drain.

    Reports the bound URLs when listening. Returns when every connection has closed, or
    when ``config.graceful_timeout`` after the trigger has cancelled the rest.
    """
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    idle: dict[_Connection, trio.CancelScope] = {}
    timeouts = Timeouts()  # the connections' keep-alive timers
    refusing = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal refusing
        if counts.open >= counts.limit and idle:
            # Make room: the connection idle the longest closes (at its next scheduling).
            oldest = next(iter(idle))
            idle.pop(oldest).cancel()
            counts.evicted += 1
        elif counts.open >= counts.limit:
            counts.refused += 1
            if refusing < MAX_REFUSING:
                refusing += 1
                try:
                    await _refuse(stream)
                finally:
                    refusing -= 1
            return  # trio.serve_listeners closes the stream
        counts.open += 1
        counts.peak = max(counts.peak, counts.open)
        try:
            await _Connection(asgi, config, context, ConnectionState(lifespan_state.copy()),
                              stream, idle, timeouts)
        finally:
            counts.open -= 1

    with timeouts:
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append("http://" + repr_socket_addr(sock.family, sock.getsockname()))
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as intake:
                    intake.start_soon(partial(trio.serve_listeners, handle, listeners,
                                              handler_nursery=connections))
                    task_status.started(binds)
                    await shutdown_trigger()
                    intake.cancel_scope.cancel()  # closes the listening sockets
                # Idle keep-alive connections close now, busy ones after their response.
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()
