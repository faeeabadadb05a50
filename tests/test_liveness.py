"""Liveness by ping: a quiet upstream that answers pings keeps its connection; one that
answers neither data nor pings is reconnected within the read timeout.

The quiet periods are scaled down so that the tests stay short: a read timeout of 2 s, pings
after 0.5 s of quiet, and a quiet spell of 8 s (4x the timeout). ``scripts/bench_latency.py
--quiet 180`` runs the same check with a literal 3-minute silence.
"""

from __future__ import annotations

import json
import time
from functools import partial

import httpx
import pytest
import trio

from skywire_trio.config import Settings
from skywire_trio.firehose.replay import Behaviour, serve_replay
from skywire_trio.service import serve

from .faults import wait_until
from .support import (
    expected_rows,
    query,
    relay_frames,
    renumbered,
    service_env,
    start_service,
    stored_rows,
)

TIMEOUT = 2.0
PING = 0.5
QUIET = 4 * TIMEOUT


def _last_seq(url: str) -> int | None:
    rows = query(url, "SELECT last_seq FROM firehose_cursor")
    return rows[0][0] if rows else None


async def test_quiet_upstream_answering_pings_is_not_reconnected(database, nursery, tmp_path):
    frames = renumbered(relay_frames(), 60)
    connections: list[int | None] = []
    behaviour = Behaviour(quiet_after=40, quiet_for=QUIET, on_connect=connections.append)
    port = await nursery.start(partial(serve_replay, frames, behaviour=behaviour))
    settings = Settings(database_url=database, relay_url=f"ws://127.0.0.1:{port}", port=0,
                        deadletter_dir=tmp_path / "dl", backoff_min=0.05, backoff_max=0.2,
                        read_timeout=TIMEOUT, ping_interval=PING)
    running = await nursery.start(serve, settings)
    await wait_until(lambda: _last_seq(database) == 40, 30)
    quiet_started = trio.current_time()
    bodies = []
    async with httpx.AsyncClient(base_url=running.api_url, timeout=10) as client:
        # Through most of the quiet spell, well past the read timeout.
        while trio.current_time() - quiet_started < QUIET - 1.5:
            response = await client.get("/health")
            assert response.status_code == 200, response.text
            bodies.append(response.json())
            await trio.sleep(0.25)
    last = bodies[-1]
    assert all(body["status"] == "ok" and body["upstream_connected"] for body in bodies)
    # The silence is shown: longer than the read timeout, and pongs keep coming.
    assert last["seconds_since_event"] > 2 * TIMEOUT, last
    assert last["seconds_since_pong"] < 3 * PING, last
    assert [b["seconds_since_event"] for b in bodies] == sorted(b["seconds_since_event"]
                                                                for b in bodies)
    # Then data again, on the same connection.
    await wait_until(lambda: _last_seq(database) == 60, 30)
    assert connections == [None]
    assert running.stats.upstream_errors == 0 and running.stats.ingest_restarts == 0
    assert stored_rows(database) == expected_rows(frames)


async def test_upstream_answering_neither_data_nor_pings_is_reconnected(database, nursery,
                                                                         tmp_path):
    # The service as a real process in production mode: the lines of its receiver process
    # come out as the service's JSON log lines.
    frames = renumbered(relay_frames(), 40)
    connected: list[tuple[float, int | None]] = []
    sent: list[float] = []
    behaviour = Behaviour(pongs=False, on_sent=lambda _, at: sent.append(at),
                          on_connect=lambda cursor: connected.append((time.monotonic(), cursor)))
    port = await nursery.start(partial(serve_replay, frames, behaviour=behaviour))
    log = tmp_path / "service.log"
    env = service_env(database, f"ws://127.0.0.1:{port}", tmp_path, SKYWIRE_ENV="production",
                      API_TOKEN_SALT="s" * 40, SKYWIRE_READ_TIMEOUT=str(TIMEOUT),
                      SKYWIRE_PING_INTERVAL=str(PING), SKYWIRE_BACKOFF_MAX="0.1")
    proc = start_service(env, log)
    try:
        await wait_until(lambda: len(connected) >= 2, 30)
    finally:
        proc.terminate()
        await trio.to_thread.run_sync(proc.wait, 15)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert len(sent) >= 40 and connected[1][1] == 40  # resumed after the last frame
    # Dead after the timeout without data or pong (checked every TIMEOUT / 4), plus backoff
    # and a new receiver process: never before the timeout, and not much after it.
    gap = connected[1][0] - sent[39]
    assert TIMEOUT <= gap < TIMEOUT + TIMEOUT / 4 + 2.0, gap
    # (hypercorn's own handler prints one plain "Running on" line: the API's, not ours.)
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if "[INFO] Running on http" not in line]
    messages = [(entry["logger"], entry["message"]) for entry in lines]
    assert any(logger == "skywire_trio.firehose.receiver" and "answered neither" in message
               for logger, message in messages), messages
    assert any("no data and no pong for 2s" in message for _, message in messages), messages


def test_liveness_settings_are_validated():
    from skywire_trio.config import ConfigError, from_env

    assert from_env({"SKYWIRE_READ_TIMEOUT": "6"}).ping_every == 2.0  # a third by default
    assert from_env({}).ping_every == 10.0
    assert from_env({"SKYWIRE_PING_INTERVAL": "4"}).ping_every == 4.0
    for value in ("6", "7", "-1", "x"):
        with pytest.raises(ConfigError, match="^SKYWIRE_PING_INTERVAL"):
            from_env({"SKYWIRE_READ_TIMEOUT": "6", "SKYWIRE_PING_INTERVAL": value})
    with pytest.raises(ConfigError, match="^SKYWIRE_BATCH_LINGER"):
        from_env({"SKYWIRE_BATCH_LINGER": "0.2"})  # longer than the interval (0.1)
    assert from_env({"SKYWIRE_BATCH_LINGER": "0"}).batch_linger == 0.0
