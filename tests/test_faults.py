"""Upstream faults and buffer overflow, with the real service tasks, websockets and Postgres."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from skywire_trio.config import Settings
from skywire_trio.firehose.replay import Behaviour, serve_replay
from skywire_trio.log import writer
from skywire_trio.service import serve

from .faults import Fault, ScriptedServer, wait_until
from .support import expected_rows, query, relay_frames, renumbered, stored_rows

N = 400


def _settings(url: str, port: int, tmp_path, **overrides: object) -> Settings:
    return dataclasses.replace(
        Settings(database_url=url, relay_url=f"ws://127.0.0.1:{port}", port=0,
                 deadletter_dir=tmp_path / "deadletter", backoff_min=0.02, backoff_max=0.2,
                 read_timeout=1.0),
        **overrides)


def _complete(url: str, last_seq: int):
    return lambda: query(url, "SELECT last_seq FROM firehose_cursor") == [(last_seq,)]


async def _run(server: ScriptedServer, settings_for, url: str, last_seq: int,
               open_store=writer.connect, timeout: float = 30):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        settings = settings_for(port)
        running = await nursery.start(serve, settings, open_store)
        await wait_until(_complete(url, last_seq), timeout)
        nursery.cancel_scope.cancel()
    return running.stats


async def test_upstream_faults_lose_nothing(database, tmp_path):
    frames = renumbered(relay_frames(), N)
    # One fault per connection; the last one (garbage) carries on to the end.
    server = ScriptedServer(frames, [
        Fault(50, "drop"), Fault(30, "silent"), Fault(30, "error", "ConsumerTooSlow"),
        Fault(20, "error", "InternalError"), Fault(40, "garbage")])
    stats = await _run(server, lambda port: _settings(database, port, tmp_path), database, N)
    assert stored_rows(database) == expected_rows(frames)
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))
    # Reconnects resumed after what was committed (a fresh log has no cursor until its
    # first commit; frames received but not committed when a socket drops are replayed).
    resumed = [c for c in server.cursors[1:] if c is not None]
    assert server.cursors[0] is None and len(resumed) >= 3 and resumed == sorted(resumed)
    assert len(server.cursors) == 5
    # Garbage was saved for an operator, not dropped silently.
    saved = sorted((tmp_path / "deadletter").glob("*.bin"))
    assert len(saved) == 3
    assert {p.read_bytes() for p in saved} == {b"\x00\xffthis is not cbor", b"a text message",
                                               b"\xa2"}
    assert stats.frames_rejected == 3 and stats.upstream_errors >= 4


async def test_future_cursor_waits_for_upstream(database, tmp_path):
    frames = renumbered(relay_frames(), 300)
    # The log says we are at seq 200, but the upstream only has 100 so far.
    query(database, "INSERT INTO firehose_cursor (upstream, last_seq) VALUES ($1, 200)"
          .replace("$1", "%s"), "ws://placeholder")
    server = ScriptedServer(frames[:100], [])
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        settings = _settings(database, port, tmp_path)
        query(database, "UPDATE firehose_cursor SET upstream = %s", settings.subscribe_url)
        await nursery.start(serve, settings)
        await wait_until(lambda: len(server.cursors) >= 3, 10)
        assert set(server.cursors) == {200}  # never skipped or rewound on its own
        assert stored_rows(database) == []
        server.frames = frames  # the upstream catches up
        await wait_until(_complete(database, 300), 30)
        nursery.cancel_scope.cancel()
    assert stored_rows(database) == expected_rows(frames[200:])


class SlowStore:
    """A real LogStore whose first commits are slow: the batcher falls behind."""

    def __init__(self, store: writer.LogStore, slow_calls: list[int]) -> None:
        self._store = store
        self._slow_calls = slow_calls

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    async def commit(self) -> None:
        await self._store.commit()
        if self._slow_calls[0] > 0:  # committed, then slow to come back for more
            self._slow_calls[0] -= 1
            await trio.sleep(0.6)


async def test_overflow_restarts_from_committed_cursor(database, tmp_path):
    frames = renumbered(relay_frames(), N)
    slow_calls = [6]

    @asynccontextmanager
    async def slow_store(url: str) -> AsyncIterator[SlowStore]:
        async with writer.connect(url) as store:
            yield SlowStore(store, slow_calls)

    server = ScriptedServer(frames, [])
    stats = await _run(server, lambda port: _settings(
        database, port, tmp_path, buffer_frames=4, overflow_grace=0.2, batch_size=10),
        database, N, open_store=slow_store)
    assert stats.overflows >= 1 and stats.ingest_restarts >= 1
    # Restarts resumed from what was committed before each overflow.
    resumed = server.cursors[1:]
    assert resumed and all(c is not None and c > 0 for c in resumed)
    assert resumed == sorted(resumed)
    assert stored_rows(database) == expected_rows(frames)


async def test_short_read_timeout_is_not_tripped_by_steady_traffic(database, tmp_path):
    frames = renumbered(relay_frames(), 150)
    errors_while_sending: list[int] = []

    def sent(index: int, _at: float) -> None:
        # Counted as the last frame leaves: 0.2 s later its silence is real, and a slow
        # commit of the last batch must not make it look like an error during the traffic.
        if index == len(frames) - 1:
            errors_while_sending.append(running.stats.upstream_errors)

    async with trio.open_nursery() as nursery:
        # 1.5 s at 100 frames/s; it answers no pings (pings keep a quiet upstream alive).
        port = await nursery.start(partial(
            serve_replay, frames, behaviour=Behaviour(rate=100.0, pongs=False, on_sent=sent)))
        settings = _settings(database, port, tmp_path, read_timeout=0.2)
        running = await nursery.start(serve, settings)
        await wait_until(_complete(database, 150), 30)
        assert errors_while_sending == [0]  # 10 ms gaps are not silence
        # Then the replay goes quiet (it stays open, answering nothing): that is silence.
        await wait_until(lambda: running.stats.upstream_errors >= 1, 5)
        nursery.cancel_scope.cancel()
    assert stored_rows(database) == expected_rows(frames)
