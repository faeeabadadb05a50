"""A local subscribeRepos server that plays recorded frames, like a PDS with a fixed history.

It honours ``cursor`` (frames with seq > cursor; no cursor means from the beginning of the
recording), answers a cursor beyond its last seq with a ``FutureCursor`` error frame and
close code 1008 as the reference PDS does, and keeps the connection open after the last
frame. ``rate`` caps frames per second (0: as fast as the client reads).
"""

from __future__ import annotations

import bisect
import logging
from functools import partial
from urllib.parse import parse_qs, urlsplit

import cbor2
import libipld
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

log = logging.getLogger(__name__)


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


class Recording:
    """Frames with their seqs, for cursor look-ups."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        # Frames without a seq inherit the previous one, so bisect still works.
        self.positions: list[int] = []
        last = 0
        for frame in frames:
            last = frame_seq(frame) or last
            self.positions.append(last)

    @property
    def head(self) -> int:
        """The last seq in the recording (0 if none)."""
        return self.positions[-1] if self.positions else 0

    def start_index(self, cursor: int | None) -> int:
        """Index of the first frame to send after ``cursor``."""
        return 0 if cursor is None else bisect.bisect_right(self.positions, cursor)


def _cursor(path: str) -> int | None:
    values = parse_qs(urlsplit(path).query).get("cursor")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        return None


async def _handle(recording: Recording, rate: float, request: WebSocketRequest) -> None:
    ws = await request.accept()
    cursor = _cursor(request.path)
    try:
        if cursor is not None and cursor > recording.head:
            await ws.send_message(error_frame("FutureCursor", "Cursor in the future."))
            await ws.aclose(code=1008, reason="FutureCursor")
            return
        interval = 1 / rate if rate > 0 else 0.0
        for frame in recording.frames[recording.start_index(cursor):]:
            await ws.send_message(frame)
            if interval:
                await trio.sleep(interval)
        while True:  # stay open after the last frame, until the client leaves
            await ws.get_message()
    except ConnectionClosed:
        pass


async def serve_replay(frames: list[bytes], host: str = "127.0.0.1", port: int = 0,
                       rate: float = 0.0, *,
                       task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``frames`` until cancelled; reports the bound port through ``task_status``."""
    recording = Recording(frames)
    handler = partial(_handle, recording, rate)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, host, port, ssl_context=None,
                    max_message_size=16 * 1024 * 1024))
        bound = server.port
        log.info("replaying %d frames (seq up to %d) on ws://%s:%d", len(frames),
                 recording.head, host, bound)
        task_status.started(bound)
