"""The API under hostile clients and at shutdown, against the real service process."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
import trio_asyncio

from skywire_trio.api import auth

from .support import (
    PDS_CAPTURE,
    ROOT,
    child_processes,
    free_port,
    query,
    replay_process,
    service_env,
    wait_for,
)

SALT = "limits-test-salt"
CLIENTS = 2000
DESCRIPTORS = 1024


def _token(database: str, name: str = "reader") -> str:
    from skywire_trio.log import tokens

    token = auth.new_token()
    tokens.create_token(database, name, auth.token_hash(SALT, token), [], [], [], 100_000)
    return token


@contextlib.contextmanager
def _service(env: dict[str, str], log_path: Path, nofile: int | None = None
             ) -> Iterator[subprocess.Popen]:
    """The service as a real process (under an open-file limit if given); must exit 0."""
    command = [sys.executable, "-m", "skywire_trio"]
    if nofile is not None:
        command = ["prlimit", f"--nofile={nofile}:{nofile}", *command]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log_path.open("ab"),
                            stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{env['PORT']}"
        assert wait_for(lambda: _get(f"{base}/health") is not None, 30), log_path.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
            assert code == 0, f"service exited {code}; log:\n{log_path.read_text()[-3000:]}"


def _get(url: str, **kwargs: object) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **kwargs)
    except httpx.HTTPError:
        return None


def _committed(database: str) -> int:
    rows = query(database, "SELECT last_seq FROM firehose_cursor")
    return rows[0][0] or 0 if rows else 0


def _all_closed_by_server(sockets: list[socket.socket], timeout: float) -> int:
    """Read every socket until the server closes it; how many are still open at ``timeout``."""
    poller = select.poll()
    open_ones = {s.fileno(): s for s in sockets}
    for fd in open_ones:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while open_ones and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            try:
                data = open_ones[fd].recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                poller.unregister(fd)
                del open_ones[fd]
    return len(open_ones)


def test_2000_clients_that_never_close_stop_neither_the_api_nor_ingest(database, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CLIENTS + 200
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))
    log = tmp_path / "service.log"
    # 359 frames at 40 a second: ingest is busy all through the flood.
    with replay_process(PDS_CAPTURE, "--rate", "40") as relay:
        # Opening 2,000 connections takes this machine ~5 s: idle ones must outlive that
        # for the cap to be reached.
        env = service_env(database, relay, tmp_path, SKYWIRE_KEEP_ALIVE_TIMEOUT="8")
        base = f"http://127.0.0.1:{env['PORT']}"
        with _service(env, log, nofile=DESCRIPTORS) as proc:
            assert wait_for(lambda: _committed(database) > 0, 30)
            clients = []
            for n in range(CLIENTS):
                sock = socket.create_connection(("127.0.0.1", int(env["PORT"])), timeout=10)
                if n % 2:  # half ask for something and then hang on; half never say a word
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
                clients.append(sock)
            # Ingest has to open new descriptors now: its receiver process is replaced.
            receivers = child_processes(proc.pid, "receiver")
            assert receivers, "no receiver process found"
            # The receiver decodes on CPython's own allocator (memory.py).
            assert b"PYTHONMALLOC=pymalloc" in Path(
                f"/proc/{receivers[0]}/environ").read_bytes().split(b"\0")
            os.kill(receivers[0], signal.SIGKILL)
            try:
                # The API answers (once the kernel's accept queue, still full of the flood,
                # has drained): idle connections make room for new ones.
                assert wait_for(lambda: (r := _get(f"{base}/health")) is not None
                                and r.status_code == 200, 20)
                # The server closes its end of every one of them.
                assert _all_closed_by_server(clients, 20) == 0
            finally:
                for sock in clients:
                    sock.close()
            # Ingest went on: every frame of the recording is committed.
            assert wait_for(lambda: _committed(database) == 359, 30), log.read_text()[-3000:]
            metrics = _get(f"{base}/metrics")
            assert metrics is not None and metrics.status_code == 200
            evicted = re.search(r"^skywire_http_connections_evicted_total (\d+)",
                                metrics.text, re.M)
            assert evicted and int(evicted.group(1)) > 0
            limit = re.search(r"^skywire_http_connections_max (\d+)", metrics.text, re.M)
            assert limit and int(limit.group(1)) < DESCRIPTORS
            # The service runs on the C library's allocator, and gives the flood's memory
            # back once the connections are gone (memory.py).
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert b"PYTHONMALLOC=malloc" in environ
            assert wait_for(lambda: (r := _get(f"{base}/metrics")) is not None and int(
                re.search(r"^skywire_memory_releases_total (\d+)", r.text, re.M)[1]) > 0, 10)
    text = log.read_text()
    assert "Too many open files" not in text and "EMFILE" not in text
    assert "does not fit the open-file limit of 1024" in text


def test_sigterm_lets_a_long_poll_and_a_paged_read_finish(database, tmp_path):
    log = tmp_path / "service.log"
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, API_TOKEN_SALT=SALT,
                          SKYWIRE_SHUTDOWN_GRACE="15")
        base = f"http://127.0.0.1:{env['PORT']}"
        token = _token(database)
        headers = {"Authorization": f"Bearer {token}"}
        results: dict[str, httpx.Response | BaseException] = {}

        def fetch(name: str, params: dict[str, object]) -> None:
            try:
                results[name] = httpx.get(f"{base}/events", params=params, headers=headers,
                                          timeout=30)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
                results[name] = exc

        with _service(env, log) as proc:
            assert wait_for(lambda: _committed(database) == 359, 30)
            head = query(database, "SELECT last_id FROM firehose_cursor")[0][0]
            poll = threading.Thread(target=fetch, args=("poll", {"since": head, "wait": 25}))
            poll.start()
            # Hold the next paged read inside PostgreSQL: a lock on the log makes its query
            # wait, so the request is in flight inside the service when SIGTERM arrives.
            with psycopg.connect(database) as locker:
                locker.execute("LOCK TABLE firehose_events IN ACCESS EXCLUSIVE MODE")
                page = threading.Thread(target=fetch, args=("page", {"limit": 1000}))
                page.start()
                time.sleep(1.0)
                assert not results, results
                proc.send_signal(signal.SIGTERM)
                time.sleep(1.0)
                # Intake has stopped: no new connections...
                with pytest.raises(httpx.ConnectError):
                    httpx.get(f"{base}/health", timeout=2)
                assert proc.poll() is None  # ...and the read in flight is still awaited.
                locker.rollback()
            page.join(20)
            poll.join(20)
            assert proc.wait(20) == 0
        poll_response, page_response = results["poll"], results["page"]
        assert isinstance(poll_response, httpx.Response), poll_response
        assert poll_response.status_code == 200
        assert poll_response.json() == {"events": [], "cursor": head}
        assert isinstance(page_response, httpx.Response), page_response
        assert page_response.status_code == 200
        events = page_response.json()["events"]
        assert [e["id"] for e in events] == list(range(1, head + 1))
    text = log.read_text()
    assert "requests answered and the last batch committed" in text
    assert "grace period over" not in text


async def test_health_answers_2000_rapid_requests_while_reads_keep_the_pool_busy(database,
                                                                                 tmp_path):
    log = tmp_path / "service.log"
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, API_TOKEN_SALT=SALT)
        base = f"http://127.0.0.1:{env['PORT']}"
        token = _token(database)
        with _service(env, log):
            assert wait_for(lambda: _committed(database) == 359, 30)
            statuses: list[int] = []
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)

            async def health_worker(client: httpx.AsyncClient) -> None:
                for _ in range(10):
                    statuses.append((await client.get("/health")).status_code)

            async def reader(client: httpx.AsyncClient) -> None:
                while True:
                    response = await client.get("/events", params={"limit": 200})
                    assert response.status_code == 200

            async with httpx.AsyncClient(base_url=base, timeout=30, headers={
                    "Authorization": f"Bearer {token}"}) as readers_client, \
                    httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client, \
                    trio.open_nursery() as readers:
                for _ in range(8):  # twice the API's pool
                    readers.start_soon(reader, readers_client)
                async with trio.open_nursery() as nursery:
                    for _ in range(200):
                        nursery.start_soon(health_worker, client)
                readers.cancel_scope.cancel()
    assert len(statuses) == 2000
    assert statuses.count(200) == 2000, sorted(set(statuses))


@contextlib.contextmanager
def _role(database: str, *grants: str, timeout_ms: int | None = None) -> Iterator[str]:
    """A login role with only ``grants`` on the test database; yields its URL."""
    name = f"skywire_role_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
        for grant in grants:
            conn.execute(f"GRANT {grant} TO {name}")
        if timeout_ms is not None:
            conn.execute(f"ALTER ROLE {name} SET statement_timeout = {timeout_ms}")
    try:
        yield database.replace("postgresql://postgres@", f"postgresql://{name}@")
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE usename = '{name}'")
            conn.execute(f"DROP OWNED BY {name}")
            conn.execute(f"DROP ROLE {name}")


async def _api_as(url: str, nursery: trio.Nursery) -> str:
    from skywire_trio.api.server import serve_api
    from skywire_trio.config import Settings
    from skywire_trio.log import reader
    from skywire_trio.log.notify import CommitFeed
    from skywire_trio.stats import IngestStats

    settings = Settings(database_url=url, port=0, api_token_salt=SALT)

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        async with trio_asyncio.open_loop(), reader.open_read_store(url) as store:
            await serve_api(settings, IngestStats(), store, CommitFeed(),
                            task_status=task_status)

    return await nursery.start(run)


async def test_database_errors_are_reported_by_kind(database, nursery):
    token = _token(database)
    headers = {"Authorization": f"Bearer {token}"}
    tokens_only = ("SELECT, UPDATE ON api_tokens", "SELECT ON firehose_cursor")
    # A role that may read tokens but not the log: a permission error, not "unreachable".
    with _role(database, *tokens_only) as url:
        base = await _api_as(url, nursery)
        async with httpx.AsyncClient(base_url=base, headers=headers) as client:
            response = await client.get("/events")
            assert response.status_code == 500
            assert response.json()["error"] == "database_permission"
            health = (await client.get("/health")).json()
            assert health["status"] == "database_unavailable"
            assert health["database"] == "permission"  # the probe counts a log partition
    # A role with a 300 ms statement timeout, and the log locked: a timeout.
    with _role(database, *tokens_only, "SELECT ON ALL TABLES IN SCHEMA public",
               timeout_ms=300) as url:
        base = await _api_as(url, nursery)
        async with httpx.AsyncClient(base_url=base, headers=headers) as client:
            with psycopg.connect(database) as locker:
                locker.execute("LOCK TABLE firehose_events IN ACCESS EXCLUSIVE MODE")
                response = await client.get("/events")
            assert response.status_code == 503 and "Retry-After" in response.headers
            assert response.json()["error"] == "database_timeout"
            assert (await client.get("/events")).status_code == 200  # lock gone
    # Nothing listening: unreachable.
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    base = await _api_as(closed, nursery)
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        response = await client.get("/events")
        assert response.status_code == 503
        assert response.json()["error"] == "database_unavailable"
        health = (await client.get("/health")).json()
        assert health["database"] == "unreachable"
