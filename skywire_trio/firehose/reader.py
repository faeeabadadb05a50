"""The reader: one upstream connection, through the receiver process, onto the batcher's channel.

The websocket and the decoder live in a child process (``receiver``) so that they use the
second core; this side takes the decoded frames it pipes over, drops what the log already
holds, and puts the rest on the bounded channel. One call is one connection. It returns
only by raising: ``UpstreamError`` when the connection ends or misbehaves (the caller
drains the batcher and reconnects from the committed cursor),
``BufferOverflow`` when the batcher cannot keep up (the caller tears ingestion down and
restarts it from the committed cursor).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .. import deadletter
from ..config import Settings, receiver_environment
from ..stats import IngestStats
from .codec import Frame
from .receiver import (
    COMMAND,
    CONNECTED,
    FRAMES,
    LOG,
    PONG,
    REJECTED,
    SPARE,
    TEXT,
    RecordBuffer,
    decode_frames,
    decode_log,
    decode_rejected,
)

log = logging.getLogger(__name__)

# Reads of 1 MiB made the service's RSS creep (100 -> 125 MB over 300,000 frames, flat with
# MALLOC_MMAP_THRESHOLD_ fixed: glibc's sliding mmap threshold moved such buffers onto the
# heap and fragmented it). At 64 KiB it stays flat at ~89 MB, for no measurable CPU.
PIPE_READ_BYTES = 64 * 1024
# How long a receiver that was asked to stop (stdin closed) may take before it is killed.
STOP_GRACE = 1.0


class UpstreamError(Exception):
    """The upstream connection failed or ended; reconnect from the committed cursor."""


class BufferOverflow(Exception):
    """The buffer to the batcher stayed full past the grace period."""


def subscribe_url(settings: Settings, cursor: int | None) -> str:
    """The URL to connect to, resuming after ``cursor`` when there is one."""
    base = settings.subscribe_url
    return base if cursor is None else f"{base}?cursor={cursor}"


async def _push(send: trio.MemorySendChannel[Frame], frame: Frame, grace: float,
                stats: IngestStats) -> None:
    try:
        send.send_nowait(frame)
    except trio.WouldBlock:
        # Full: block (the pipe, then TCP, push back on the upstream), but not forever.
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


async def _start(arguments: list[str]) -> trio.Process:
    return await trio.lowlevel.open_process([*COMMAND, *arguments], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, env=receiver_environment())


async def _stop(process: trio.Process) -> None:
    """Close the receiver's stdin (it stops at end of file); kill it if it lingers."""
    with trio.CancelScope(shield=True):
        await process.stdin.aclose()
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
        process.kill()
        await process.wait()


class Receivers:
    """Starts receiver processes, the first one ahead of time.

    A receiver's interpreter and imports take ~0.15 s. A spare, started with the service,
    spends them while the service starts (or while a standby waits for the ingest lock), so
    the first connection, or a takeover, begins that much sooner. Later connections start
    their own process: a reconnect waits for its backoff anyway.
    """

    def __init__(self) -> None:
        self._spare: trio.Process | None = None

    async def start_spare(self) -> None:
        """Start the spare (it waits for its arguments on stdin)."""
        self._spare = await _start([SPARE])

    async def start(self, arguments: list[str]) -> trio.Process:
        """A receiver running with ``arguments``: the spare if it is alive, else a new one."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                await spare.stdin.send_all(json.dumps(arguments).encode() + b"\n")
                return spare
            except trio.BrokenResourceError:  # it died waiting; its exit code says nothing
                await _stop(spare)
        return await _start(arguments)

    async def aclose(self) -> None:
        """Stop the spare if nobody took it."""
        if self._spare is not None:
            await _stop(self._spare)
            self._spare = None


@asynccontextmanager
async def open_receivers(spare: bool) -> AsyncIterator[Receivers]:
    """``Receivers``, with a spare started at once if ``spare``; the spare stops on exit."""
    receivers = Receivers()
    try:
        if spare:
            await receivers.start_spare()
        yield receivers
    finally:
        await receivers.aclose()


async def read_upstream(settings: Settings, cursor: int | None,
                        send: trio.MemorySendChannel[Frame], stats: IngestStats,
                        receivers: Receivers | None = None) -> None:
    """Connect after ``cursor`` and feed decoded frames to ``send`` until something fails."""
    url = subscribe_url(settings, cursor)
    process = await (receivers or Receivers()).start(
        [url, str(settings.read_timeout), str(settings.ping_every)])
    try:
        await _read_records(process.stdout, url, cursor, send, settings, stats)
        code = await process.wait()  # its stdout ended without a CLOSED record: it crashed
        raise UpstreamError(f"the receiver process exited with code {code} without saying why")
    finally:
        if stats.upstream_connected:  # a failed attempt does not restart the clock
            stats.upstream_connected = False
            stats.disconnected_since = trio.current_time()
        await _stop(process)


async def _read_records(stdout: trio.abc.ReceiveStream, url: str, last_seq: int | None,
                         send: trio.MemorySendChannel[Frame], settings: Settings,
                         stats: IngestStats) -> None:
    """Handle the receiver's records until it says the connection is over (or its pipe ends)."""
    records = RecordBuffer()
    while data := await stdout.receive_some(PIPE_READ_BYTES):
        frames = False
        for kind, payload in records.feed(data):
            if kind == FRAMES:
                frames = True
                for frame in decode_frames(payload):
                    last_seq = await _accept(frame, last_seq, send, settings, stats)
            elif kind == REJECTED:
                frames = True
                reason, message = decode_rejected(payload)
                _reject(message, reason, settings, stats)
            elif kind == PONG:
                _pong(float(payload), stats)
            elif kind == LOG:
                level, name, message = decode_log(payload)
                logging.getLogger(name).log(level, "%s", message)
            elif kind == TEXT:
                frames = True
                _reject(payload, "text message where a binary frame was expected", settings,
                        stats)
            elif kind == CONNECTED:
                stats.upstream_connected, stats.disconnected_since = True, None
                stats.last_pong_monotonic = None  # pongs are per connection; data is not
                stats.upstream_reached = True
                log.info("connected to %s", url)
            else:
                raise UpstreamError(payload.decode("utf-8", "replace"))
        if frames:
            _data(stats)


def _data(stats: IngestStats) -> None:
    """Frames arrived (once per pipe read, not per frame)."""
    now = trio.current_time()
    quiet_since, pong = stats.last_frame_monotonic, stats.last_pong_monotonic
    if pong is not None and quiet_since is not None and pong > quiet_since:
        log.info("upstream sent data again after %.1fs of quiet", now - quiet_since)
    stats.last_frame_monotonic = now


def _pong(round_trip: float, stats: IngestStats) -> None:
    """The upstream answered a ping: it is quiet, not dead."""
    now = trio.current_time()
    quiet_since = stats.last_frame_monotonic
    if stats.last_pong_monotonic is None or (
            quiet_since is not None and stats.last_pong_monotonic < quiet_since):
        # First pong of this quiet spell (one line per spell, not per ping).
        quiet = f"{now - quiet_since:.1f}s" if quiet_since is not None else "since connecting"
        log.info("upstream quiet (no data for %s) but answering pings (round trip %.1f ms)",
                 quiet, round_trip * 1000)
    stats.last_pong_monotonic, stats.ping_round_trip = now, round_trip


def _reject(message: bytes, reason: str, settings: Settings, stats: IngestStats) -> None:
    stats.frames_in += 1
    stats.bytes_in += len(message)
    stats.frames_rejected += 1
    path = deadletter.save(settings.deadletter_dir, message, reason)
    log.warning("rejected a frame (%s); bytes saved to %s", reason[:500], path)


async def _accept(frame: Frame, last_seq: int | None, send: trio.MemorySendChannel[Frame],
                  settings: Settings, stats: IngestStats) -> int | None:
    stats.frames_in += 1
    stats.bytes_in += len(frame.data)
    if frame.kind == "error":
        raise _handle_error_frame(frame, last_seq)
    if frame.kind == "info":
        log.warning("upstream info %s: %s", frame.error, frame.rows[0].record)
    if frame.seq is not None:
        if last_seq is not None and frame.seq <= last_seq:
            stats.duplicates_skipped += 1  # replayed at-least-once; already in the log
            return last_seq
        last_seq = frame.seq
    stats.frame_waiting(trio.current_time())
    await _push(send, frame, settings.overflow_grace, stats)
    return last_seq
