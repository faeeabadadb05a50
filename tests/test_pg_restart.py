"""Database down: ingestion pauses and retries with backoff, resumes by itself, loses nothing.

The test runs its own throwaway PostgreSQL cluster (initdb + pg_ctl as the ``postgres`` OS
user, on a free port, 127.0.0.1 only), so it can crash it with ``pg_ctl stop -m immediate``
without touching the shared server. The real service ingests a rate-limited replay into
it; mid-stream the cluster is crashed, kept down ~2 s, and started again.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from skywire_trio.firehose.framefile import write_frames

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

PG_BIN = Path("/usr/lib/postgresql/15/bin")
N = 1500
RATE = "300"  # frames per second: ~5 s of ingest, so the outage lands mid-stream
OUTAGE = 2.0  # seconds the database stays down
BACKOFF_MIN, BACKOFF_MAX = 0.2, 1.0

pytestmark = pytest.mark.skipif(
    not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None or os.geteuid() != 0,
    reason="needs PostgreSQL 15 server binaries, and root to run them as the postgres user")


def _free_port() -> int:
    """A free port below the ephemeral range.

    The port is released while the database is down; a port from the ephemeral range
    could meanwhile become the local end of some outgoing connection.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class Cluster:
    """A throwaway PostgreSQL cluster run as the ``postgres`` OS user."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.logfile = base / "postgres.log"
        self.port = _free_port()

    def _pg(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        # cwd must be readable by the postgres user; stdin closed so nothing waits on it.
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd=self.base,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def initdb(self) -> None:
        done = self._pg(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                        "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync")
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}\n{done.stderr}"

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=30")
        done = self._pg(str(PG_BIN / "pg_ctl"), "start", "-D", str(self.data), "-w",
                        "-t", "60", "-l", str(self.logfile), "-o", options)
        assert done.returncode == 0, (
            f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{self.log_tail()}")
        assert wait_for(self.accepting, 30), f"cluster not accepting:\n{self.log_tail()}"

    def crash(self) -> None:
        """Stop without a checkpoint: every backend is killed, like a server crash."""
        done = self._pg(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data), "-m",
                        "immediate", "-w", "-t", "60")
        assert done.returncode == 0, f"pg_ctl stop failed:\n{done.stdout}\n{done.stderr}"

    def running(self) -> bool:
        return self._pg(str(PG_BIN / "pg_ctl"), "status", "-D", str(self.data)).returncode == 0

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def accepting(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False


@contextlib.contextmanager
def throwaway_cluster(keep_log: Path) -> Iterator[Cluster]:
    """initdb + start a private cluster; always stopped and removed afterwards."""
    # A short path under /tmp: the postgres user must traverse it, and the unix socket
    # path (socket dir + ".s.PGSQL.<port>") must stay under ~107 bytes.
    base = Path(tempfile.mkdtemp(prefix="skyw-pg-", dir="/tmp"))
    shutil.chown(base, "postgres", "postgres")
    cluster = Cluster(base)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        try:
            if cluster.data.exists() and cluster.running():
                cluster.crash()
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(cluster.logfile, keep_log)  # for post-mortems
            shutil.rmtree(base, ignore_errors=True)


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
                assert wait_for(lambda: "ingest stopped" in log_text()[log_mark:], 15), \
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

        # Retries while down were paced by a growing backoff, not a hot loop.
        delays = [float(d) for d in re.findall(r"ingest stopped: .*; restarting in ([0-9.]+)s",
                                                 outage_log)]
        stops = re.findall(r"ingest stopped: .*", outage_log)
        assert len(stops) >= 2 and len(delays) >= 2, outage_log
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
