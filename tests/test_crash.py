"""SIGKILL the service at random moments mid-ingest: the log still holds each event once."""

from __future__ import annotations

import os
import random
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

N = 3000


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(database, tmp_path):
    frames = renumbered(relay_frames(), N)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    expected = expected_rows(frames)
    rng = random.Random(20261123)
    log = tmp_path / "service.log"
    # Rate-limited so that the kills land mid-stream (~3 s of ingest in all).
    with replay_process(recording, "--rate", "1000") as relay:
        env = service_env(database, relay, tmp_path)
        kills = 0
        progress = [0]

        def last_id() -> int:
            rows = query(database, "SELECT last_id FROM firehose_cursor")
            return rows[0][0] if rows else 0

        while last_id() < len(expected) * 0.8:
            proc = start_service(env, log)
            # Once it is committing again, kill it at a random instant of the next ~0.4 s.
            assert wait_for(lambda: last_id() > progress[-1], 30), log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            progress.append(last_id())
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(N,)], 60), log.read_text()[-3000:]
    assert kills >= 3
    # Kills landed while ingesting: committed progress differs between kills.
    assert len(set(progress)) == len(progress), progress
    assert stored_rows(database) == expected  # every event, once, in order
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, len(expected) + 1))


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
