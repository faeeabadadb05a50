"""An orphaned asyncio future's error is logged; it must not end the service.

CI once saw the service stop during a database outage with "unexpected connection_lost()
call" raised from trio-asyncio's default exception handler: asyncpg's SSL-negotiation
protocol failed a future that nobody awaited any more. This builds that exact object on a
real socket, drops it, and checks what each loop does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl

import pytest
import trio
import trio_asyncio
from asyncpg.connect_utils import TLSUpgradeProto

from skywire_trio import aioloop

pytestmark = pytest.mark.quick


async def _orphan_a_failed_future(port: int) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: TLSUpgradeProto(loop, "127.0.0.1", port, ssl.create_default_context(), False),
        "127.0.0.1", port)
    transport.close()  # connection_lost(None) fails protocol.on_data, which nobody awaits
    await asyncio.sleep(0.01)
    assert protocol.on_data.done()  # (reading its exception here would count as retrieving it)
    del transport, protocol
    gc.collect()  # the future is collected unread: asyncio reports it to the loop


async def _run_in(opener: contextlib.AbstractAsyncContextManager, port: int) -> None:
    async with opener:
        await trio_asyncio.aio_as_trio(_orphan_a_failed_future)(port)
        await trio.sleep(0.05)  # time for a raising handler's task to run


@pytest.fixture
def listening_port():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_the_service_loop_logs_it_and_runs_on(listening_port, caplog):
    with caplog.at_level(logging.WARNING, logger="skywire_trio.aioloop"):
        trio.run(_run_in, aioloop.open_loop(), listening_port)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "exception was never retrieved" in warnings[0]
    assert "unexpected connection_lost() call" in warnings[0]


def test_trio_asyncio_default_would_have_ended_the_service(listening_port):
    with pytest.raises(BaseExceptionGroup) as raised:
        trio.run(_run_in, trio_asyncio.open_loop(), listening_port)
    assert raised.group_contains(ConnectionError, match="unexpected connection_lost")


def test_an_error_in_a_callback_still_reaches_the_supervisor():
    def broken() -> None:
        raise ValueError("callback failed")

    async def main() -> None:
        async with aioloop.open_loop() as loop:
            loop.call_soon(broken)
            await trio.sleep(0.05)

    with pytest.raises(BaseExceptionGroup) as raised:
        trio.run(main)
    assert raised.group_contains(ValueError, match="callback failed")
