"""The receiver's websocket client against a raw TCP server that writes the frames by hand:
what RFC 6455 allows a server to send arrives intact, what it forbids ends the connection
with a reason, and the client's own frames are masked and well formed."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from skywire_trio.firehose.wsclient import (
    ConnectionClosed,
    WebSocketError,
    accept_key,
    connect,
)

pytestmark = pytest.mark.quick

Script = Callable[[trio.SocketStream, "Peer"], Awaitable[None]]


def frame(opcode: int, payload: bytes = b"", final: bool = True, rsv: int = 0) -> bytes:
    """A server frame (unmasked), with the shortest length encoding."""
    first = (0x80 if final else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 1 << 16:
        return bytes((first, 126)) + size.to_bytes(2, "big") + payload
    return bytes((first, 127)) + size.to_bytes(8, "big") + payload


class Peer:
    """The server's side of one connection: reads and unmasks the client's frames."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self.stream = stream
        self.buffer = bytearray(leftover)

    async def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            data = await self.stream.receive_some(65536)
            assert data, "the client closed the stream"
            self.buffer += data

    async def read_frame(self) -> tuple[int, bytes]:
        await self._need(2)
        first, second = self.buffer[0], self.buffer[1]
        assert first & 0x80, "client frames here are never fragmented"
        assert second & 0x80, "a client frame must be masked"
        length = second & 0x7F
        assert length < 126
        await self._need(6 + length)
        mask = self.buffer[2:6]
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.buffer[6:6 + length]))
        del self.buffer[:6 + length]
        return first & 0x0F, payload


async def _serve(script: Script, stream: trio.SocketStream, response: bytes | None = None
                 ) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(65536)
    head, _, leftover = request.partition(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    await stream.send_all(response if response is not None else (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"))
    await script(stream, Peer(stream, leftover))


async def _client(nursery: trio.Nursery, script: Script, response: bytes | None = None,
                  max_message: int = 1 << 20):
    listeners = await nursery.start(partial(trio.serve_tcp, partial(_handle, script, response),
                                            0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        return await connect(f"ws://127.0.0.1:{port}/xrpc/x?cursor=5", max_message=max_message,
                             receive_bytes=4096)


async def _handle(script: Script, response: bytes | None, stream: trio.SocketStream) -> None:
    async with stream:
        await _serve(script, stream, response)


async def _all_until_closed(ws) -> tuple[list[tuple[bool, bytes]], BaseException]:
    received = []
    with trio.fail_after(10):
        while True:
            try:
                received += await ws.receive()
            except (ConnectionClosed, WebSocketError) as exc:
                return received, exc


async def test_messages_of_every_size_fragmented_and_interleaved_with_pings(nursery):
    big = os.urandom(70_000)  # 64-bit length; several 4 KiB reads
    pongs: list[bytes] = []

    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        await stream.send_all(
            frame(2, b"one") + frame(1, "tëxt".encode()) + frame(2, b"x" * 300) + frame(2, big)
            # a fragmented message with a ping between its fragments
            + frame(2, b"frag", final=False) + frame(9, b"are you there")
            + frame(0, b"men", final=False) + frame(0, b"ted"))
        opcode, payload = await peer.read_frame()
        pongs.append(payload if opcode == 0xA else b"not a pong")
        await stream.send_all(frame(2, b"") + frame(8, (1000).to_bytes(2, "big") + b"bye"))
        assert await peer.read_frame() == (0x8, (1000).to_bytes(2, "big"))  # answered

    ws = await _client(nursery, script)
    received, ending = await _all_until_closed(ws)
    await ws.aclose()
    assert received == [(False, b"one"), (True, "tëxt".encode()), (False, b"x" * 300),
                        (False, big), (False, b"fragmented"), (False, b"")]
    assert pongs == [b"are you there"]
    assert isinstance(ending, ConnectionClosed)
    assert (ending.code, ending.reason) == (1000, "bye")


async def test_messages_before_a_close_are_delivered_first(nursery):
    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        # All in one write: the error frame and the close arrive in the same read.
        await stream.send_all(frame(2, b"error frame") + frame(8, (1008).to_bytes(2, "big")
                                                               + b"FutureCursor"))
        await peer.read_frame()

    ws = await _client(nursery, script)
    received, ending = await _all_until_closed(ws)
    await ws.aclose()
    assert received == [(False, b"error frame")]
    assert str(ending) == "1008 FutureCursor"


async def test_our_pings_are_answered_by_pongs(nursery):
    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        for _ in range(2):
            opcode, payload = await peer.read_frame()
            assert opcode == 0x9
            await stream.send_all(frame(0xA, payload))
        await trio.sleep_forever()

    ws = await _client(nursery, script)
    received: list[tuple[bool, bytes]] = []

    async def receive_all() -> None:  # pongs are read by the receiving task, as in use
        while True:
            received.extend(await ws.receive())

    async with trio.open_nursery() as inner:
        inner.start_soon(receive_all)
        with trio.fail_after(5):
            await ws.ping()
            await ws.ping()
        inner.cancel_scope.cancel()
    assert received == []  # pongs are not messages
    await ws.aclose()


@pytest.mark.parametrize(("sent", "said"), [
    (frame(2, b"masked?") [:1] + bytes((0x80 | 7,)) + b"\x01\x02\x03\x04" + b"masked?",
     "masked frame"),
    (frame(2, b"x", rsv=0x40), "reserved bits"),
    (frame(0, b"orphan"), "continuation frame outside a message"),
    (frame(2, b"a", final=False) + frame(2, b"b"), "new message inside a fragmented one"),
    (frame(9, b"p" * 126), "control frame"),
    (frame(3, b"?"), "unknown opcode"),
    (frame(2, b"y" * 2000), "over the 1,000-byte limit"),
    (frame(2, b"z" * 600, final=False) + frame(0, b"z" * 600), "fragmented message over"),
])
async def test_protocol_violations_end_the_connection_with_a_reason(nursery, sent, said):
    closes: list[tuple[int, bytes]] = []

    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        await stream.send_all(sent)
        closes.append(await peer.read_frame())

    listeners = await nursery.start(partial(trio.serve_tcp, partial(_handle, script, None), 0,
                                            host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    ws = await connect(f"ws://127.0.0.1:{port}/", max_message=1000, receive_bytes=4096)
    received, ending = await _all_until_closed(ws)
    await ws.aclose()
    assert received == [] and isinstance(ending, WebSocketError) and said in str(ending), ending
    with trio.fail_after(5):
        while not closes:
            await trio.sleep(0.01)
    assert closes[0][0] == 0x8 and closes[0][1][:2] in ((1002).to_bytes(2, "big"),
                                                        (1009).to_bytes(2, "big"))


async def test_a_stream_that_ends_without_a_close_frame(nursery):
    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        await stream.send_all(frame(2, b"last"))

    ws = await _client(nursery, script)
    received, ending = await _all_until_closed(ws)
    await ws.aclose()
    assert received == [(False, b"last")]
    assert isinstance(ending, ConnectionClosed) and ending.code == 1006


@pytest.mark.parametrize(("response", "said"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "404 Not Found"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n", "Sec-WebSocket-Accept"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP response"),
])
async def test_a_refused_handshake_says_why(nursery, response, said):
    async def script(stream: trio.SocketStream, peer: Peer) -> None:
        await trio.sleep_forever()

    with pytest.raises(WebSocketError, match=said):
        await _client(nursery, script, response)


async def test_the_request_names_the_path_query_and_host(nursery):
    seen: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            seen.append(data)

    listeners = await nursery.start(partial(trio.serve_tcp, record, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(WebSocketError, match="closed during the handshake"):
        await connect(f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=7",
                      max_message=1000, receive_bytes=4096)
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "GET /xrpc/com.atproto.sync.subscribeRepos?cursor=7 HTTP/1.1"
    assert f"Host: 127.0.0.1:{port}" in lines
    assert "Sec-WebSocket-Version: 13" in lines and "Upgrade: websocket" in lines
