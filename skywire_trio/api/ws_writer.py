"""Writing many websocket text messages with one write to the socket.

Through ASGI every message is its own trip through Quart and hypercorn and its own
``send()`` system call (~30 us a message measured here, most of it the system call on
loopback), and hypercorn compresses each one when the client offered permessage-deflate.
A /subscribe connection sends hundreds of small messages a second, so when it runs on
hypercorn (pinned in pyproject.toml) the messages that are ready are framed here and handed
to hypercorn's connection as one piece of data, exactly as hypercorn hands it the frames
wsproto makes, under the same per-connection lock. The frames are uncompressed text frames
(RSV1 unset), which RFC 7692 allows on a connection that negotiated compression.

Any other ASGI server gets one ``websocket.send`` per message.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream


class _QuartWebsocket(Protocol):
    async def send(self, data: str) -> None: ...


def frame_header(size: int) -> bytes:
    """The header of one final, unmasked text frame (server to client) of ``size`` bytes."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def frames(payloads: Sequence[bytes]) -> bytes:
    """``payloads`` as consecutive text frames."""
    parts = []
    for payload in payloads:
        parts.append(frame_header(len(payload)))
        parts.append(payload)
    return b"".join(parts)


class _DirectWriter(Protocol):
    def write_now(self, data: bytes) -> int: ...


def _hypercorn_stream(websocket: object) -> WSStream | None:
    """hypercorn's stream behind a Quart websocket, if that is what serves it."""
    # Quart keeps the ASGI send callable as partial(send_data, send); hypercorn's send is
    # the bound method WSStream.app_send.
    send = getattr(websocket, "_send", None)
    if not isinstance(send, functools.partial) or not send.args:
        return None
    stream = getattr(send.args[0], "__self__", None)
    return stream if isinstance(stream, WSStream) else None


def _connection(stream: WSStream | None) -> _DirectWriter | None:
    """Our HTTP server's connection under ``stream`` (``http_server._Connection``), if that
    is what serves it: hypercorn hands the stream its protocol's ``stream_send``, and the
    protocol its connection's ``protocol_send``."""
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    connection = getattr(getattr(protocol, "send", None), "__self__", None)
    return connection if callable(getattr(connection, "write_now", None)) else None


class MessageWriter:
    """Sends JSON texts (UTF-8 bytes) as websocket text messages, in order."""

    def __init__(self, websocket: _QuartWebsocket) -> None:
        self._websocket = websocket
        self._stream = _hypercorn_stream(websocket)
        self._connection = _connection(self._stream)

    @property
    def batched(self) -> bool:
        """Whether several messages go out in one write (hypercorn underneath)."""
        return self._stream is not None

    async def write(self, payloads: Sequence[bytes]) -> None:
        """Send each payload as one text message; returns when the socket took them all."""
        stream = self._stream
        if stream is None:
            for payload in payloads:
                await self._websocket.send(payload.decode())
            return
        await self.write_framed(frames(payloads))

    async def write_framed(self, data: bytes) -> None:
        """Send text frames made by ``frames`` (only when ``batched``)."""
        stream = self._stream
        assert stream is not None, "write_framed needs hypercorn underneath (batched)"
        if stream.closed:
            return  # the client is gone; hypercorn drops what the app sends now, too
        if stream.state != ASGIWebsocketState.CONNECTED:
            raise RuntimeError(f"websocket is {stream.state.name}, not CONNECTED")
        await stream.send(Data(stream_id=stream.stream_id, data=data))

    def write_now(self, data: bytes) -> int:
        """Write what the socket takes of ``data`` (made by ``frames``) right now, without
        waiting or yielding; returns the bytes written. 0 means nothing was, and the data
        must go through ``write_framed`` (a write in flight, a full socket, a closed or
        closing websocket, or a server other than ours)."""
        stream, connection = self._stream, self._connection
        if stream is None or connection is None or stream.closed \
                or stream.state != ASGIWebsocketState.CONNECTED:
            return 0
        return connection.write_now(data)
