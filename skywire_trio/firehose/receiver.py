"""The receiver: the child process that holds the upstream websocket and decodes frames.

Why a process: on one thread the service spent ~72 us of CPU per frame, ~24 of them in
trio-websocket/wsproto and ~19 in decoding, so it could not commit 15,000 events/s. Here
those two run on the other core and the service only unpickles decoded frames (~5 us).

Started by the reader as ``COMMAND + [URL, READ_TIMEOUT]``. One process is one
connection: it writes messages to stdout, each a u32 big-endian length and a pickle, in
order:

- ``("connected",)`` once the websocket is open;
- ``("frames", items, nbytes)``: decoded frames (as plain tuples, see ``from_wire``), or
  ``Rejected`` for a message that could not be parsed, in upstream order, with the number
  of bytes they came from;
- ``("closed", reason)`` when the connection ends or stays silent, as its last message.

It exits when the connection ends, and as soon as its stdin reaches end of file, which is
how it learns that the service stopped or died (even by SIGKILL). A full stdout pipe
(the service not reading) stops it from reading the socket, so TCP pushes back upstream.
"""

from __future__ import annotations

import fcntl
import math
import os
import pickle
import signal
import struct
import sys
from typing import NamedTuple

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from .codec import Frame, FrameError, Row, decode_frame

# Headroom over the spec's 5 MB frame cap: a larger frame still reaches the decoder, which
# rejects it into the dead-letter directory instead of the connection failing on it forever.
WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024
# trio-websocket reads 4 KiB at a time by default, less than one average frame (5.4 KB);
# 256 KiB reads and a queue of parsed messages cut the CPU per frame from ~129 to ~77 us
# (measured with a receive-only client against the replay server).
RECEIVE_BUFFER = 256 * 1024
MESSAGE_QUEUE = 64
# Decoded frames waiting for the pipe; at most this many are written in one message.
PENDING_FRAMES = 256
COALESCE = 0.002
PIPE_BYTES = 1024 * 1024
_LENGTH = struct.Struct(">I")
# Not ``-m``: run as __main__, this module's classes would pickle as ``__main__.Rejected``.
COMMAND = [sys.executable, "-c", "from skywire_trio.firehose.receiver import run; run()"]


class Rejected(NamedTuple):
    """A message that is not a parseable frame: its bytes and why, for the dead letters."""

    raw: bytes
    reason: str


def encode_message(message: tuple) -> bytes:
    """One length-prefixed pickle, as written to the pipe."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


class MessageBuffer:
    """Splits the bytes read from the pipe back into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple]:
        """Add ``data``; return the messages it completed."""
        self._buffer += data
        messages, pos, size = [], 0, len(self._buffer)
        view = memoryview(self._buffer)
        while size - pos >= 4:
            (length,) = _LENGTH.unpack_from(view, pos)
            if size - pos - 4 < length:
                break
            # The peer is our own child process, so unpickling it is safe.
            messages.append(pickle.loads(view[pos + 4:pos + 4 + length]))
            pos += 4 + length
        view.release()
        del self._buffer[:pos]
        return messages


def to_wire(item: Frame | Rejected) -> tuple | Rejected:
    """A frame as plain tuples, for a ``frames`` message (``from_wire`` undoes it)."""
    # Plain tuples pickle and unpickle ~3x faster than the dataclass and named tuples.
    if isinstance(item, Rejected):
        return item
    return (item.kind, item.seq, [tuple(row) for row in item.rows], item.error, item.message)


def from_wire(item: tuple | Rejected) -> Frame | Rejected:
    """A frame as the decoder made it, from its form in a ``frames`` message."""
    if isinstance(item, Rejected):
        return item
    kind, seq, rows, error, message = item
    return Frame(kind, seq, [Row._make(row) for row in rows], error, message)


def _decode(message: bytes | str) -> Frame | Rejected:
    if not isinstance(message, bytes):
        return Rejected(message.encode("utf-8", "replace"),
                        "text message where a binary frame was expected")
    try:
        return decode_frame(message)
    except FrameError as exc:
        return Rejected(message, str(exc))


async def _receive(ws: WebSocketConnection, send: trio.MemorySendChannel[tuple[object, int]],
                   timeout: float) -> str:
    """Decode messages onto ``send`` until the socket fails or stays silent; returns why."""
    # Moving a cancel scope's deadline on every frame cost ~9% of the CPU (py-spy), so it
    # moves at most every `step`: silence is detected between timeout and timeout + step.
    step = min(1.0, timeout / 4)
    with trio.CancelScope() as silence:
        refresh_at = -math.inf
        while True:
            now = trio.current_time()
            if now >= refresh_at:
                silence.deadline, refresh_at = now + timeout + step, now + step
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return f"upstream closed the connection: {exc.reason}"
            item = (_decode(message), len(message))
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                # The service is not reading: waiting here is backpressure, not silence.
                silence.deadline, refresh_at = math.inf, -math.inf
                await send.send(item)
    return f"no data for {timeout:g}s"


async def _write(receive: trio.MemoryReceiveChannel[tuple[object, int]],
                 out: trio.lowlevel.FdStream) -> None:
    """Write decoded frames to the pipe, up to ``COALESCE`` seconds' worth per message."""
    # Pickling and writing frames one at a time cost ~20 us a frame (py-spy); a message
    # every 2 ms holds ~30 frames at 15,000 frames/s and adds at most 2 ms of latency.
    async for first in receive:
        await trio.sleep(COALESCE)
        batch = [first]
        while len(batch) < PENDING_FRAMES:
            try:
                batch.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        items = [to_wire(item) for item, _ in batch]
        await out.send_all(encode_message(("frames", items, sum(n for _, n in batch))))


async def _connection(url: str, timeout: float, out: trio.lowlevel.FdStream) -> str:
    try:
        async with open_websocket_url(url, max_message_size=WEBSOCKET_MAX_MESSAGE,
                                      receive_buffer_size=RECEIVE_BUFFER,
                                      message_queue_size=MESSAGE_QUEUE,
                                      connect_timeout=10, disconnect_timeout=2) as ws:
            await out.send_all(encode_message(("connected",)))
            send, receive = trio.open_memory_channel[tuple[object, int]](PENDING_FRAMES)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_write, receive, out)
                    async with send:
                        return await _receive(ws, send, timeout)
            finally:
                # trio-websocket leaves the TCP stream open when the server closed first.
                await ws._stream.aclose()
    except ConnectionClosed as exc:
        return f"upstream closed the connection: {exc.reason}"
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        # trio-websocket's HandshakeError carries no text; the reason is its context.
        reason = exc if str(exc) else (exc.__context__ or exc)
        return f"cannot reach {url}: {reason!r}"


async def _until_stdin_closes(scope: trio.CancelScope) -> None:
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some():
            pass
    scope.cancel()


async def main(url: str, timeout: float) -> None:
    """Run one connection, reporting on stdout; stop early if stdin closes."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_stdin_closes, scope)
            out = trio.lowlevel.FdStream(os.dup(1))
            reason = await _connection(url, timeout, out)
            await out.send_all(encode_message(("closed", reason)))
            await out.aclose()
            scope.cancel()


def run() -> None:
    """The process's entry point: ``sys.argv`` is ``[..., URL, READ_TIMEOUT]``."""
    # The service decides when this process stops (by closing stdin); a Ctrl-C sent to the
    # whole process group must not kill it mid-message with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # fewer, larger pipe writes (Linux; the default pipe holds 64 KiB)
        fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass
    try:
        trio.run(main, sys.argv[-2], float(sys.argv[-1]))
    except* (trio.BrokenResourceError, BrokenPipeError):
        pass  # the service is gone: nobody left to tell
