"""The reader: one websocket session to the upstream, frames decoded onto a channel.

One call is one connection. It returns only by raising: ``UpstreamError`` when the
connection ends or misbehaves (the caller drains the batcher and reconnects from the
committed cursor), ``BufferOverflow`` when the batcher cannot keep up (the caller tears
ingestion down and restarts it from the committed cursor).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from ..config import Settings
from ..stats import IngestStats
from .codec import Frame, FrameError, decode_frame

log = logging.getLogger(__name__)

# Headroom over the spec's 5 MB frame cap: a larger frame still reaches the decoder, which
# rejects it into the dead-letter directory instead of the connection failing on it forever.
WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024
# trio-websocket reads 4 KiB at a time by default, less than one average frame (5.4 KB);
# 256 KiB reads and a queue of parsed messages cut the client's CPU per frame from ~129 to
# ~77 us here (measured with a receive-only client against the replay server).
RECEIVE_BUFFER = 256 * 1024
MESSAGE_QUEUE = 64


class UpstreamError(Exception):
    """The upstream connection failed or ended; reconnect from the committed cursor."""


class BufferOverflow(Exception):
    """The buffer to the batcher stayed full past the grace period."""


def save_rejected(directory: Path, frame: bytes | str, reason: str) -> Path:
    """Write an unparseable frame where an operator can find it; returns the file."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.monotonic_ns()}"
    path = directory / f"{stem}.bin"
    path.write_bytes(frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace"))
    (directory / f"{stem}.txt").write_text(reason + "\n")
    return path


def subscribe_url(settings: Settings, cursor: int | None) -> str:
    """The URL to connect to, resuming after ``cursor`` when there is one."""
    base = settings.subscribe_url
    return base if cursor is None else f"{base}?cursor={cursor}"


async def _push(send: trio.MemorySendChannel[Frame], frame: Frame, grace: float,
                stats: IngestStats, silence: trio.CancelScope) -> None:
    try:
        send.send_nowait(frame)
    except trio.WouldBlock:
        # Full: block (TCP then pushes back on the upstream), but not forever. Waiting
        # here is backpressure, not a silent upstream.
        silence.deadline = math.inf
        with trio.move_on_after(grace):
            await send.send(frame)
            return
        stats.overflows += 1
        raise BufferOverflow(f"buffer full for more than {grace:g}s; restarting ingest") from None


def _handle_error_frame(frame: Frame, cursor: int | None) -> UpstreamError:
    if frame.error == "FutureCursor":
        # Our cursor is ahead of the server's head: never skip or rewind on our own. Keep
        # retrying (a lagging replica catches up); an operator can `cursor set` if needed.
        return UpstreamError(f"FutureCursor: upstream is behind our cursor {cursor} "
                             f"({frame.message or 'no message'})")
    return UpstreamError(f"upstream error frame {frame.error}: {frame.message or ''}".rstrip())


async def read_upstream(settings: Settings, cursor: int | None,
                        send: trio.MemorySendChannel[Frame], stats: IngestStats) -> None:
    """Connect after ``cursor`` and feed decoded frames to ``send`` until something fails."""
    url = subscribe_url(settings, cursor)
    last_seq = cursor
    try:
        async with open_websocket_url(url, max_message_size=WEBSOCKET_MAX_MESSAGE,
                                      receive_buffer_size=RECEIVE_BUFFER,
                                      message_queue_size=MESSAGE_QUEUE,
                                      connect_timeout=10, disconnect_timeout=2) as ws:
            stats.upstream_connected, stats.disconnected_since = True, None
            log.info("connected to %s", url)
            try:
                await _read_frames(ws, last_seq, send, settings, stats)
            finally:
                stats.upstream_connected = False
                stats.disconnected_since = trio.current_time()
                # trio-websocket leaves the TCP stream open when the server closed first.
                await ws._stream.aclose()
    except ConnectionClosed as exc:
        raise UpstreamError(f"upstream closed the connection: {exc.reason}") from None
    except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
        # trio-websocket's HandshakeError carries no text; the reason is its context.
        reason = exc if str(exc) else (exc.__context__ or exc)
        raise UpstreamError(f"cannot reach {url}: {reason!r}") from None


async def _read_frames(ws: WebSocketConnection, last_seq: int | None,
                       send: trio.MemorySendChannel[Frame], settings: Settings,
                       stats: IngestStats) -> None:
    """Receive until the socket fails or stays silent for ``read_timeout``."""
    # Moving a cancel scope's deadline on every frame cost ~9% of the service's CPU
    # (py-spy), so it moves at most every `step`: silence is detected between timeout and
    # timeout + step, and traffic never trips it.
    timeout = settings.read_timeout
    step = min(1.0, timeout / 4)
    with trio.CancelScope() as silence:
        refresh_at = -math.inf
        while True:
            now = trio.current_time()
            if now >= refresh_at:
                silence.deadline, refresh_at = now + timeout + step, now + step
            message = await ws.get_message()
            last_seq = await _accept(message, last_seq, send, settings, stats, silence)
            if silence.deadline == math.inf:  # the push waited on a full buffer
                refresh_at = -math.inf
    raise UpstreamError(f"no data for {timeout:g}s")


async def _accept(message: bytes | str, last_seq: int | None,
                  send: trio.MemorySendChannel[Frame], settings: Settings,
                  stats: IngestStats, silence: trio.CancelScope) -> int | None:
    stats.frames_in += 1
    stats.bytes_in += len(message)
    try:
        if not isinstance(message, bytes):
            raise FrameError("text message where a binary frame was expected")
        frame = decode_frame(message)
    except FrameError as exc:
        stats.frames_rejected += 1
        path = save_rejected(settings.deadletter_dir, message, str(exc))
        log.warning("rejected an unparseable frame (%s); bytes saved to %s", exc, path)
        return last_seq
    if frame.kind == "error":
        raise _handle_error_frame(frame, last_seq)
    if frame.kind == "info":
        log.warning("upstream info %s: %s", frame.error, frame.rows[0].record)
    if frame.seq is not None:
        if last_seq is not None and frame.seq <= last_seq:
            stats.duplicates_skipped += 1  # replayed at-least-once; already in the log
            return last_seq
        last_seq = frame.seq
    await _push(send, frame, settings.overflow_grace, stats, silence)
    return last_seq
