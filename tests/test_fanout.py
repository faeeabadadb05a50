"""Fan-out to NATS JetStream with real nats-server processes and real service processes."""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio
import trio_asyncio

from skywire_trio.api import auth
from skywire_trio.fanout.subjects import subject_for
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.framefile import write_frames
from skywire_trio.log import tokens as token_store
from skywire_trio.log import writer
from skywire_trio.types import LogEvent

from .nats import (
    nats_cluster,
    nats_server,
    run_asyncio,
    stream_messages,
    stream_state,
    wait_stream_count,
)
from .support import (
    PDS_CAPTURE,
    free_port,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    service_process,
    start_service,
    wait_for,
)

SALT = "fanout-test-salt"


def _event(event_type: str = "commit", collection: str | None = None) -> LogEvent:
    return LogEvent(1, event_type, collection, "did:plc:x", "create", 0, b"{}", 1)


@pytest.mark.parametrize("event, subject", [
    (_event(collection="app.bsky.feed.post"), "atproto.firehose.commit.app.bsky.feed.post"),
    (_event(collection="com.example.my-app.v2"), "atproto.firehose.commit.com.example.my-app.v2"),
    (_event(collection=None), "atproto.firehose.commit"),
    (_event("identity"), "atproto.firehose.identity"),
    (_event("account"), "atproto.firehose.account"),
    # Not NSIDs: nothing may become a wildcard, an empty token or a second subject.
    (_event(collection="a.*.>"), "atproto.firehose.commit.a._._"),
    (_event(collection="a..b"), "atproto.firehose.commit.a._.b"),
    (_event(collection="x y"), "atproto.firehose.commit.x_y"),
    (_event("#odd type"), "atproto.firehose._odd_type"),
])
def test_subjects(event, subject):
    assert subject_for("atproto.firehose", event) == subject


def _last_id(url: str) -> int:
    rows = query(url, "SELECT last_id FROM firehose_cursor")
    return rows[0][0] if rows else 0


def _stored_ids(url: str) -> list[int]:
    return [i for (i,) in query(url, "SELECT id FROM firehose_events ORDER BY id")]


def _assert_exactly_once(messages: list[tuple[str, dict, bytes]], ids: list[int]) -> None:
    published = [int(headers["Skywire-Id"]) for _, headers, _ in messages]
    assert published == ids  # every id once, in id order
    assert [json.loads(body)["id"] for _, _, body in messages] == ids


def _stream_last_seq(url: str | list[str]) -> int:
    try:
        return stream_state(url)["last_seq"]
    except Exception:  # noqa: BLE001 - no stream yet, or the server is restarting
        return 0


def _health(port: str) -> tuple[int, dict]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def test_replayed_capture_is_published_once_in_order_as_the_events_json(database, tmp_path):
    token = auth.new_token()
    token_store.create_token(database, "reader", auth.token_hash(SALT, token), [], [], [], 100)
    with nats_server(tmp_path) as nats, replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url,
                          API_TOKEN_SALT=SALT)
        with service_process(env, tmp_path / "service.log"):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 30)
            rows = _last_id(database)
            assert wait_stream_count(nats.url, rows, 30), (tmp_path / "service.log").read_text()
            page = httpx.get(f"http://127.0.0.1:{env['PORT']}/events?limit=1000",
                             headers={"Authorization": f"Bearer {token}"}).json()
            status, health = _health(env["PORT"])
            metrics = httpx.get(f"http://127.0.0.1:{env['PORT']}/metrics").text
        messages = stream_messages(nats.url)
        posts = stream_messages(nats.url, subjects="atproto.firehose.commit.app.bsky.feed.>")
    ids = _stored_ids(database)
    assert len(ids) == rows == 473
    _assert_exactly_once(messages, ids)
    events = page["events"]
    assert [json.loads(body) for _, _, body in messages] == events
    for (subject, headers, _), event in zip(messages, events, strict=True):
        assert headers["Nats-Msg-Id"] == str(event["id"])
        assert headers.get("Skywire-Seq") == (None if event["seq"] is None else str(event["seq"]))
        if event["kind"] == "commit":
            collection = event["commit"].get("collection")  # none for an empty commit
            assert subject == "atproto.firehose.commit" + (f".{collection}" if collection else "")
        else:
            assert subject == "atproto.firehose." + event["kind"]
    # A filter subject selects an NSID prefix.
    feed = [e["id"] for e in events if e["kind"] == "commit"
            and e["commit"].get("collection", "").startswith("app.bsky.feed.")]
    assert feed and [json.loads(body)["id"] for _, _, body in posts] == feed
    assert status == 200 and health["leadership"] == {
        "ingest": "leader", "publisher": "leader", "delivery": "leader"}
    assert health["publisher"]["nats_connected"] is True
    assert health["publisher"]["last_id"] == rows and health["publisher"]["lag_events"] == 0
    assert f"skywire_published_total {rows}" in metrics
    assert "skywire_nats_connected 1" in metrics
    assert query(database, "SELECT stream, last_id FROM publisher_cursor") == [("SKYWIRE", rows)]


def test_sigkill_while_publishing_leaves_every_id_once(database, tmp_path):
    frames = renumbered(relay_frames(), 3000)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    rng = random.Random(20261129)
    log = tmp_path / "service.log"
    with nats_server(tmp_path) as nats, replay_process(recording, "--rate", "1500") as relay:
        # Small publish batches, so that a kill lands with batches in flight.
        env = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url,
                          SKYWIRE_NATS_BATCH_SIZE="50", SKYWIRE_NATS_MAX_PENDING="200")
        published = [0]
        for _ in range(5):
            proc = start_service(env, log)
            # Once it is publishing again, kill it at a random instant of the next 0.3 s.
            assert wait_for(lambda: _stream_last_seq(nats.url) > published[-1], 30,
                            interval=0.02), log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            published.append(_stream_last_seq(nats.url))
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(3000,)], 60), log.read_text()[-3000:]
            ids = _stored_ids(database)
            assert wait_stream_count(nats.url, len(ids), 30), log.read_text()[-3000:]
        messages = stream_messages(nats.url)
    # Kills landed while publishing: the stream had moved on before each one.
    assert len(set(published)) == len(published), published
    _assert_exactly_once(messages, ids)
    assert len(ids) > 3000


# 600 frames/s: the replay outlasts the 10 s outage with room to spare.
OUTAGE_FRAMES = 9_000


def test_nats_outage_never_pauses_ingestion_and_the_stream_catches_up(database, tmp_path):
    frames = renumbered(relay_frames(), OUTAGE_FRAMES)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    log = tmp_path / "service.log"
    with nats_server(tmp_path) as nats, replay_process(recording, "--rate", "600") as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=nats.url)
        with service_process(env, log):
            assert wait_for(lambda: _stream_last_seq(nats.url) > 300, 30), \
                log.read_text()[-3000:]
            nats.stop(signal.SIGKILL)
            down_at = _last_id(database)
            ticks = []
            for _ in range(20):  # 10 s without NATS
                time.sleep(0.5)
                ticks.append(_last_id(database))
            status, health = _health(env["PORT"])
            nats.start()  # the same store directory and port
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(OUTAGE_FRAMES,)], 60), log.read_text()[-3000:]
            ids = _stored_ids(database)
            assert wait_stream_count(nats.url, len(ids), 60), log.read_text()[-3000:]
            _, caught_up = _health(env["PORT"])
        messages = stream_messages(nats.url)
    # Ingestion went on at full pace while NATS was down: every half second the log grew.
    assert all(b > a for a, b in zip([down_at, *ticks], ticks, strict=False)), ticks
    assert status == 200 and health["publisher"]["nats_connected"] is False
    assert health["publisher"]["lag_events"] > 0 and health["publisher"]["errors"] >= 1
    assert health["publisher"]["last_error"]
    assert caught_up["publisher"]["nats_connected"] is True
    assert caught_up["publisher"]["lag_events"] == 0
    _assert_exactly_once(messages, ids)


def test_three_node_cluster_loses_a_node_while_publishing(database, tmp_path):
    frames = renumbered(relay_frames(), 2500)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    log = tmp_path / "service.log"
    with nats_cluster(tmp_path) as servers, \
            replay_process(recording, "--rate", "600") as relay:
        urls = [s.url for s in servers]
        env = service_env(database, relay, tmp_path, SKYWIRE_NATS_URL=",".join(urls),
                          SKYWIRE_NATS_REPLICAS="3")
        with service_process(env, log):
            assert wait_for(lambda: _stream_last_seq(urls) > 300, 30), log.read_text()[-3000:]
            leader = _stream_leader(urls)
            victim = next(s for s in servers if s.name == leader)
            victim.stop(signal.SIGKILL)
            alive = [s.url for s in servers if s is not victim]
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(2500,)], 60), log.read_text()[-3000:]
            ids = _stored_ids(database)
            assert wait_stream_count(alive, len(ids), 60), log.read_text()[-3000:]
        messages = stream_messages(alive)
    _assert_exactly_once(messages, ids)


def _stream_leader(urls: list[str]) -> str:
    import nats

    async def leader() -> str:
        nc = await nats.connect(servers=urls)
        try:
            return (await nc.jetstream().stream_info("SKYWIRE")).cluster.leader
        finally:
            await nc.close()

    return run_asyncio(leader())


def test_unreachable_nats_or_too_many_replicas_is_reported_and_ingestion_runs(
        database, tmp_path):
    log = tmp_path / "service.log"
    nobody = f"nats://127.0.0.1:{free_port()}"
    with nats_server(tmp_path) as nats, replay_process(PDS_CAPTURE) as relay:
        bad = {"unreachable": {"SKYWIRE_NATS_URL": nobody},
               "replicas": {"SKYWIRE_NATS_URL": nats.url, "SKYWIRE_NATS_REPLICAS": "3"}}
        reports = {}
        for name, extra in bad.items():
            env = service_env(database, relay, tmp_path, **extra)
            with service_process(env, log):
                assert wait_for(lambda port=env["PORT"]: (h := _health(port)[1]) and
                                h["publisher"]["errors"] > 0, 30), log.read_text()[-3000:]
                # Ingestion runs all the same: the relay's capture reaches the log.
                assert wait_for(lambda: query(database, "SELECT last_seq FROM "
                                              "firehose_cursor") == [(359,)], 30)
                status, health = _health(env["PORT"])
                reports[name] = (status, health["publisher"])
    status, unreachable = reports["unreachable"]
    assert status == 200 and unreachable["nats_connected"] is False
    assert "no NATS server reachable" in unreachable["last_error"]
    assert nobody in unreachable["last_error"]
    status, replicas = reports["replicas"]
    assert status == 200 and replicas["published"] == 0
    assert "3 replica(s)" in replicas["last_error"]
    assert "SKYWIRE_NATS_REPLICAS must not exceed" in replicas["last_error"]
    text = log.read_text()
    assert "no NATS server reachable" in text and "SKYWIRE_NATS_REPLICAS" in text


async def _append(url: str, frames: list[bytes], indexed_at: datetime) -> int:
    rows = [r for f in frames for r in decode_frame(f).rows]
    async with trio_asyncio.open_loop(), writer.connect(url) as store:
        cursor = await store.claim_cursor("ws://fanout-test")
        return await store.append(rows, None, cursor.last_id, indexed_at)


def test_new_stream_starts_within_max_age_and_retention_gaps_are_skipped(database, tmp_path):
    frames = relay_frames()  # 150 frames
    now = datetime.now(UTC)
    trio.run(_append, database, frames[:50], now - timedelta(days=2))
    old = _last_id(database)
    trio.run(_append, database, frames[50:100], now)
    recent = _last_id(database)
    log = tmp_path / "publisher.log"
    with nats_server(tmp_path) as nats:
        env = service_env(database, "ws://127.0.0.1:9", tmp_path, SKYWIRE_NATS_URL=nats.url,
                          SKYWIRE_ROLE="publisher")
        # A new stream gets what it would hold had it always been fed: its max age (1 day).
        with service_process(env, log):
            assert wait_stream_count(nats.url, recent - old, 30), log.read_text()[-3000:]
        assert _published_ids(nats.url) == list(range(old + 1, recent + 1))
        # Retention drops events before they are published: skipped, counted, said.
        trio.run(_append, database, frames[100:], now)
        query(database, "DELETE FROM firehose_events WHERE id <= $1".replace("$1", "%s"),
              recent + 20)
        with service_process(env, log):
            assert wait_stream_count(nats.url, _last_id(database) - old - 20, 30), \
                log.read_text()[-3000:]
            _, health = _health(env["PORT"])
        ids = _published_ids(nats.url)
    assert ids == [*range(old + 1, recent + 1), *range(recent + 21, _last_id(database) + 1)]
    assert health["publisher"]["skipped"] == 20 and health["publisher"]["lag_events"] == 0
    assert query(database, "SELECT last_id, skipped FROM publisher_cursor") == [
        (_last_id(database), 20)]
    assert f"events {recent + 1}-{recent + 20} were dropped from the log" in log.read_text()


def _published_ids(url: str) -> list[int]:
    return [int(headers["Skywire-Id"]) for _, headers, _ in stream_messages(url)]
