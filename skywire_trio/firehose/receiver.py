"""The receiver: the child process that holds the upstream websocket, decodes its frames and
pipes them to the service.

Why a process: on one thread the service spent ~72 us of CPU per frame, a third of it in
trio-websocket and wsproto, so it could not commit 15,000 events/s. Here the websocket
runs on the other core, and so does decoding (about half of what the service's thread
spent per frame): the service's thread, which also serves the API, only checks the frames'
order and commits them. The websocket itself is our own small client (``wsclient``):
trio-websocket cost this process ~33 us a message, our client a few.

Started by the reader as ``COMMAND + [URL, READ_TIMEOUT, PING_INTERVAL]``, or ahead of time
as ``COMMAND + [SPARE]``: a spare loads everything, then waits for those three arguments
as one line of JSON on stdin (``reader.Receivers``). One process is one connection. It
writes records to stdout, each a u32 big-endian length, a kind byte and a payload, in order:

- ``CONNECTED`` (no payload) once the websocket is open;
- ``FRAMES``: decoded binary messages, in order (a pickled list of ``Frame`` fields, from
  one socket read);
- ``REJECTED``: a binary message that is not a frame we can store (payload: u32 length of
  the reason, the reason in UTF-8, then the message as received), for the dead letters;
- ``TEXT``: a text message, as received (UTF-8), which the service rejects;
- ``PONG``: the upstream answered a ping (payload: the round trip in seconds, ASCII);
- ``LOG``: a log line of this process (``<levelno> <logger name> <message>``, UTF-8), which
  the service logs through its own handlers, so it comes out in the service's format;
- ``CLOSED``: why the connection ended or was given up as dead (UTF-8), always last.

Liveness: after ``PING_INTERVAL`` seconds without data the receiver pings, and again every
``PING_INTERVAL`` while neither data nor a pong arrives. A pong counts as life, so a quiet
upstream that answers pings keeps its connection; one that sends neither data nor pongs for
``READ_TIMEOUT`` seconds is dead. (An interval of 0, or not below the timeout, means no pings.)

It exits when the connection ends, and as soon as its stdin reaches end of file, which is
how it learns that the service stopped or died (even by SIGKILL). A full stdout pipe
(the service not reading) stops it from reading the socket, so TCP pushes back upstream.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import pickle
import signal
import struct
import sys
import traceback
from functools import partial

import trio

from .. import gctune
from .codec import Frame, FrameError, Row, decode_frame
from .wsclient import ConnectionClosed, WebSocket, WebSocketError, connect

# Headroom over the spec's 5 MB frame cap: a larger frame still reaches the decoder, which
# rejects it into the dead-letter directory instead of the connection failing on it forever.
WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024
# Socket reads of 256 KiB: ~48 average frames (5.4 KB) a read, all parsed in one call.
RECEIVE_BUFFER = 256 * 1024
CONNECT_TIMEOUT = 10.0
# Chunks of records (one per socket read, or a pong or a log line) waiting for the pipe.
# The writer writes at most once every COALESCE seconds: one write per message cost ~10 us
# a frame (py-spy), one every 2 ms carries ~30 frames at 15,000 frames/s. What finds the
# pipe idle for that long goes at once, so at live rates (a frame every few ms) coalescing
# adds no latency; under load, at most 2 ms.
PENDING_CHUNKS = 16
COALESCE = 0.002
PIPE_BYTES = 1024 * 1024

CONNECTED, FRAMES, REJECTED, TEXT, PONG, LOG, CLOSED = (
    b"c", b"f", b"r", b"t", b"p", b"l", b"x")
_HEADER = struct.Struct(">Ic")
_REASON = struct.Struct(">I")
# Named tuples rebuilt from plain tuples by tuple.__new__ itself: their own constructors
# (and pickle's way with them) run Python code for every row, which cost more than
# decoding the pickle (py-spy; docs/performance.md).
_row = partial(tuple.__new__, Row)
_frame = partial(tuple.__new__, Frame)
COMMAND = [sys.executable, "-m", "skywire_trio.firehose.receiver"]
SPARE = "--spare"  # instead of the arguments: read them from stdin once they are known
# Run as __main__, so named explicitly: its lines reach the service's log under this name.
log = logging.getLogger("skywire_trio.firehose.receiver")


def encode_record(kind: bytes, payload: bytes = b"") -> bytes:
    """One record as written to the pipe."""
    return _HEADER.pack(len(payload), kind) + payload


def encode_frames(frames: list[Frame]) -> bytes:
    """A ``FRAMES`` record: each frame, and each of its rows, as a plain tuple."""
    plain = [(kind, seq, list(map(tuple, rows)), error, message, data)
             for kind, seq, rows, error, message, data in frames]
    return encode_record(FRAMES, pickle.dumps(plain, pickle.HIGHEST_PROTOCOL))


def decode_frames(payload: bytes) -> list[Frame]:
    """The frames of a ``FRAMES`` record. Only for the pipe from our own child process:
    unpickling runs code named in the data."""
    return [_frame((kind, seq, list(map(_row, rows)), error, message, data))
            for kind, seq, rows, error, message, data in pickle.loads(payload)]


def encode_rejected(message: bytes, reason: str) -> bytes:
    """A ``REJECTED`` record."""
    text = reason.encode("utf-8", "replace")
    return encode_record(REJECTED, _REASON.pack(len(text)) + text + message)


def decode_rejected(payload: bytes) -> tuple[str, bytes]:
    """The reason and the message of a ``REJECTED`` record."""
    (length,) = _REASON.unpack_from(payload)
    end = _REASON.size + length
    return payload[_REASON.size:end].decode("utf-8", "replace"), payload[end:]


def _decoded(messages: list[tuple[bool, bytes]]) -> bytes:
    """The records for the messages of one socket read, in order: runs of decoded frames
    as one ``FRAMES`` record each, and the messages that are not frames as they are."""
    records: list[bytes] = []
    frames: list[Frame] = []
    for is_text, payload in messages:
        record = None
        if is_text:
            record = encode_record(TEXT, payload)
        else:
            try:
                frames.append(decode_frame(payload))
            except FrameError as exc:
                record = encode_rejected(payload, str(exc))
            except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop ingest
                log.exception("the decoder failed on a frame; dead-lettering it")
                record = encode_rejected(payload, f"decoder error {type(exc).__name__}: {exc}")
        if record is not None:
            if frames:
                records.append(encode_frames(frames))
                frames = []
            records.append(record)
    if frames:
        records.append(encode_frames(frames))
    return b"".join(records)


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


class _Life:
    """When the upstream last showed life, on trio's clock: data (coarsely) or a pong."""

    def __init__(self, now: float) -> None:
        self.data = now
        self.pong = -math.inf

    @property
    def last(self) -> float:
        """The later of the two."""
        return max(self.data, self.pong)


class PipeLogHandler(logging.Handler):
    """Log records of this process (ours, the libraries') onto the pipe as ``LOG`` records.

    The service logs them with its own handlers: one format (JSON in production) for all.
    A record that finds the pipe full is dropped rather than blocking the event loop.
    """

    def __init__(self, send: trio.MemorySendChannel[bytes]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record for the pipe."""
        text = f"{record.levelno} {record.name} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        try:
            self._send.send_nowait(encode_record(LOG, text.encode("utf-8", "replace")))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass


def decode_log(payload: bytes) -> tuple[int, str, str]:
    """A ``LOG`` record's level, logger name and message."""
    level, name, message = payload.decode("utf-8", "replace").split(" ", 2)
    return int(level), name, message


async def _keep_alive(ws: WebSocket, send: trio.MemorySendChannel[bytes], life: _Life,
                      silence: trio.CancelScope, timeout: float, interval: float) -> None:
    """Ping after ``interval`` without life; every pong moves the silence deadline."""
    if not 0 < interval < timeout:
        return  # pings disabled: only data counts
    unanswered = False
    while True:
        await trio.sleep_until(life.last + interval)
        if trio.current_time() < life.last + interval:
            continue  # data arrived meanwhile
        sent = trio.current_time()
        # No pong within another interval: ping again (until the timeout ends it all).
        with trio.move_on_after(interval) as waiting:
            try:
                await ws.ping()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # the receive loop reports why
            now = trio.current_time()
            life.pong, unanswered = now, False
            silence.deadline = max(silence.deadline, now + timeout)
            await send.send(encode_record(PONG, f"{now - sent:.6f}".encode()))
        if waiting.cancelled_caught and not unanswered:
            unanswered = True  # one line per spell, not one per ping
            log.warning("upstream answered neither data nor a ping for %.1fs; pinging until "
                        "%gs without life, then reconnecting",
                        trio.current_time() - life.last, timeout)


async def _messages(ws: WebSocket, send: trio.MemorySendChannel[bytes], life: _Life,
                    silence: trio.CancelScope, timeout: float) -> str:
    """Put messages on ``send`` until the connection ends; returns why."""
    # Moving a cancel scope's deadline on every read cost CPU for nothing, so it moves at
    # most every `step`: silence is detected between timeout and timeout + step.
    step = min(1.0, timeout / 4)
    refresh_at = -math.inf
    while True:
        now = trio.current_time()
        if now >= refresh_at:
            life.data = now
            silence.deadline = max(now + timeout + step, life.pong + timeout)
            refresh_at = now + step
        try:
            messages = await ws.receive()
        except ConnectionClosed as exc:
            return f"upstream closed the connection: {exc}"
        except WebSocketError as exc:
            return f"upstream broke the websocket protocol: {exc}"
        except (trio.BrokenResourceError, OSError) as exc:
            return f"the connection to the upstream failed: {exc!r}"
        chunk = _decoded(messages)
        try:
            send.send_nowait(chunk)
        except trio.WouldBlock:
            # The service is not reading: waiting here is backpressure, not silence.
            silence.deadline, refresh_at = math.inf, -math.inf
            await send.send(chunk)


async def _receive(ws: WebSocket, send: trio.MemorySendChannel[bytes],
                   timeout: float, ping_interval: float) -> str:
    """Put messages on ``send`` until the socket fails or the upstream is dead; returns why."""
    life = _Life(trio.current_time())
    with trio.CancelScope(deadline=life.data + timeout) as silence:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_alive, ws, send, life, silence, timeout, ping_interval)
            reason = await _messages(ws, send, life, silence, timeout)
            nursery.cancel_scope.cancel()
            return reason
    if 0 < ping_interval < timeout:
        return f"no data and no pong for {timeout:g}s"
    return f"no data for {timeout:g}s"


async def _write(receive: trio.MemoryReceiveChannel[bytes], out: trio.lowlevel.FdStream) -> None:
    """Write the records: at once after an idle ``COALESCE``, else all those that arrived by
    ``COALESCE`` after the previous write."""
    written = -math.inf
    async for first in receive:
        await trio.sleep_until(written + COALESCE)  # no wait if the pipe has been idle
        batch = [first]
        while len(batch) < PENDING_CHUNKS:
            try:
                batch.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        await out.send_all(b"".join(batch))
        written = trio.current_time()


async def _connection(url: str, timeout: float, ping_interval: float,
                      send: trio.MemorySendChannel[bytes]) -> str:
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            ws = await connect(url, max_message=WEBSOCKET_MAX_MESSAGE,
                               receive_bytes=RECEIVE_BUFFER)
    except trio.TooSlowError:
        return f"cannot reach {url}: no websocket within {CONNECT_TIMEOUT:g}s"
    except (WebSocketError, OSError, trio.BrokenResourceError) as exc:
        return f"cannot reach {url}: {exc!r}"
    try:
        await send.send(encode_record(CONNECTED))
        return await _receive(ws, send, timeout, ping_interval)
    finally:
        await ws.aclose()


async def _until_stdin_closes(scope: trio.CancelScope) -> None:
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some():
            pass
    scope.cancel()


async def main(url: str, timeout: float, ping_interval: float) -> None:
    """Run one connection, reporting on stdout; stop early if stdin closes."""
    out = trio.lowlevel.FdStream(os.dup(1))
    send, receive = trio.open_memory_channel[bytes](PENDING_CHUNKS)
    handler = PipeLogHandler(send)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_stdin_closes, scope)
            async with trio.open_nursery() as pipe:
                pipe.start_soon(_write, receive, out)
                async with send:
                    try:
                        reason = await _connection(url, timeout, ping_interval, send)
                    except Exception:  # a bug here: say what it was, in the service's log
                        reason = "the receiver process failed:\n" + traceback.format_exc()
            # Everything queued is written; CLOSED goes last.
            await out.send_all(encode_record(CLOSED, reason.encode("utf-8", "replace")))
            await out.aclose()
            scope.cancel()


def arguments_from_stdin() -> list[str] | None:
    """A spare's arguments: one line on stdin (None: stdin closed first, it is not needed).

    Read unbuffered, so that nothing after the line is taken from ``_until_stdin_closes``.
    """
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return None
        line += chunk
    return [str(argument) for argument in json.loads(line)]


if __name__ == "__main__":
    # The service decides when this process stops (by closing stdin); a Ctrl-C sent to the
    # whole process group must not kill it mid-record with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # fewer, larger pipe writes (Linux; the default pipe holds 64 KiB)
        fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):
        pass
    gctune.settle()
    arguments = sys.argv[1:]
    if arguments == [SPARE]:
        arguments = arguments_from_stdin()
        if arguments is None:
            sys.exit(0)  # the service stopped without needing it
    try:
        trio.run(main, arguments[0], float(arguments[1]), float(arguments[2]))
    except* (trio.BrokenResourceError, BrokenPipeError):
        pass  # the service is gone: nobody left to tell
