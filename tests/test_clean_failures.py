"""Failures a new user meets end in one clear line and exit 2, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

from .support import (
    ADMIN_URL,
    PDS_CAPTURE,
    ROOT,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)

SOCKET_DIR = "/var/run/postgresql"


def _run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skywire_trio", *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def _one_line_refusal(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], result.stderr[-2000:]


def test_port_in_use(database, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = service_env(database, "ws://127.0.0.1:9", tmp_path,
                          PORT=str(taken.getsockname()[1]))
        _one_line_refusal(_run(env), "already in use")


def test_database_refused_and_permission_missing(database, tmp_path):
    env = service_env("postgresql://postgres@127.0.0.1:9/nothing", "ws://127.0.0.1:9",
                      tmp_path)
    _one_line_refusal(_run(env, "migrate"), "cannot use the database")
    # A role that may connect but not create anything in the schema.
    role = f"skywire_ro_{uuid.uuid4().hex[:8]}"
    name = database.rsplit("/", 1)[1]
    fresh = f"{name}_ro"
    query(ADMIN_URL, f'CREATE ROLE "{role}" LOGIN')
    query(ADMIN_URL, f'CREATE DATABASE "{fresh}"')
    try:
        query(ADMIN_URL.rsplit("/", 1)[0] + f"/{fresh}",
              f'REVOKE CREATE ON SCHEMA public FROM PUBLIC; REVOKE ALL ON DATABASE "{fresh}" '
              f'FROM PUBLIC; GRANT CONNECT ON DATABASE "{fresh}" TO "{role}"')
        env = service_env(f"postgresql://{role}@127.0.0.1:5432/{fresh}", "ws://127.0.0.1:9",
                          tmp_path)
        _one_line_refusal(_run(env, "migrate"), "lacks a permission")
    finally:
        query(ADMIN_URL, f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        query(ADMIN_URL, f'DROP ROLE IF EXISTS "{role}"')


def test_every_bad_variable_at_once_and_typos_warned(tmp_path):
    env = service_env("postgresql://postgres@127.0.0.1:5432/x", "ws://127.0.0.1:9", tmp_path,
                      PORT="eighty", SKYWIRE_BATCH_SIZE="0", SKYWIRE_BATCHSIZE="10")
    result = _run(env, "config")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert "warning: SKYWIRE_BATCHSIZE is not a setting and is ignored (did you mean " \
           "SKYWIRE_BATCH_SIZE?)" in lines
    refused = [x for x in lines if x.startswith("configuration error: ")]
    assert len(refused) == 2
    assert any("PORT" in x for x in refused) and any("SKYWIRE_BATCH_SIZE" in x for x in refused)


def test_a_socket_database_url_works(database, tmp_path):
    if not Path(SOCKET_DIR).exists():
        raise AssertionError(f"{SOCKET_DIR} is missing: the local PostgreSQL has no socket")
    name = database.rsplit("/", 1)[1]
    url = f"postgresql:///{name}?host={SOCKET_DIR}&user=postgres"
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(url, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                            == [(473,)], 30), (tmp_path / "service.log").read_text()[-2000:]
    assert query(database, "SELECT count(*) FROM firehose_events") == [(473,)]
