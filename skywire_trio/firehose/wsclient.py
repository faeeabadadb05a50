"""A small websocket client (RFC 6455) for the receiver: what reading a firehose needs.

Why not trio-websocket here: its wsproto event machinery cost the receiver ~33 us of CPU
per message, a third of a core at 10,000 messages/s, while reading frame headers directly
costs ~1-2 us (docs/performance.md). The receiver reads whole socket buffers and gets back
every message they completed, in one call.

What it does: ``ws://`` and ``wss://`` (TLS with the system's trust store), the opening
handshake (``Sec-WebSocket-Accept`` checked), binary and text messages (fragmented ones
reassembled, up to a size cap), pings answered, our pings matched with their pongs, the
close handshake answered. No extensions are offered (so no compression) and no
subprotocol. Frames we send are masked, as a client must.
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import struct
from collections import OrderedDict
from urllib.parse import urlsplit

import trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HANDSHAKE = 64 * 1024
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class WebSocketError(Exception):
    """The connection cannot go on: refused handshake, broken protocol, oversized message."""


class ConnectionClosed(Exception):  # noqa: N818 (the name says what happened)
    """The server closed the connection (``code`` 1006: without a close frame)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".rstrip())
        self.code, self.reason = code, reason


def _masked(opcode: int, payload: bytes = b"") -> bytes:
    """One final frame from client to server (control frames: payload <= 125 bytes)."""
    if len(payload) > 125:
        raise ValueError("control frame payload over 125 bytes")
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i & 3] for i, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 (the RFC's)


async def _open_stream(url: str) -> tuple[trio.abc.Stream, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise WebSocketError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream
    if secure:
        stream = await trio.open_ssl_over_tcp_stream(
            parts.hostname, port, ssl_context=ssl.create_default_context())
    else:
        stream = await trio.open_tcp_stream(parts.hostname, port)
    host = parts.netloc.rsplit("@", 1)[-1]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return stream, host, target


def _check_response(head: bytes, key: bytes) -> None:
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/"):
        raise WebSocketError(f"not an HTTP response: {lines[0][:200]!r}")
    if status[1] != "101":
        raise WebSocketError(f"handshake refused: {lines[0][:200]}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in [
            token.strip().lower() for token in headers.get("connection", "").split(",")]:
        raise WebSocketError("handshake refused: no websocket upgrade in the response")
    if headers.get("sec-websocket-accept", "").encode() != accept_key(key):
        raise WebSocketError("handshake refused: wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise WebSocketError("handshake refused: an extension we did not offer")


async def connect(url: str, *, max_message: int, receive_bytes: int) -> WebSocket:
    """Open a websocket to ``url`` (callers bound the time it may take)."""
    stream, host, target = await _open_stream(url)
    try:
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\nUser-Agent: skywire-trio\r\n\r\n".encode())
        buffer = bytearray()
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HANDSHAKE:
                raise WebSocketError("handshake response too long")
            data = await stream.receive_some(receive_bytes)
            if not data:
                raise WebSocketError("connection closed during the handshake")
            buffer += data
        _check_response(bytes(buffer[:end]), key)
        del buffer[:end + 4]  # what follows the headers is already websocket frames
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return WebSocket(stream, buffer, max_message, receive_bytes)


class WebSocket:
    """An open client connection. ``receive`` and ``ping`` may run in different tasks."""

    def __init__(self, stream: trio.abc.Stream, buffer: bytearray, max_message: int,
                 receive_bytes: int) -> None:
        self._stream = stream
        self._buffer = buffer
        self._max_message = max_message
        self._receive_bytes = receive_bytes
        self._send_lock = trio.StrictFIFOLock()
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._fragments_text = False
        self._pings: OrderedDict[bytes, trio.Event] = OrderedDict()
        self._ping_count = 0
        self._closed = False
        # Raised by the next ``receive``: what ended the connection after the messages
        # that came before it had been returned.
        self._ending: Exception | None = None

    async def receive(self) -> list[tuple[bool, bytes]]:
        """The next messages: ``(is_text, payload)`` for each one completed by one read.

        Answers pings and the close handshake on the way. Raises ``ConnectionClosed`` when
        the server closes (or the stream ends), ``WebSocketError`` on a protocol violation or
        a message over the size cap, once every message received before that is returned.
        """
        while True:
            if self._ending is not None:
                raise self._ending
            messages = await self._parse()
            if messages:
                return messages
            data = await self._stream.receive_some(self._receive_bytes)
            if not data:
                self._closed = True
                raise ConnectionClosed(1006, "the connection ended without a close frame")
            self._buffer += data

    async def _parse(self) -> list[tuple[bool, bytes]]:
        buffer = self._buffer
        view = memoryview(buffer)  # payloads are copied once, out of the view
        size = len(buffer)
        pos = 0
        messages: list[tuple[bool, bytes]] = []
        try:
            while size - pos >= 2:
                first, second = buffer[pos], buffer[pos + 1]
                length = second & 0x7F
                start = pos + 2
                if length == 126:
                    if size - pos < 4:
                        break
                    length = _U16.unpack_from(buffer, start)[0]
                    start += 2
                elif length == 127:
                    if size - pos < 10:
                        break
                    length = _U64.unpack_from(buffer, start)[0]
                    start += 8
                if second & 0x80:
                    await self._fail(1002, "the server sent a masked frame")
                if first & 0x70:
                    await self._fail(1002, "reserved bits set (no extension was agreed)")
                if length > self._max_message:
                    await self._fail(1009, f"a frame of {length:,} bytes, over the "
                                           f"{self._max_message:,}-byte limit")
                end = start + length
                if end > size:
                    break
                opcode = first & 0x0F
                final = first & 0x80
                if opcode == BINARY or opcode == TEXT:
                    if self._fragments:
                        await self._fail(1002, "a new message inside a fragmented one")
                    if final:
                        messages.append((opcode == TEXT, bytes(view[start:end])))
                    else:
                        self._fragments_text = opcode == TEXT
                        self._add_fragment(bytes(view[start:end]))
                elif opcode == CONTINUATION:
                    if not self._fragments:
                        await self._fail(1002, "a continuation frame outside a message")
                    self._add_fragment(bytes(view[start:end]))
                    if self._fragments_size > self._max_message:
                        await self._fail(1009, "a fragmented message over the "
                                               f"{self._max_message:,}-byte limit")
                    if final:
                        messages.append((self._fragments_text, b"".join(self._fragments)))
                        self._fragments, self._fragments_size = [], 0
                else:
                    if not final or length > 125:
                        await self._fail(1002, "a fragmented or oversized control frame")
                    await self._control(opcode, bytes(view[start:end]))
                pos = end
        except (ConnectionClosed, WebSocketError) as ending:
            if not messages:
                raise
            self._ending = ending  # deliver what came before it first
        finally:
            view.release()
            del buffer[:pos]
        return messages

    def _add_fragment(self, payload: bytes) -> None:
        self._fragments.append(payload)
        self._fragments_size += len(payload)

    async def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            await self._send(_masked(PONG, payload))
        elif opcode == PONG:
            self._pong(payload)
        elif opcode == CLOSE:
            code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            await self._close_frame(payload[:2])  # answer with the same code
            raise ConnectionClosed(code, reason)
        else:
            await self._fail(1002, f"unknown opcode {opcode:#x}")

    def _pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited, or for a ping we gave up on
        # A pong answers its ping and every earlier one (a server may coalesce them).
        while self._pings:
            key, event = self._pings.popitem(last=False)
            event.set()
            if key == payload:
                break

    async def ping(self) -> None:
        """Send a ping and wait for its pong (cancel to give up on it)."""
        self._ping_count += 1
        payload = self._ping_count.to_bytes(8, "big")
        answered = self._pings[payload] = trio.Event()
        try:
            await self._send(_masked(PING, payload))
            await answered.wait()
        finally:
            self._pings.pop(payload, None)

    async def _send(self, frame: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(frame)

    async def _close_frame(self, body: bytes) -> None:
        if not self._closed:
            self._closed = True
            with trio.move_on_after(1):
                await self._send(_masked(CLOSE, body))

    async def _fail(self, code: int, reason: str) -> None:
        await self._close_frame(_U16.pack(code))
        raise WebSocketError(reason)

    async def aclose(self) -> None:
        """Say goodbye (close code 1000, best effort, at most 1 s) and close the stream."""
        try:
            with trio.CancelScope(shield=True):
                await self._close_frame(_U16.pack(1000))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the server is gone already
        finally:
            await trio.aclose_forcefully(self._stream)
