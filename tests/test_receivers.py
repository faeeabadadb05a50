"""Receiver processes started ahead of time: the spare serves the first connection."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from skywire_trio.config import Settings
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.reader import Receivers, open_receivers
from skywire_trio.firehose.receiver import CONNECTED, FRAMES, RecordBuffer, decode_frames
from skywire_trio.firehose.replay import serve_replay

from .support import relay_frames

pytestmark = pytest.mark.quick  # receiver processes and a replay server; no PostgreSQL

FRAME_COUNT = 20


async def _arguments(nursery: trio.Nursery) -> list[str]:
    port = await nursery.start(serve_replay, relay_frames()[:FRAME_COUNT])
    url = Settings(relay_url=f"ws://127.0.0.1:{port}").subscribe_url
    return [url, "30", "0"]


async def _seqs_received(process: trio.Process) -> list[int]:
    """The seqs of the frames the receiver pipes, once it has piped them all."""
    records, seqs, connected = RecordBuffer(), [], False
    with trio.fail_after(10):
        while len(seqs) < FRAME_COUNT:
            data = await process.stdout.receive_some()
            assert data, "the receiver's stdout ended early"
            for kind, payload in records.feed(data):
                connected |= kind == CONNECTED
                if kind == FRAMES:
                    seqs += [frame.seq for frame in decode_frames(payload)]
    assert connected
    return seqs


async def _until_waiting_on_stdin(process: trio.Process) -> None:
    """Until the spare has loaded and sits in read(0, ...) (Linux: /proc/PID/syscall)."""
    syscall = Path(f"/proc/{process.pid}/syscall")
    with trio.fail_after(10):
        while syscall.read_text().split()[:2] != ["0", "0x0"]:
            await trio.sleep(0.02)


def _expected_seqs() -> list[int]:
    return [decode_frame(frame).seq for frame in relay_frames()[:FRAME_COUNT]]


async def _receives_every_frame_then_stops(process: trio.Process) -> int:
    """Check that ``process`` pipes every frame in order; stop it as the reader does (by
    closing its stdin) and return its exit code."""
    assert await _seqs_received(process) == _expected_seqs()
    await process.stdin.aclose()
    with trio.fail_after(5):
        return await process.wait()


async def test_the_spare_takes_the_first_connection_and_loses_nothing(nursery):
    arguments = await _arguments(nursery)
    async with open_receivers(spare=True) as receivers:
        spare = receivers._spare
        assert spare is not None
        await _until_waiting_on_stdin(spare)  # loaded, waiting for its arguments
        process = await receivers.start(arguments)
        assert process is spare
        assert await _receives_every_frame_then_stops(process) == 0
        # Later connections get a process of their own.
        second = await receivers.start(arguments)
        assert second is not spare
        await _receives_every_frame_then_stops(second)


async def test_a_spare_that_died_is_replaced(nursery):
    arguments = await _arguments(nursery)
    receivers = Receivers()
    await receivers.start_spare()
    spare = receivers._spare
    assert spare is not None
    spare.kill()
    await spare.wait()
    process = await receivers.start(arguments)
    assert process is not spare
    await _receives_every_frame_then_stops(process)


async def test_an_unused_spare_exits_with_the_service():
    async with open_receivers(spare=True) as receivers:
        spare = receivers._spare
        assert spare is not None
        await _until_waiting_on_stdin(spare)
    with trio.fail_after(1):
        assert await spare.wait() == 0  # it saw stdin close and left, not killed
