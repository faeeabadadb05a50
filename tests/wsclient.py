"""A small websocket client for load tests and benchmarks: many connections, little CPU.

It speaks RFC 6455 over a trio TCP stream: the upgrade, then frames read in 64 KiB pieces
and cut into messages without copying more than needed. Only what a /subscribe client
needs: text messages in, pings answered, the close frame's code and reason kept.
"""

from __future__ import annotations

import base64
import os
import socket
import struct

import trio


class Rejected(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status, self.body = status, body


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = (mask * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return header + mask + body


class Subscriber:
    """One websocket connection; ``receive`` returns the text messages that have arrived."""

    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        self._stream = stream
        self._buffer = rest
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def connect(cls, host: str, port: int, target: str,
                      receive_buffer: int | None = None) -> Subscriber:
        """Open the connection and complete the upgrade (``Rejected`` if refused).

        ``receive_buffer``: the socket's SO_RCVBUF, set before connecting (a small one
        makes a client that stops reading stall the server after a few KiB).
        """
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect((host, port))
        stream = trio.SocketStream(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            await stream.aclose()
            raise Rejected(status, rest)
        return cls(stream, rest)

    async def send_text(self, text: str) -> None:
        """One text message to the server."""
        await self._stream.send_all(_masked(0x1, text.encode()))

    async def receive(self) -> list[bytes]:
        """The next text messages (at least one), or [] once the server closed."""
        messages: list[bytes] = []
        while not messages:
            if self.close_code is not None:
                return []
            messages = await self._parse()
            if not messages and self.close_code is None:
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    self.close_code = self.close_code or 1006
                    return []
                self._buffer += chunk
        return messages

    async def _parse(self) -> list[bytes]:
        buffer, position, messages = self._buffer, 0, []
        end = len(buffer)
        while end - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            size, header = second & 0x7F, 2
            if size == 126:
                if end - position < 4:
                    break
                size, header = int.from_bytes(buffer[position + 2:position + 4], "big"), 4
            elif size == 127:
                if end - position < 10:
                    break
                size, header = int.from_bytes(buffer[position + 2:position + 10], "big"), 10
            if end - position < header + size:
                break
            payload = buffer[position + header:position + header + size]
            position += header + size
            opcode = first & 0x0F
            if opcode == 0x1:
                messages.append(payload)
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                self.close_reason = payload[2:].decode(errors="replace")
                break
            elif opcode == 0x9:
                await self._stream.send_all(_masked(0xA, payload))
        self._buffer = buffer[position:]
        return messages

    async def aclose(self) -> None:
        """Close the TCP connection (without a closing handshake)."""
        await self._stream.aclose()


def event_id(message: bytes) -> int:
    """The ``id`` of an event message (it comes first: ``{"id":N,...``)."""
    return int(message[6:message.index(b",", 6)])


def event_time_us(message: bytes) -> int:
    """The ``time_us`` of an event message, without parsing the rest."""
    start = message.index(b'"time_us":') + 10
    return int(message[start:message.index(b",", start)])
