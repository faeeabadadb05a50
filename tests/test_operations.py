"""Operating the service: configuration errors, SIGTERM under load, metrics, the embedded
database, and the admin commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from skywire_trio.firehose.framefile import write_frames

from .support import (
    ADMIN_URL,
    PDS_CAPTURE,
    ROOT,
    expected_rows,
    free_port,
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

BAD_VALUES = [
    ("DATABASE_URL", "mysql://x"), ("DATABASE_URL", "not a url"),
    ("SKYWIRE_RELAY_URL", "http://relay"), ("SKYWIRE_RELAY_URL", "wss://"),
    ("HOST", "bad host!"), ("PORT", "http"), ("PORT", "70000"),
    ("SKYWIRE_RETENTION_DAYS", "0"), ("SKYWIRE_RETENTION_DAYS", "week"),
    ("SKYWIRE_PREMAKE_DAYS", "0"), ("SKYWIRE_BATCH_SIZE", "0"), ("SKYWIRE_BATCH_SIZE", "1e3"),
    ("SKYWIRE_BATCH_INTERVAL", "-1"), ("SKYWIRE_BATCH_INTERVAL", "soon"),
    ("SKYWIRE_BUFFER_FRAMES", "0"), ("SKYWIRE_OVERFLOW_GRACE", "0"),
    ("SKYWIRE_READ_TIMEOUT", "x"), ("SKYWIRE_BACKOFF_MIN", "0"), ("SKYWIRE_BACKOFF_MAX", "9999"),
    ("SKYWIRE_HEALTHY_AFTER", "0"), ("SKYWIRE_RESET_CURSOR", "maybe"),
    ("SKYWIRE_ENV", "staging"), ("SKYWIRE_API_POOL_SIZE", "0"),
    ("SKYWIRE_PARTITION_INTERVAL", "0"), ("SKYWIRE_STALL_SECONDS", "0"),
    ("SKYWIRE_ROLE", "boss"), ("SKYWIRE_ROLE", "publisher"),  # publisher without NATS
    ("SKYWIRE_NATS_URL", "http://127.0.0.1:4222"),
    ("SKYWIRE_NATS_URL", "nats://127.0.0.1:4222,nats://"),
    ("SKYWIRE_NATS_SUBJECT_PREFIX", "atproto.>"), ("SKYWIRE_NATS_SUBJECT_PREFIX", "a..b"),
    ("SKYWIRE_NATS_SUBJECT_PREFIX", "a b"), ("SKYWIRE_NATS_STREAM", "a.b"),
    ("SKYWIRE_NATS_REPLICAS", "0"), ("SKYWIRE_NATS_REPLICAS", "7"),
    ("SKYWIRE_NATS_DUPLICATE_WINDOW", "100000"), ("SKYWIRE_NATS_ACK_TIMEOUT", "0"),
    ("SKYWIRE_NATS_MAX_PENDING", "10"),
]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SKYWIRE_", "DATABASE_URL", "API_TOKEN_SALT", "HOST", "PORT"))}
    env.update(extra)
    return env


@pytest.mark.parametrize("name, value", BAD_VALUES)
def test_bad_configuration_is_refused_before_connecting(name, value, tmp_path):
    # A database that does not exist on a port nobody listens on: had the service tried to
    # connect, the error would be a connection error, not this message.
    env = _clean_env(**{"DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none",
                        "SKYWIRE_DATA_DIR": str(tmp_path), name: value})
    result = subprocess.run([sys.executable, "-m", "skywire_trio"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("configuration error: ") and name in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "pgdata").exists()


def test_production_refuses_default_secrets(tmp_path):
    base = dict(DATABASE_URL="postgresql://u@127.0.0.1/x", SKYWIRE_ENV="production")
    for extra in ({}, {"API_TOKEN_SALT": "short"}):
        result = subprocess.run([sys.executable, "-m", "skywire_trio"], cwd=tmp_path,
                                env=_clean_env(**base, **extra), capture_output=True, text=True)
        assert result.returncode == 2 and "API_TOKEN_SALT" in result.stderr
    secret = {**base, "API_TOKEN_SALT": "s" * 40, "DATABASE_URL": "postgresql://u:pw@127.0.0.1/x"}
    result = subprocess.run([sys.executable, "-m", "skywire_trio", "config"], cwd=tmp_path,
                            env=_clean_env(**secret), capture_output=True, text=True)
    assert result.returncode == 0
    assert "s" * 40 not in result.stdout and ":pw@" not in result.stdout
    assert "postgresql://u:********@127.0.0.1/x" in result.stdout


def test_production_logs_are_json_lines(database, tmp_path):
    env = _clean_env(DATABASE_URL=database, SKYWIRE_ENV="production",
                     API_TOKEN_SALT="p" * 40)
    result = subprocess.run([sys.executable, "-m", "skywire_trio", "migrate"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(x) for x in lines)


def test_sigterm_under_heavy_ingest_exits_cleanly_and_loses_nothing(database, tmp_path):
    frames = renumbered(relay_frames(), 20000)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    expected = expected_rows(frames)
    log = tmp_path / "service.log"
    with replay_process(recording) as relay:
        env = service_env(database, relay, tmp_path)
        proc = start_service(env, log)
        assert wait_for(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                        and query(database, "SELECT last_id FROM firehose_cursor")[0][0] > 2000,
                        60), log.read_text()[-2000:]
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - began
        assert code == 0 and took < 10, (code, took, log.read_text()[-2000:])
        stopped_at = query(database, "SELECT last_id, last_seq FROM firehose_cursor")[0]
        assert stopped_at[0] < len(expected), "stopped mid-ingest"
        assert stored_rows(database) == expected[:stopped_at[0]]
        # The next start resumes exactly after the last committed event.
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(20000,)], 60)
    assert f"?cursor={stopped_at[1]}" in log.read_text()
    assert stored_rows(database) == expected


def test_metrics_agree_with_the_database(database, tmp_path):
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            text = httpx.get(f"http://127.0.0.1:{env['PORT']}/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    rows = query(database, "SELECT count(*), max(id), max(seq) FROM firehose_events")[0]
    assert samples["skywire_events_committed_total"] == rows[0] == rows[1]
    assert samples["skywire_last_id"] == rows[1]
    assert samples["skywire_last_seq"] == rows[2] == 359
    assert samples["skywire_frames_received_total"] == 359
    assert samples["skywire_bytes_received_total"] == PDS_CAPTURE.stat().st_size - 4 * 359
    assert samples["skywire_upstream_connected"] == 1


def test_embedded_database_zero_setup(tmp_path):
    data = tmp_path / "var"
    port = free_port()
    with replay_process(PDS_CAPTURE) as relay:
        env = _clean_env(SKYWIRE_DATA_DIR=str(data), SKYWIRE_RELAY_URL=relay, PORT=str(port),
                         SKYWIRE_DEADLETTER_DIR=str(tmp_path / "dl"))
        log = tmp_path / "service.log"
        token = None
        with service_process(env, log):
            first = wait_for(lambda: log.exists() and log.read_text().strip(), 60)
            assert first
            assert "embedded PostgreSQL" in log.read_text().splitlines()[0]
            base = f"http://127.0.0.1:{port}"

            def ingested() -> bool:
                try:
                    return httpx.get(f"{base}/health").json().get("last_seq") == 359
                except httpx.HTTPError:
                    return False

            assert wait_for(ingested, 90), log.read_text()[-2000:]
            token = subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "create",
                                    "t"], env=env, cwd=ROOT, capture_output=True, text=True,
                                   check=True).stdout.strip()
            page = httpx.get(f"{base}/events", params={"limit": 1000},
                             headers={"Authorization": f"Bearer {token}"}).json()
            assert len(page["events"]) == 473
    # Data stays for the next start.
    shown = subprocess.run([sys.executable, "-m", "skywire_trio", "cursor", "show", "--json"],
                           env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(shown)["last_id"] == 473


def test_health_is_503_when_stalled_or_when_the_database_is_gone(database, tmp_path):
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_STALL_SECONDS="1")
        base = f"http://127.0.0.1:{env['PORT']}"
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            assert httpx.get(f"{base}/health").status_code == 200
    # The relay is gone (its process ended): this process never reaches an upstream, so past
    # the stall bound it is 503 "connecting" (not "ok" with restarts climbing).
    env = service_env(database, relay, tmp_path, SKYWIRE_STALL_SECONDS="1")
    base = f"http://127.0.0.1:{env['PORT']}"
    with service_process(env, tmp_path / "service2.log"):
        def health() -> httpx.Response | None:
            try:
                return httpx.get(f"{base}/health")
            except httpx.HTTPError:
                return None

        assert wait_for(lambda: (r := health()) is not None and r.status_code == 503, 30)
        body = health().json()
        assert body["status"] == "connecting" and body["upstream_connected"] is False
        # The database disappears under the running service: 503, and no crash.
        query(ADMIN_URL, f'DROP DATABASE "{database.rsplit("/", 1)[1]}" WITH (FORCE)')
        assert wait_for(lambda: (r := health()) is not None and
                        r.json()["database"] == "unreachable", 30)
        gone = health()
        assert gone.status_code == 503 and gone.json()["status"] == "database_unavailable"
        events = httpx.get(f"{base}/events", headers={"Authorization": "Bearer swt_" + "a" * 43})
        assert events.status_code == 503
        assert events.json()["error"] == "database_unavailable" and "Retry-After" in events.headers


def test_a_cursor_of_another_upstream_refuses_to_start(database, tmp_path):
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
    other = service_env(database, "ws://127.0.0.1:9/elsewhere", tmp_path)
    result = subprocess.run([sys.executable, "-m", "skywire_trio"], env=other, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "belongs to" in result.stderr and "SKYWIRE_RESET_CURSOR" in result.stderr
    assert query(database, "SELECT last_seq FROM firehose_cursor") == [(359,)]


def test_cursor_set_is_refused_while_running_and_works_when_stopped(database, tmp_path):
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            refused = subprocess.run([sys.executable, "-m", "skywire_trio", "cursor", "set", "5"],
                                     env=env, cwd=ROOT, capture_output=True, text=True)
            assert refused.returncode == 2 and "running" in refused.stderr
        done = subprocess.run([sys.executable, "-m", "skywire_trio", "cursor", "set", "300"],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        shown = json.loads(subprocess.run([sys.executable, "-m", "skywire_trio", "cursor",
                                           "show", "--json"], env=env, cwd=ROOT,
                                          capture_output=True, text=True, check=True).stdout)
        assert shown["last_seq"] == 300 and shown["last_id"] == 473
        # ISO 8601 times, in the JSON and in the table.
        assert "T" in shown["updated_at"] and shown["updated_at"].endswith("+00:00")
        table = subprocess.run([sys.executable, "-m", "skywire_trio", "cursor", "show"], env=env,
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
        header, row = table.splitlines()
        assert header.split() == ["upstream", "last_seq", "last_id", "updated_at"]
        assert row.split()[1:] == ["300", "473", shown["updated_at"]]
