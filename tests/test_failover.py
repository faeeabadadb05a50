"""Leadership per role: several instances on one database, exactly one ingests and one
publishes, and a standby takes over when the leader is SIGKILLed."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime

import httpx

from skywire_trio.api import auth
from skywire_trio.firehose.framefile import write_frames
from skywire_trio.log import tokens as token_store

from .nats import nats_server, stream_messages, stream_state, wait_stream_count
from .support import (
    PDS_CAPTURE,
    expected_rows,
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

SALT = "failover-test-salt"
LEADER = {"ingest": "leader", "publisher": "leader", "delivery": "leader"}


def _health(env: dict[str, str]) -> tuple[int, dict]:
    try:
        response = httpx.get(f"http://127.0.0.1:{env['PORT']}/health", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def _last_id(url: str) -> int:
    rows = query(url, "SELECT last_id FROM firehose_cursor")
    return rows[0][0] if rows else 0


def _published(url: str) -> int:
    try:
        return stream_state(url)["last_seq"]
    except Exception:  # noqa: BLE001 - no stream yet
        return 0


def _published_ids(url: str) -> list[int]:
    return [int(headers["Skywire-Id"]) for _, headers, _ in stream_messages(url)]


def test_standby_takes_over_within_a_second_of_the_leaders_sigkill(database, tmp_path):
    frames = renumbered(relay_frames(), 5000)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    # 10 s of upstream: the kill must land while the leader is still ingesting.
    with nats_server(tmp_path) as nats, replay_process(recording, "--rate", "500") as relay:
        first = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url)
        second = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url,
                             SKYWIRE_STALL_SECONDS="1")
        leader = start_service(first, tmp_path / "first.log")
        try:
            assert wait_for(lambda: _health(first)[1].get("leadership") == LEADER, 30)
            with service_process(second, tmp_path / "second.log"):
                assert wait_for(lambda: _health(second)[0] == 200, 30)
                time.sleep(1.5)  # longer than its stall bound: a standby is not stalled
                status, standby = _health(second)
                assert status == 200 and standby["status"] == "ok", standby
                assert standby["role"] == "all"
                assert standby["leadership"] == {role: "standby" for role in LEADER}
                assert wait_for(lambda: _published(nats.url) > 500, 30)
                assert query(database, "SELECT last_seq FROM firehose_cursor")[0][0] < 4500
                killed_at = time.time()
                leader.send_signal(signal.SIGKILL)
                # The standby's own first commit and publish (not a commit of the leader
                # that was in flight when it died): from its /health.
                first_commit = first_publish = None
                deadline = time.monotonic() + 20
                while (first_commit is None or first_publish is None) \
                        and time.monotonic() < deadline:
                    _, now = _health(second)
                    if first_commit is None and now.get("seconds_since_commit") is not None:
                        first_commit = time.time() - now["seconds_since_commit"] - killed_at
                    if first_publish is None and now.get("publisher", {}).get("published"):
                        first_publish = time.time() - killed_at
                    time.sleep(0.01)
                status, body = _health(second)
                assert body["leadership"] == LEADER
                took = {role: datetime.fromisoformat(since).timestamp() - killed_at
                        for role, since in body["leader_since"].items()}
                print(f"takeover after SIGKILL: lock ingest {took['ingest']:.3f}s, "
                      f"publisher {took['publisher']:.3f}s; first commit {first_commit:.3f}s, "
                      f"first publish {first_publish:.3f}s")
                assert 0 < took["ingest"] < 1.0 and 0 < took["publisher"] < 1.0, took
                assert first_commit is not None and first_publish is not None
                assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                                == [(5000,)], 60)
                rows = _last_id(database)
                assert wait_stream_count(nats.url, rows, 30)
        finally:
            leader.kill()
            leader.wait(10)
        ids = _published_ids(nats.url)
    assert stored_rows(database) == expected_rows(frames)  # the log: every event once
    assert ids == list(range(1, rows + 1))  # the stream: every id once, in order


def test_roles_ingest_api_and_publisher_in_separate_processes(database, tmp_path):
    token = auth.new_token()
    token_store.create_token(database, "reader", auth.token_hash(SALT, token), [], [], [], 100)
    with nats_server(tmp_path) as nats, replay_process(PDS_CAPTURE) as relay:
        envs = {role: service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url,
                                  API_TOKEN_SALT=SALT, SKYWIRE_ROLE=role)
                for role in ("ingest", "api", "publisher")}
        with service_process(envs["api"], tmp_path / "api.log"), \
                service_process(envs["ingest"], tmp_path / "ingest.log"), \
                service_process(envs["publisher"], tmp_path / "publisher.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            assert wait_stream_count(nats.url, 473, 30)
            health = {role: _health(env) for role, env in envs.items()}
            page = httpx.get(f"http://127.0.0.1:{envs['api']['PORT']}/events?limit=1000",
                             headers={"Authorization": f"Bearer {token}"}).json()
        ids = _published_ids(nats.url)
    assert all(status == 200 for status, _ in health.values()), health
    assert health["ingest"][1]["leadership"] == {"ingest": "leader"}
    assert health["publisher"][1]["leadership"] == {"publisher": "leader",
                                                    "delivery": "leader"}
    assert health["publisher"][1]["publisher"]["last_id"] == 473
    api = health["api"][1]
    assert api["role"] == "api" and api["leadership"] == {} and "publisher" not in api
    assert api["upstream_connected"] is False  # it never connects upstream
    assert [e["id"] for e in page["events"]] == list(range(1, 474)) == ids
    assert json.dumps(page["events"][0])  # the API instance serves the log's JSON
    assert "connected to" not in (tmp_path / "api.log").read_text()
    assert "connected to" not in (tmp_path / "publisher.log").read_text()
