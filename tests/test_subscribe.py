"""GET /subscribe against the real service and database: Jetstream's protocol, replay by
time and by id, live events, scopes, limits and errors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import pytest
import trio
import trio_asyncio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from skywire_trio import types
from skywire_trio.api import subscribe
from skywire_trio.config import Settings
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import tokens as token_store
from skywire_trio.log import writer
from skywire_trio.log.batcher import utc_now
from skywire_trio.service import serve

from .faults import wait_until
from .support import pds_frames, query, relay_frames, renumbered
from .test_api import SALT, _make_token, _walk

JETSTREAM_KINDS = {"event_type": ["commit", "identity", "account"]}


@dataclasses.dataclass
class Service:
    http: str
    database: str
    tokens: dict[str, str]

    def url(self, as_token: str | None = "all", **params: object) -> str:
        """The /subscribe URL with these query parameters (lists repeat), ``as_token``'s."""
        if as_token is not None:
            params["token"] = self.tokens[as_token]
        query_string = urlencode(params, doseq=True)
        return self.http.replace("http://", "ws://") + "/subscribe?" + query_string

    def client(self, token: str = "all") -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, timeout=40,
                                 headers={"Authorization": f"Bearer {self.tokens[token]}"})


async def start_service(database: str, nursery: trio.Nursery, tmp_path: object,
                        **settings: object) -> Service:
    """The service in process, fed the PDS and relay captures, its log spread over two days."""
    frames = pds_frames() + relay_frames()
    total_rows = sum(len(decode_frame(f).rows) for f in frames)
    relay_port = await nursery.start(serve_replay, frames)
    running = await nursery.start(serve, Settings(
        database_url=database, relay_url=f"ws://127.0.0.1:{relay_port}", port=0,
        api_token_salt=SALT, deadletter_dir=tmp_path / "dl", backoff_min=0.05,
        backoff_max=0.2, **settings))
    await wait_until(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                     == [(total_rows,)], 30)
    # Ids up to 250 a day earlier: a time cursor has two days to choose from.
    yesterday = (utc_now() - timedelta(days=1)).date()
    query(database, f"CREATE TABLE {types.partition_name(yesterday)} PARTITION OF "
                    f"firehose_events FOR VALUES FROM ('{types.day_start(yesterday)}') TO "
                    f"('{types.day_start(yesterday + timedelta(days=1))}')")
    query(database, "UPDATE firehose_events SET indexed_at = indexed_at - interval '1 day' "
                    "WHERE id <= 250")
    tokens = {
        "all": _make_token(database, "all"),
        "posts": _make_token(database, "posts", collections=["app.bsky.feed.post"]),
        "graph": _make_token(database, "graph", collections=["app.bsky.graph.*"],
                             event_types=["commit"]),
        "syncs": _make_token(database, "syncs", event_types=["sync"]),
        "slow": _make_token(database, "slow", rate=3),
        "revoked": _make_token(database, "revoked"),
    }
    assert token_store.revoke_token(database, "revoked")
    return Service(running.api_url, database, tokens)


@pytest.fixture
async def service(database, nursery, tmp_path):
    return await start_service(database, nursery, tmp_path)


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(url, message_queue_size=64) as ws:
        yield ws


async def receive_until(ws: WebSocketConnection, last_id: int, timeout: float = 20
                        ) -> list[dict]:
    """Messages, parsed, until the one with ``last_id`` (fails after ``timeout``)."""
    received = []
    with trio.fail_after(timeout):
        while not received or received[-1]["id"] < last_id:
            received.append(json.loads(await ws.get_message()))
    return received


async def nothing_arrives(ws: WebSocketConnection, seconds: float) -> None:
    with trio.move_on_after(seconds):
        message = await ws.get_message()
        raise AssertionError(f"unexpected message {message[:200]}")


async def events_answer(service: Service, token: str = "all", **filters: object) -> list[dict]:
    """What /events answers for these filters, all pages."""
    async with service.client(token) as client:
        return await _walk(client, 1000, **filters)


async def commit_rows(database: str, frames: list[bytes]) -> int:
    """Commit the frames' rows as one batch through the writer; returns the new head."""
    rows = [r for f in frames for r in decode_frame(f).rows]
    last_id = query(database, "SELECT last_id FROM firehose_cursor")[0][0]
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        return await store.append(rows, None, last_id, utc_now())


def some_dids(events: list[dict], count: int) -> list[str]:
    seen: dict[str, int] = {}
    for event in events:
        if event["kind"] == "commit":
            seen[event["did"]] = seen.get(event["did"], 0) + 1
    return sorted(seen, key=lambda did: -seen[did])[:count]


# --------------------------------------------------------------------------- Jetstream


async def test_jetstream_client_gets_what_events_answers(service):
    everything = await events_answer(service, **JETSTREAM_KINDS)
    dids = some_dids(everything, 3)
    combos = [
        ({}, {}),
        ({"wantedCollections": "app.bsky.feed.post"}, {"collection": "app.bsky.feed.post"}),
        ({"wantedCollections": ["app.bsky.graph.*", "app.bsky.feed.like"]},
         {"collection": ["app.bsky.graph.*", "app.bsky.feed.like"]}),
        ({"wantedDids": dids}, {"repo": dids}),
        ({"wantedCollections": "app.bsky.feed.*", "wantedDids": dids[:1]},
         {"collection": "app.bsky.feed.*", "repo": dids[:1]}),
    ]
    for wanted, filters in combos:
        expected = await events_answer(service, **filters, **JETSTREAM_KINDS)
        assert len(expected) > 5, filters
        # cursor=1: replay from the first event at or after 1 us past the epoch.
        async with connect(service.url(cursor=1, **wanted)) as ws:
            assert await receive_until(ws, expected[-1]["id"]) == expected, wanted
    # Jetstream's kinds only: the log also holds sync events, which /subscribe leaves out.
    assert len(everything) < len(await events_answer(service))
    assert {e["kind"] for e in everything} == {"commit", "identity", "account"}


async def test_require_hello_holds_output_until_options_update(service):
    expected = await events_answer(service, collection="app.bsky.graph.*", **JETSTREAM_KINDS)
    # As clients in the wild do: requireHello, a cursor, then options_update.
    async with connect(service.url(requireHello="true", cursor=1)) as ws:
        await nothing_arrives(ws, 0.5)
        await ws.send_message(json.dumps({"type": "options_update", "payload": {
            "wantedCollections": ["app.bsky.graph.*"], "wantedDids": [],
            "maxMessageSizeBytes": 0}}))
        assert await receive_until(ws, expected[-1]["id"]) == expected


async def test_options_update_changes_filters_on_a_live_connection(service):
    frames = relay_frames()
    head = query(service.database, "SELECT last_id FROM firehose_cursor")[0][0]
    async with connect(service.url(since=head, wantedCollections="app.bsky.feed.post")) as ws:
        first = await commit_rows(service.database, frames[:75])
        posts = await events_answer(service, collection="app.bsky.feed.post",
                                    **JETSTREAM_KINDS)
        expected = [e for e in posts if head < e["id"] <= first]
        assert await receive_until(ws, expected[-1]["id"]) == expected
        await ws.send_message(json.dumps({"type": "options_update", "payload": {
            "wantedCollections": ["app.bsky.feed.like"]}}))
        await nothing_arrives(ws, 1.0)
        second = await commit_rows(service.database, frames[75:])
        likes = await events_answer(service, collection="app.bsky.feed.like",
                                    **JETSTREAM_KINDS)
        expected = [e for e in likes if first < e["id"] <= second]
        assert len(expected) > 10
        assert await receive_until(ws, expected[-1]["id"]) == expected


async def test_replay_by_time_and_by_id_starts_at_the_right_event(service):
    events = await events_answer(service, **JETSTREAM_KINDS)
    by_id = {e["id"]: e for e in events}
    day_two = next(e for e in events if e["id"] > 250)
    assert day_two["time_us"] - by_id[250 if 250 in by_id else 249]["time_us"] > 80_000e6
    middle = events[len(events) // 3]
    for cursor in (1, middle["time_us"], middle["time_us"] + 1, day_two["time_us"] - 1,
                   day_two["time_us"]):
        expected = [e for e in events if e["time_us"] >= cursor]
        async with connect(service.url(cursor=cursor)) as ws:
            got = await receive_until(ws, expected[0]["id"])
            assert got == expected[:1], cursor
    for since in (0, 100, 250, middle["id"]):
        expected = [e for e in events if e["id"] > since]
        async with connect(service.url(since=since)) as ws:
            assert await receive_until(ws, expected[2]["id"]) == expected[:3], since


async def test_live_events_arrive_and_a_future_cursor_means_live(service):
    frame = relay_frames()[0]
    now_us = int(utc_now().timestamp() * 1e6)
    async with connect(service.url()) as plain, \
            connect(service.url(requireHello="true", cursor=now_us + 3_600_000_000)) as hello:
        await hello.send_message(json.dumps({"type": "options_update", "payload": {}}))
        await nothing_arrives(plain, 0.3)
        head = await commit_rows(service.database, [frame])
        committed = trio.current_time()
        for ws in (plain, hello):
            [event] = await receive_until(ws, head, timeout=5)
            assert event["id"] == head and event["commit"]["rkey"] == \
                decode_frame(frame).rows[0].rkey
        assert trio.current_time() - committed < 3
    # A reconnecting client sends the last time_us it saw: events of that time come again.
    async with connect(service.url(cursor=event["time_us"])) as ws:
        assert (await receive_until(ws, head, timeout=5))[0]["time_us"] >= event["time_us"]


async def test_wanted_kinds_and_message_size(service):
    syncs = await events_answer(service, event_type="sync")
    assert syncs
    async with connect(service.url(since=0, wantedKinds="sync")) as ws:
        assert await receive_until(ws, syncs[-1]["id"]) == syncs
    posts = await events_answer(service, collection="app.bsky.feed.post", **JETSTREAM_KINDS)
    async with connect(service.url(since=0, wantedCollections="app.bsky.feed.post")) as ws:
        with trio.fail_after(20):
            texts = [await ws.get_message() for _ in posts]
    assert [json.loads(t) for t in texts] == posts
    # Events larger than maxMessageSizeBytes are left out, as Jetstream does.
    cap = sorted(len(t.encode()) for t in texts)[len(texts) // 2]
    small = [json.loads(t) for t in texts if len(t.encode()) <= cap]
    assert 0 < len(small) < len(texts)
    async with connect(service.url(since=0, wantedCollections="app.bsky.feed.post",
                                   maxMessageSizeBytes=cap)) as ws:
        assert await receive_until(ws, small[-1]["id"]) == small


async def test_token_scopes_narrow_filters_as_events_does(service):
    for token in ("posts", "graph", "syncs"):
        expected = await events_answer(service, token)
        if token == "posts":  # Jetstream's kinds by default
            expected = [e for e in expected if e["kind"] in ("commit", "identity", "account")]
        kinds = {"wantedKinds": "sync"} if token == "syncs" else {}
        async with connect(service.url(token, since=0, **kinds)) as ws:
            assert await receive_until(ws, expected[-1]["id"]) == expected, token
    async with connect(service.url("posts", since=0)) as ws:
        await ws.send_message(json.dumps({"type": "options_update", "payload": {
            "wantedCollections": ["app.bsky.feed.like"]}}))
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(10):
                while True:
                    await ws.get_message()
    assert closed.value.reason.code == subscribe.FORBIDDEN
    assert closed.value.reason.reason.startswith("out_of_scope: collection app.bsky.feed.like")


# --------------------------------------------------------------------------- errors


async def rejected(url: str, headers: list[tuple[str, str]] | None = None
                   ) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as caught:
        async with open_websocket_url(url, extra_headers=headers):
            pass
    return caught.value


BAD_PARAMETERS = [
    ({"wantedCollections": "not an nsid"}, "is not an NSID"),
    ({"wantedDids": "did:bad"}, "is not a DID"),
    ({"wantedCollections": [f"app.bsky.c{i}.x" for i in range(101)]}, "at most 100"),
    ({"cursor": "yesterday"}, "cursor must be an integer"),
    ({"cursor": "1", "since": "1"}, "not both"),
    ({"since": "-1"}, "since must be an integer"),
    ({"maxMessageSizeBytes": "4294967296"}, "maxMessageSizeBytes"),
    ({"requireHello": "yes"}, "requireHello must be true or false"),
    ({"compress": "true"}, "not supported"),
    ({"wantedKinds": "nope"}, "wantedKinds must be among"),
    ({"limit": "5"}, "unknown parameter 'limit'"),
]


async def test_bad_parameters_get_400_before_the_upgrade(service):
    for params, message in BAD_PARAMETERS:
        answer = await rejected(service.url(**params))
        assert answer.status_code == 400
        body = json.loads(answer.body)
        assert body["error"] == "bad_request" and message in body["message"], body
    head = query(service.database, "SELECT last_id FROM firehose_cursor")[0][0]
    answer = await rejected(service.url(since=head + 1))
    assert (answer.status_code, json.loads(answer.body)["error"]) == (400, "since_beyond_head")
    async with connect(service.url(since=head)) as ws:  # the head itself: live from there
        await nothing_arrives(ws, 0.3)


async def test_bad_tokens_scope_escapes_and_rates_get_http_errors(service):
    cases = [
        (service.url(None), None, 401, "missing_token"),
        (service.url(None, token="nope"), None, 401, "malformed_token"),
        (service.url(None, token="swt_" + "A" * 43), None, 401, "unknown_token"),
        (service.url("revoked"), None, 401, "revoked_token"),
        (service.url(None), [("Authorization", "Basic x")], 401, "malformed_token"),
        (service.url("posts", wantedCollections="app.bsky.feed.like"), None, 403,
         "out_of_scope"),
        (service.url("graph", wantedKinds="identity"), None, 403, "out_of_scope"),
        (service.url("syncs"), None, 403, "out_of_scope"),  # none of Jetstream's kinds
    ]
    for url, headers, status, code in cases:
        answer = await rejected(url, headers)
        assert (answer.status_code, json.loads(answer.body)["error"]) == (status, code), url
    # The header works as well as ?token=.
    header = [("Authorization", f"Bearer {service.tokens['all']}")]
    async with open_websocket_url(service.url(None, since=0), extra_headers=header) as ws:
        assert json.loads(await ws.get_message())["id"] == 1
    # Connections count against the token's rate (3/s here).
    statuses = []
    for _ in range(6):
        try:
            async with connect(service.url("slow")):
                statuses.append(101)
        except ConnectionRejected as exc:
            statuses.append(exc.status_code)
            assert dict(exc.headers)[b"retry-after"] == b"1"
    assert 101 in statuses and 429 in statuses


async def closed_with(ws: WebSocketConnection, timeout: float = 10) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        with trio.fail_after(timeout):
            while True:
                await ws.get_message()
    return closed.value.reason.code, closed.value.reason.reason


async def test_bad_messages_after_the_upgrade_get_close_codes(service):
    update = {"type": "options_update", "payload": {}}
    cases = [
        ("{not json", subscribe.BAD_REQUEST, "bad_request: a client message must be JSON"),
        ("[1]", subscribe.BAD_REQUEST, "bad_request: a client message must be a JSON object"),
        (json.dumps({**update, "payload": {"wantedDids": "did:plc:x"}}),
         subscribe.BAD_REQUEST, "bad_request: wantedCollections and wantedDids must be lists"),
        (json.dumps({**update, "payload": {"wantedDids": [f"did:plc:{i:024d}"
                                                          for i in range(10_001)]}}),
         subscribe.BAD_REQUEST, "bad_request: at most 10000 wantedDids"),
        (json.dumps({**update, "payload": {"maxMessageSizeBytes": -1}}),
         subscribe.BAD_REQUEST, "bad_request: maxMessageSizeBytes must be an integer"),
        (json.dumps({**update, "payload": {"wantedCollections": ["x" * 20]}}),
         subscribe.BAD_REQUEST, "bad_request: wantedCollections 'xxxxxxxxxxxxxxxxxxxx' is "),
        (json.dumps({**update, "payload": {"wantedCollections": ["a" * (1 << 20)]}}),
         subscribe.MESSAGE_TOO_BIG, "message_too_big: client messages are limited to"),
    ]
    for message, code, reason in cases:
        async with connect(service.url(requireHello="true")) as ws:
            await ws.send_message(message)
            got = await closed_with(ws)
            assert got[0] == code and got[1].startswith(reason), (message[:80], got)
    # Unknown message types and binary messages are ignored, as on Jetstream.
    async with connect(service.url(since=0)) as ws:
        await ws.send_message(json.dumps({"type": "something_else"}))
        await ws.send_message(b"\x00\x01")
        assert [e["id"] for e in await receive_until(ws, 3)] == [1, 2, 3]
    # A valid update with 10,000 DIDs is accepted.
    dids = [f"did:plc:{i:024d}" for i in range(10_000)]
    async with connect(service.url(requireHello="true")) as ws:
        await ws.send_message(json.dumps({**update, "payload": {"wantedDids": dids}}))
        await nothing_arrives(ws, 0.5)
        await ws.send_message(json.dumps(update))
        head = await commit_rows(service.database, relay_frames()[:1])
        assert (await receive_until(ws, head, timeout=5))[-1]["id"] == head
    # Option updates count against the token's rate (3/s here).
    async with connect(service.url("slow", requireHello="true")) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(10):
                for _ in range(8):
                    await ws.send_message(json.dumps(update))
                while True:
                    await ws.get_message()
        assert closed.value.reason.code == subscribe.RATE_LIMITED
        assert closed.value.reason.reason.startswith("rate_limited: ")
    # None of it hurt the service.
    async with httpx.AsyncClient(base_url=service.http) as client:
        assert (await client.get("/health")).status_code == 200
    async with connect(service.url(since=0)) as ws:
        assert json.loads(await ws.get_message())["id"] == 1


# --------------------------------------------------------------------------- slow clients


async def metric(service: Service, name: str) -> float:
    async with httpx.AsyncClient(base_url=service.http) as client:
        text = (await client.get("/metrics")).text
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith(name + " ")))


async def test_slow_subscribers_fall_back_to_pages_or_are_closed(database, nursery, tmp_path):
    service = await start_service(database, nursery, tmp_path, subscribe_buffer=2,
                                  subscribe_stall_seconds=3.0, subscribe_max_lag=4.0,
                                  subscribe_token_recheck=0.3)
    service.tokens["doomed"] = _make_token(database, "doomed")
    start = query(database, "SELECT last_id FROM firehose_cursor")[0][0]
    rows = [r for f in renumbered(relay_frames(), 1200, 10**9) for r in decode_frame(f).rows]
    got: dict[str, list[dict]] = {"pauser": [], "slow": []}
    slow_closed = trio.Event()

    async def read(ws: WebSocketConnection, name: str, pause: float, interval: float) -> None:
        await trio.sleep(pause)
        try:
            while True:
                got[name].append(json.loads(await ws.get_message()))
                await trio.sleep(interval)
        except ConnectionClosed:
            slow_closed.set()

    async with connect(service.url(since=start)) as pauser, \
            connect(service.url(since=start)) as stalled, \
            connect(service.url(since=start)) as slow, \
            connect(service.url("doomed", since=start)) as doomed:
        assert token_store.revoke_token(database, "doomed")
        assert await closed_with(doomed, 5) == (subscribe.UNAUTHORIZED,
                                                "revoked_token: this token has been revoked")
        async with trio.open_nursery() as readers:
            readers.start_soon(read, pauser, "pauser", 0.8, 0)
            readers.start_soon(read, slow, "slow", 0, 0.01)
            # 120 commits of 10 events, as fast as the writer goes.
            async with trio_asyncio.open_loop(), writer.connect(database) as store:
                last_id = start
                for i in range(0, len(rows), 10):
                    last_id = await store.append(rows[i:i + 10], None, last_id, utc_now())
            expected = await events_answer(service, **JETSTREAM_KINDS)
            expected = [e for e in expected if e["id"] > start]
            with trio.fail_after(20):
                while len(got["pauser"]) < len(expected):
                    await trio.sleep(0.05)
            # The slow reader (~100 events/s) falls further and further behind the log.
            with trio.fail_after(20):
                await slow_closed.wait()
            readers.cancel_scope.cancel()
        code, reason = slow.closed.code, slow.closed.reason
        # The pauser's buffer overflowed while it paused: it went back to pages and still
        # got every event once, in order.
        assert got["pauser"] == expected
        assert await metric(service, "skywire_subscribe_fallbacks_total") >= 1
        assert (code, reason) == (subscribe.TOO_SLOW,
                                  "consumer_too_slow: more than 4 s behind the log")
        assert got["slow"] == expected[:len(got["slow"])]
        # The stalled one read nothing: closed; once it reads, it gets what was already in
        # its socket, in order, then the close frame.
        with trio.fail_after(10):
            while await metric(service, "skywire_subscribe_too_slow_total") < 2:
                await trio.sleep(0.1)
        buffered = []
        with pytest.raises(ConnectionClosed) as closed:
            with trio.fail_after(10):
                while True:
                    buffered.append(json.loads(await stalled.get_message()))
        assert (closed.value.reason.code, closed.value.reason.reason) == (
            subscribe.TOO_SLOW, "consumer_too_slow: nothing read for 3 s")
        assert 0 < len(buffered) < len(expected) and buffered == expected[:len(buffered)]
    assert await metric(service, "skywire_subscribers") == 0
