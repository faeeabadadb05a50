"""A local subscribeRepos server that plays recorded frames, like a PDS with a fixed history.

It honours ``cursor`` (frames with seq > cursor; no cursor means from the beginning of the
recording), answers a cursor beyond its last seq with a ``FutureCursor`` error frame and
close code 1008 as the reference PDS does, and keeps the connection open after the last
frame. ``rate`` caps frames per second (0: as fast as the client reads).

It answers pings whenever it is not sending. For liveness tests it can go quiet for a while
after some frames (still answering pings), stop answering pings, and report when each frame
was sent (for latency measurements).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import accumulate, pairwise
from urllib.parse import parse_qs, urlsplit

import cbor2
import libipld
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

RECEIVE_BYTES = 64 * 1024
WRITE_BYTES = 1024 * 1024


def frame_seq(frame: bytes) -> int | None:
    """The seq in a frame's body, or None (info frames, garbage)."""
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError):
        return None
    body = parts[1] if len(parts) == 2 and isinstance(parts[1], dict) else {}
    seq = body.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def error_frame(name: str, message: str | None = None) -> bytes:
    """An ``op: -1`` error frame."""
    body = {"error": name} if message is None else {"error": name, "message": message}
    return cbor2.dumps({"op": -1}, canonical=True) + cbor2.dumps(body, canonical=True)


def websocket_message(payload: bytes) -> bytes:
    """``payload`` as one unmasked binary websocket frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, size))
    elif size < 1 << 16:
        header = bytes((0x82, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x82, 127)) + size.to_bytes(8, "big")
    return header + payload


class Recording:
    """Frames with their seqs, for cursor look-ups, and encoded once for the wire."""

    def __init__(self, frames: list[bytes]) -> None:
        # Frames without a seq inherit the previous one, so bisect still works.
        self.positions: list[int] = []
        last = 0
        for frame in frames:
            last = frame_seq(frame) or last
            self.positions.append(last)
        # Every frame as a websocket message, back to back, and where each one starts:
        # sending is then slicing, not encoding (twice the recording's size in memory).
        messages = [websocket_message(frame) for frame in frames]
        self.bounds = list(accumulate(map(len, messages), initial=0))
        self.wire = b"".join(messages)

    @property
    def head(self) -> int:
        """The last seq in the recording (0 if none)."""
        return self.positions[-1] if self.positions else 0

    def start_index(self, cursor: int | None) -> int:
        """Index of the first frame to send after ``cursor``."""
        return 0 if cursor is None else bisect.bisect_right(self.positions, cursor)

    def chunks(self, cursor: int | None, paced: bool) -> Iterator[tuple[int, memoryview]]:
        """The wire bytes after ``cursor``, with the index of the frame each chunk ends.

        One frame at a time if ``paced``, else ~1 MiB at a time (index -1: not on a frame
        boundary).
        """
        wire = memoryview(self.wire)
        first = self.start_index(cursor)
        if paced:
            for index, (start, end) in enumerate(pairwise(self.bounds[first:]), first):
                yield index, wire[start:end]
            return
        for start in range(self.bounds[first], len(wire), WRITE_BYTES):
            yield -1, wire[start:start + WRITE_BYTES]


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """How the server treats each connection (the defaults: like a PDS with fixed history).

    ``quiet_after`` frames into a connection, send nothing for ``quiet_for`` seconds (pings
    are still answered if ``pongs``), then go on. ``pongs=False``: never answer a ping, like
    a peer that holds the socket but is gone. ``on_sent(index, time.monotonic())`` is called
    after each frame is written (frames are then written one at a time); ``on_connect(cursor)``
    when a client connects.
    """

    rate: float = 0.0
    quiet_after: int | None = None
    quiet_for: float = 0.0
    pongs: bool = True
    on_sent: Callable[[int, float], None] | None = None
    on_connect: Callable[[int | None], None] | None = None

    @property
    def frame_by_frame(self) -> bool:
        """Whether frames must be written one at a time."""
        return self.rate > 0 or self.quiet_after is not None or self.on_sent is not None


def _cursor(path: str) -> int | None:
    values = parse_qs(urlsplit(path).query).get("cursor")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


async def _handshake(stream: trio.SocketStream, conn: WSConnection) -> Request | None:
    """Read until the client's upgrade request; None if it left or spoke something else."""
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        try:
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, Request):
                    return event
        except RemoteProtocolError:
            return None


async def _answer(stream: trio.SocketStream, conn: WSConnection, pongs: bool) -> None:
    """While not sending: answer pings (if ``pongs``) and the close handshake; returns once
    the client has left."""
    while data := await stream.receive_some(RECEIVE_BYTES):
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, Ping) and pongs:
                await stream.send_all(conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                await stream.send_all(conn.send(event.response()))
                return


async def _handle(recording: Recording, behaviour: Behaviour, stream: trio.SocketStream) -> None:
    # wsproto for the handshake, then the pre-encoded frames written ~1 MiB at a time:
    # trio-websocket's send_message cost ~78 us a message here, which made this server the
    # bottleneck of the ingest benchmark; encoding at send time still cost ~10 us a frame.
    conn = WSConnection(ConnectionType.SERVER)
    async with stream:
        try:
            request = await _handshake(stream, conn)
            if request is None:
                return
            await stream.send_all(conn.send(AcceptConnection()))
            cursor = _cursor(request.target)
            if behaviour.on_connect is not None:
                behaviour.on_connect(cursor)
            if cursor is not None and cursor > recording.head:
                await stream.send_all(
                    conn.send(Message(data=error_frame("FutureCursor", "Cursor in the future.")))
                    + conn.send(CloseConnection(code=1008, reason="FutureCursor")))
                return
            interval = 1 / behaviour.rate if behaviour.rate > 0 else 0.0
            deadline = trio.current_time()
            sent = 0
            for index, chunk in recording.chunks(cursor, paced=behaviour.frame_by_frame):
                await stream.send_all(chunk)
                sent += 1
                if behaviour.on_sent is not None:
                    behaviour.on_sent(index, time.monotonic())
                if sent == behaviour.quiet_after:
                    with trio.move_on_after(behaviour.quiet_for):
                        await _answer(stream, conn, behaviour.pongs)
                        return  # the client left while it was quiet
                    deadline = trio.current_time()  # the pace resumes after the quiet spell
                if interval:
                    # Paced against the clock, not by sleeping after each frame: timer
                    # overshoot on a busy machine no longer adds up to a lower rate.
                    deadline += interval
                    await trio.sleep_until(deadline)
            await _answer(stream, conn, behaviour.pongs)
        except (trio.BrokenResourceError, RemoteProtocolError, LocalProtocolError):
            pass  # the client went away or broke the protocol: drop it


async def serve_replay(frames: list[bytes], host: str = "127.0.0.1", port: int = 0,
                       rate: float = 0.0, *, behaviour: Behaviour | None = None,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``frames`` until cancelled; reports the bound port through ``task_status``.

    ``behaviour`` (its ``rate`` then wins over ``rate``) shapes each connection.
    """
    recording = Recording(frames)
    behaviour = behaviour or Behaviour(rate=rate)
    handler = partial(_handle, recording, behaviour)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, port, host=host))
        bound = listeners[0].socket.getsockname()[1]
        log.info("replaying %d frames (seq up to %d) on ws://%s:%d", len(frames),
                 recording.head, host, bound)
        task_status.started(bound)
