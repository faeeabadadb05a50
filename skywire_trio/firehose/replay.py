"""A local subscribeRepos server that plays recorded frames, like a PDS with a fixed history.

It honours ``cursor`` (frames with seq > cursor; no cursor means from the beginning of the
recording), answers a cursor beyond its last seq with a ``FutureCursor`` error frame and
close code 1008 as the reference PDS does, and keeps the connection open after the last
frame. ``rate`` caps frames per second (0: as fast as the client reads).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
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

    def chunks(self, cursor: int | None, paced: bool) -> Iterator[memoryview]:
        """The wire bytes after ``cursor``: one frame at a time if ``paced``, else ~1 MiB."""
        wire = memoryview(self.wire)
        first = self.start_index(cursor)
        if paced:
            for start, end in pairwise(self.bounds[first:]):
                yield wire[start:end]
            return
        for start in range(self.bounds[first], len(wire), WRITE_BYTES):
            yield wire[start:start + WRITE_BYTES]


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


async def _until_closed(stream: trio.SocketStream, conn: WSConnection) -> None:
    """After the last frame: answer pings and the close handshake until the client leaves."""
    while data := await stream.receive_some(RECEIVE_BYTES):
        conn.receive_data(data)
        for event in conn.events():
            if isinstance(event, Ping):
                await stream.send_all(conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                await stream.send_all(conn.send(event.response()))
                return


async def _handle(recording: Recording, rate: float, stream: trio.SocketStream) -> None:
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
            if cursor is not None and cursor > recording.head:
                await stream.send_all(
                    conn.send(Message(data=error_frame("FutureCursor", "Cursor in the future.")))
                    + conn.send(CloseConnection(code=1008, reason="FutureCursor")))
                return
            interval = 1 / rate if rate > 0 else 0.0
            deadline = trio.current_time()
            for chunk in recording.chunks(cursor, paced=rate > 0):
                await stream.send_all(chunk)
                if interval:
                    # Paced against the clock, not by sleeping after each frame: timer
                    # overshoot on a busy machine no longer adds up to a lower rate.
                    deadline += interval
                    await trio.sleep_until(deadline)
            await _until_closed(stream, conn)
        except (trio.BrokenResourceError, RemoteProtocolError, LocalProtocolError):
            pass  # the client went away or broke the protocol: drop it


async def serve_replay(frames: list[bytes], host: str = "127.0.0.1", port: int = 0,
                       rate: float = 0.0, *,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``frames`` until cancelled; reports the bound port through ``task_status``."""
    recording = Recording(frames)
    handler = partial(_handle, recording, rate)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, port, host=host))
        bound = listeners[0].socket.getsockname()[1]
        log.info("replaying %d frames (seq up to %d) on ws://%s:%d", len(frames),
                 recording.head, host, bound)
        task_status.started(bound)
