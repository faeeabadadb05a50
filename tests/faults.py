"""A scripted subscribeRepos server for fault tests: each connection can misbehave."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from skywire_trio.firehose.replay import Recording, _cursor, error_frame


@dataclasses.dataclass
class Fault:
    """What to do on one connection, after sending ``after`` frames past the cursor."""

    after: int
    action: str  # "drop" | "silent" | "garbage" | "error"
    error: str = "ConsumerTooSlow"


@dataclasses.dataclass
class ScriptedServer:
    """Serves ``frames``; connection i follows ``faults[i]`` (if any), later ones behave."""

    frames: list[bytes]
    faults: list[Fault | None]
    cursors: list[int | None] = dataclasses.field(default_factory=list)
    port: int = 0

    async def handle(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        cursor = _cursor(request.path)
        self.cursors.append(cursor)
        index = len(self.cursors) - 1
        fault = self.faults[index] if index < len(self.faults) else None
        recording = Recording(self.frames)
        try:
            if cursor is not None and cursor > recording.head:
                await ws.send_message(error_frame("FutureCursor", "Cursor in the future."))
                await ws.aclose(code=1008)
                return
            for sent, frame in enumerate(self.frames[recording.start_index(cursor):]):
                if fault is not None and sent == fault.after:
                    if await self._misbehave(ws, fault):
                        return
                await ws.send_message(frame)
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass

    async def _misbehave(self, ws: WebSocketConnection, fault: Fault) -> bool:
        """Returns True when the connection is finished."""
        if fault.action == "drop":  # TCP gone without a close handshake
            await ws._stream.aclose()
            return True
        if fault.action == "silent":  # socket open, nothing more, ever, not even a pong
            async def send_nothing(event: object) -> None:
                pass

            ws._send = send_nothing  # trio-websocket answers pings through _send
            await trio.sleep_forever()
        if fault.action == "garbage":  # keeps going afterwards
            await ws.send_message(b"\x00\xffthis is not cbor")
            await ws.send_message("a text message")
            await ws.send_message(b"\xa2")
            return False
        if fault.action == "error":
            await ws.send_message(error_frame(fault.error, "scripted"))
            await ws.aclose(code=1008)
            return True
        raise ValueError(fault.action)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Serve until cancelled; reports the port."""
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_websocket, self.handle, "127.0.0.1", 0,
                                                 ssl_context=None))
            self.port = server.port
            task_status.started(server.port)


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    """Wait (polling in a thread-free way) until ``predicate()`` holds, or fail."""
    with trio.fail_after(timeout):
        while not await trio.to_thread.run_sync(predicate):
            await trio.sleep(0.05)
