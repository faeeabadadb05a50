"""SIGKILL the service at random moments mid-ingest: the log still holds each event once."""

from __future__ import annotations

import os
import random
import re
import signal
import time

from skywire_trio.firehose.framefile import write_frames

from .support import (
    PDS_CAPTURE,
    child_processes,
    expected_rows,
    is_running,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    service_process,
    start_service,
    stored_rows,
    wait_for,
)

N = 8000
KILLS = 10


def _last_id(database: str) -> int:
    rows = query(database, "SELECT last_id FROM firehose_cursor")
    return rows[0][0] if rows else 0


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(database, tmp_path):
    frames = renumbered(relay_frames(), N)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    expected = expected_rows(frames)
    rng = random.Random(20261123)
    log = tmp_path / "service.log"
    # Rate-limited so that the kills land mid-stream, yet fast enough that batches queue
    # behind each other on the two writer connections.
    with replay_process(recording, "--rate", "3000") as relay:
        env = service_env(database, relay, tmp_path)
        kills = 0
        progress = [0]

        def last_id() -> int:
            return _last_id(database)

        while kills < KILLS:
            assert last_id() < len(expected), "the recording is too short for the kills"
            proc = start_service(env, log)
            # Once it is committing again, kill it at a random instant of the next ~0.25 s.
            assert wait_for(lambda: last_id() > progress[-1], 30), log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 0.25))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            progress.append(last_id())
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(N,)], 60), log.read_text()[-3000:]
    # Kills landed while ingesting: committed progress differs between kills.
    assert len(set(progress)) == len(progress), progress
    assert stored_rows(database) == expected  # every event, once, in order
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, len(expected) + 1))


def test_sigkill_between_the_two_pipelined_commits(database, tmp_path):
    """Batch N committed, batch N+1 staged on the other connection (rows copied, cursor row
    taken, COMMIT not sent): a SIGKILL there loses N+1 entirely and duplicates nothing."""
    frames = renumbered(relay_frames(), 600)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    log = tmp_path / "service.log"
    held = re.compile(r"test hook: holding batch ids (\d+)-(\d+) before COMMIT")
    with replay_process(recording, "--rate", "400") as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_TEST_HOLD_COMMIT="0.5")
        killed_at = []
        for _ in range(3):
            seen = len(held.findall(log.read_text())) if log.exists() else 0
            proc = start_service(env, log)
            try:
                # The second batch of this run, held before its COMMIT while the first
                # (on the other connection) has committed.
                assert wait_for(lambda seen=seen: len(held.findall(log.read_text())) >= seen + 2,
                                30), log.read_text()[-3000:]
                first, _ = map(int, held.findall(log.read_text())[seen + 1])
                assert wait_for(lambda first=first: _last_id(database) == first - 1, 5)
                time.sleep(0.1)
                # Still held: its predecessor is in, it is not.
                assert _last_id(database) == first - 1
                states = query(database, "SELECT state FROM pg_stat_activity WHERE datname = "
                                         "current_database() AND pid <> pg_backend_pid()")
                assert ("idle in transaction",) in states, states
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            assert _last_id(database) == first - 1
            assert query(database, "SELECT count(*) FROM firehose_events WHERE id >= %s",
                         first) == [(0,)]
            killed_at.append(first - 1)
        env["SKYWIRE_TEST_HOLD_COMMIT"] = "0"
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(600,)], 60), log.read_text()[-3000:]
    assert killed_at == sorted(killed_at) and len(set(killed_at)) == 3, killed_at
    assert stored_rows(database) == expected_rows(frames)
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))


def test_receiver_process_exits_with_the_killed_service(database, tmp_path):
    log = tmp_path / "service.log"
    with replay_process(PDS_CAPTURE) as relay:
        proc = start_service(service_env(database, relay, tmp_path), log)
        try:
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30), log.read_text()[-3000:]
            receivers = child_processes(proc.pid)
            assert len(receivers) == 1, receivers  # the websocket + decoder process
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        # Orphaned on a connection that the relay keeps open and silent (the read timeout
        # is 30 s), it still exits at once: its stdin, the dead service's pipe, closed.
        assert wait_for(lambda: not is_running(receivers[0]), 5)


def test_killed_receiver_process_is_replaced_and_nothing_is_lost(database, tmp_path):
    frames = renumbered(relay_frames(), 2000)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    log = tmp_path / "service.log"

    def last_id() -> int:
        rows = query(database, "SELECT last_id FROM firehose_cursor")
        return rows[0][0] if rows else 0

    with replay_process(recording, "--rate", "1000") as relay, \
            service_process(service_env(database, relay, tmp_path), log) as proc:
        assert wait_for(lambda: last_id() > 200, 30), log.read_text()[-3000:]
        (receiver,) = child_processes(proc.pid)
        os.kill(receiver, signal.SIGKILL)
        assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                        == [(2000,)], 60), log.read_text()[-3000:]
        assert proc.poll() is None  # the service itself carried on
        (replacement,) = child_processes(proc.pid)
        assert replacement != receiver
    assert "receiver process exited with code -9" in log.read_text()
    assert stored_rows(database) == expected_rows(frames)
