"""Database down: ingestion pauses and retries with backoff, resumes by itself, loses nothing.

The test runs its own throwaway PostgreSQL cluster (initdb + pg_ctl as the ``postgres`` OS
user, on a free port, 127.0.0.1 only), so it can crash it with ``pg_ctl stop -m immediate``
without touching the shared server. The real service ingests a rate-limited replay into
it; mid-stream the cluster is crashed, kept down ~2 s, and started again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from skywire_trio.firehose.framefile import write_frames

from .cluster import needs_cluster, throwaway_cluster
from .support import (
    ROOT,
    expected_rows,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    service_process,
    stored_rows,
    wait_for,
)

N = 1500
RATE = "300"  # frames per second: ~5 s of ingest, so the outage lands mid-stream
OUTAGE = 2.0  # seconds the database stays down
BACKOFF_MIN, BACKOFF_MAX = 0.2, 1.0

pytestmark = needs_cluster


def _migrate(database_url: str) -> None:
    env = dict(os.environ, DATABASE_URL=database_url)
    done = subprocess.run([sys.executable, "-m", "skywire_trio", "migrate"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"migrate failed:\n{done.stdout}\n{done.stderr}"


def test_database_outage_pauses_retries_and_resumes_without_loss(tmp_path):
    t0 = time.monotonic()

    def phase(name: str) -> None:  # shown by pytest when the test fails
        print(f"{time.monotonic() - t0:6.2f}s {name}", flush=True)

    frames = renumbered(relay_frames(), N)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    expected = expected_rows(frames)
    assert len(set(expected)) == len(expected)  # so equality below also means "no duplicate"
    log = tmp_path / "service.log"

    def log_text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    with throwaway_cluster(tmp_path / "postgres.log") as cluster:
        phase(f"cluster up on port {cluster.port}")
        database = cluster.url("skywire")
        _migrate(database)  # creates the database, then migrates it
        assert query(database, "SELECT count(*) FROM firehose_events") == [(0,)]
        phase("migrated")

        def cursor() -> tuple[int | None, int]:
            rows = query(database, "SELECT last_seq, last_id FROM firehose_cursor")
            return rows[0] if rows else (None, 0)

        with replay_process(recording, "--rate", RATE) as relay:
            env = service_env(database, relay, tmp_path,
                              SKYWIRE_BACKOFF_MIN=str(BACKOFF_MIN),
                              SKYWIRE_BACKOFF_MAX=str(BACKOFF_MAX))
            with service_process(env, log) as proc:
                # Some of the stream committed, most of it still to come.
                assert wait_for(lambda: (cursor()[0] or 0) >= N // 5, 30), log_text()[-3000:]
                before_seq, _ = cursor()
                phase(f"crashing the cluster at seq {before_seq}")
                assert before_seq < N // 2, "ingest ran too fast for a mid-stream outage"
                log_mark = len(log_text())

                cluster.crash()
                down_at = time.monotonic()
                phase("cluster down")
                assert not cluster.accepting()
                # The service notices, keeps running and keeps retrying while it is down.
                assert wait_for(lambda: "ingest-leader stopped" in log_text()[log_mark:], 15), \
                    log_text()[-3000:]
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))
                assert proc.poll() is None, f"service died with the database:\n{log_text()}"
                outage_log = log_text()[log_mark:]
                down_for = time.monotonic() - down_at

                cluster.start()
                phase(f"cluster back after {down_for:.1f}s")
                # Nothing else is done: the service must find the database again by itself.
                assert wait_for(lambda: cursor()[0] == N, 45), (
                    f"did not resume; cursor {cursor()}\n{log_text()[-3000:]}")
                assert proc.poll() is None
                phase("caught up")
            # service_process has sent SIGTERM and checked exit code 0 here.

        # Retries while down were paced by a growing backoff, not a hot loop. The database
        # took the ingest lock's connection with it: ingest itself stops (it may retry once
        # or twice before that is noticed) and the leadership retries until the lock is back.
        delays = [float(d) for d in re.findall(
            r"ingest-leader stopped: .*; restarting in ([0-9.]+)s", outage_log)]
        stops = re.findall(r"ingest-leader stopped: .*", outage_log)
        assert len(stops) >= 2 and len(delays) >= 2, outage_log
        assert len(re.findall(r"ingest stopped: .*", outage_log)) <= 6, outage_log
        # Full jitter draws step k from [s/2, s] with s doubling, so the delays cannot
        # shrink before the cap is reached, and the first one starts near BACKOFF_MIN.
        assert delays[0] <= BACKOFF_MIN + 0.05, delays
        assert delays[:3] == sorted(delays[:3]) and max(delays) > delays[0], delays
        assert max(delays) <= BACKOFF_MAX + 0.05, delays
        # With jitter, step k sleeps >= BACKOFF_MIN * 2**k / 2: bounds the retry count.
        assert len(stops) <= 12, f"{len(stops)} retries in {down_for:.1f}s:\n{outage_log}"
        assert len(delays) <= len(stops) + 1

        stored = stored_rows(database)
        assert len(stored) == len(expected)
        assert stored == expected  # every event, once, in upstream order
        ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
        assert ids == list(range(1, len(expected) + 1))  # gapless, no duplicate id
        seqs = [s for (s,) in query(database, "SELECT DISTINCT seq FROM firehose_events "
                                              "ORDER BY 1")]
        assert seqs == list(range(1, N + 1))
        assert query(database, "SELECT count(*) FROM (SELECT seq, collection, rkey "
                               "FROM firehose_events GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
                     ) == [(0,)]
        assert cursor() == (N, len(expected))
