"""A throwaway PostgreSQL 15 cluster of a test's own (initdb + pg_ctl as the ``postgres`` user).

For tests that crash the server or change cluster-wide state (extensions, database
settings) without touching the shared server on 5432.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from .support import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# Apply to a test module that uses a cluster: ``pytestmark = needs_cluster``.
needs_cluster = pytest.mark.skipif(
    not (PG_BIN / "pg_ctl").exists() or shutil.which("runuser") is None or os.geteuid() != 0,
    reason="needs PostgreSQL 15 server binaries, and root to run them as the postgres user")


def free_low_port() -> int:
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
        self.port = free_low_port()

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
