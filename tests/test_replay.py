"""The replay server, as a trio-websocket client (the reader's library) sees it."""

from __future__ import annotations

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay

from .support import relay_frames, renumbered

pytestmark = pytest.mark.quick  # no PostgreSQL: the quick tier (README)

FRAMES = renumbered(relay_frames(), 400)  # ~2 MB: several of the server's batched writes


async def _receive(url: str, count: int) -> list[bytes]:
    async with open_websocket_url(url, max_message_size=16 * 1024 * 1024,
                                  disconnect_timeout=2) as ws:
        received = [await ws.get_message() for _ in range(count)]
        # Nothing more, but the connection stays open after the last frame.
        with trio.move_on_after(0.3) as idle:
            await ws.get_message()
        assert idle.cancelled_caught
    # Leaving the block ran the close handshake; it would raise DisconnectionTimeout if
    # the server did not answer it.
    return received


@pytest.mark.parametrize("rate", [0.0, 2000.0])
async def test_serves_every_frame_after_the_cursor(nursery, rate):
    port = await nursery.start(serve_replay, FRAMES, "127.0.0.1", 0, rate)
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
    assert await _receive(url, len(FRAMES)) == FRAMES
    assert await _receive(f"{url}?cursor=250", 150) == FRAMES[250:]
    assert await _receive(f"{url}?cursor={len(FRAMES)}", 0) == []


@pytest.mark.parametrize("rate", [0.0, 100.0])
async def test_every_websocket_length_encoding_reaches_the_client(nursery, rate):
    # 7-bit, 16-bit and 64-bit payload lengths (RFC 6455 5.2); not frames, so no seqs.
    payloads = [b"x" * 125, b"y" * 126, b"z" * 65535, b"w" * 65536, b"v" * 3_000_000]
    port = await nursery.start(serve_replay, payloads, "127.0.0.1", 0, rate)
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"
    assert await _receive(url, len(payloads)) == payloads


async def test_future_cursor_gets_error_frame_and_close_1008(nursery):
    port = await nursery.start(serve_replay, FRAMES)
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=401"
    async with open_websocket_url(url) as ws:
        frame = decode_frame(await ws.get_message())
        assert (frame.kind, frame.error) == ("error", "FutureCursor")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason.code == 1008


async def test_non_websocket_request_is_dropped(nursery):
    port = await nursery.start(serve_replay, FRAMES)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        while await stream.receive_some(4096):
            pass  # the server closes the connection instead of hanging on it
    await stream.aclose()
    # ... and still serves the next client.
    url = f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos?cursor=399"
    assert await _receive(url, 1) == FRAMES[399:]
