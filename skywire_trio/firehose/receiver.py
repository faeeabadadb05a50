"""The receiver: the child process that holds the upstream websocket and pipes its messages.

Why a process: on one thread the service spent ~72 us of CPU per frame, a third of it in
trio-websocket and wsproto, so it could not commit 15,000 events/s. Here the websocket
runs on the other core; the service decodes and commits. (Decoding here as well left this
process at ~64 us a frame and the service at ~15: the split below is the balanced one.)

Started by the reader as ``COMMAND + [URL, READ_TIMEOUT]``. One process is one
connection. It writes records to stdout, each a u32 big-endian length, a kind byte and a
payload, in order:

- ``CONNECTED`` (no payload) once the websocket is open;
- ``BINARY`` / ``TEXT``: one websocket message, as received (text as UTF-8);
- ``CLOSED``: why the connection ended or was given up as silent (UTF-8), always last.

It exits when the connection ends, and as soon as its stdin reaches end of file, which is
how it learns that the service stopped or died (even by SIGKILL). A full stdout pipe
(the service not reading) stops it from reading the socket, so TCP pushes back upstream.
"""

from __future__ import annotations

import fcntl
import math
import os
import signal
import struct
import sys

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

# Headroom over the spec's 5 MB frame cap: a larger frame still reaches the decoder, which
# rejects it into the dead-letter directory instead of the connection failing on it forever.
WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024
# trio-websocket reads 4 KiB at a time by default, less than one average frame (5.4 KB);
# 256 KiB reads and a queue of parsed messages cut the CPU per frame from ~129 to ~77 us
# (measured with a receive-only client against the replay server).
RECEIVE_BUFFER = 256 * 1024
MESSAGE_QUEUE = 64
# Messages waiting for the pipe. The writer collects for COALESCE seconds before each
# write: one write per message cost ~10 us a frame (py-spy), one every 2 ms carries ~30
# frames at 15,000 frames/s and adds at most 2 ms of latency.
PENDING_MESSAGES = 256
COALESCE = 0.002
PIPE_BYTES = 1024 * 1024

CONNECTED, BINARY, TEXT, CLOSED = b"c", b"b", b"t", b"x"
_HEADER = struct.Struct(">Ic")
COMMAND = [sys.executable, "-m", "skywire_trio.firehose.receiver"]


def encode_record(kind: bytes, payload: bytes = b"") -> bytes:
    """One record as written to the pipe."""
    return _HEADER.pack(len(payload), kind) + payload


class RecordBuffer:
    """Splits the bytes read from the pipe back into ``(kind, payload)`` records."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Add ``data``; return the records it completed."""
        buffer = self._buffer
        buffer += data
        records, pos, size = [], 0, len(buffer)
        while size - pos >= _HEADER.size:
            length, kind = _HEADER.unpack_from(buffer, pos)
            start = pos + _HEADER.size
            if size - start < length:
                break
            records.append((kind, bytes(buffer[start:start + length])))
            pos = start + length
        del buffer[:pos]
        return records


async def _receive(ws: WebSocketConnection, send: trio.MemorySendChannel[bytes],
                   timeout: float) -> str:
    """Put messages on ``send`` until the socket fails or stays silent; returns why."""
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
            record = (encode_record(BINARY, message) if isinstance(message, bytes)
                      else encode_record(TEXT, message.encode("utf-8", "replace")))
            try:
                send.send_nowait(record)
            except trio.WouldBlock:
                # The service is not reading: waiting here is backpressure, not silence.
                silence.deadline, refresh_at = math.inf, -math.inf
                await send.send(record)
    return f"no data for {timeout:g}s"


async def _write(receive: trio.MemoryReceiveChannel[bytes], out: trio.lowlevel.FdStream) -> None:
    """Write the records, all those that arrive within ``COALESCE`` seconds at a time."""
    async for first in receive:
        await trio.sleep(COALESCE)
        batch = [first]
        while len(batch) < PENDING_MESSAGES:
            try:
                batch.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        await out.send_all(b"".join(batch))


async def _connection(url: str, timeout: float, out: trio.lowlevel.FdStream) -> str:
    try:
        async with open_websocket_url(url, max_message_size=WEBSOCKET_MAX_MESSAGE,
                                      receive_buffer_size=RECEIVE_BUFFER,
                                      message_queue_size=MESSAGE_QUEUE,
                                      connect_timeout=10, disconnect_timeout=2) as ws:
            await out.send_all(encode_record(CONNECTED))
            send, receive = trio.open_memory_channel[bytes](PENDING_MESSAGES)
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
            await out.send_all(encode_record(CLOSED, reason.encode("utf-8", "replace")))
            await out.aclose()
            scope.cancel()


if __name__ == "__main__":
    # The service decides when this process stops (by closing stdin); a Ctrl-C sent to the
    # whole process group must not kill it mid-record with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # fewer, larger pipe writes (Linux; the default pipe holds 64 KiB)
        fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass
    try:
        trio.run(main, sys.argv[1], float(sys.argv[2]))
    except* (trio.BrokenResourceError, BrokenPipeError):
        pass  # the service is gone: nobody left to tell
