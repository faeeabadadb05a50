"""The consumer API over real HTTP, against the real service and a real database."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import httpx
import pytest
import trio
import trio_asyncio

from skywire_trio import types
from skywire_trio.api import auth
from skywire_trio.config import Settings
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import tokens as token_store
from skywire_trio.log import writer
from skywire_trio.log.batcher import utc_now
from skywire_trio.service import serve

from .faults import wait_until
from .support import RELAY_EXPECTED, pds_frames, query, relay_frames

SALT = "test-salt"


@dataclasses.dataclass
class Api:
    url: str
    database: str
    tokens: dict[str, str]
    settings: Settings

    def client(self, token: str | None = "all") -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[token]}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=40)


def _make_token(database: str, name: str, rate: int = 100_000, **scope: list[str]) -> str:
    token = auth.new_token()
    token_store.create_token(database, name, auth.token_hash(SALT, token),
                             scope.get("collections", []), scope.get("event_types", []),
                             scope.get("repos", []), rate)
    return token


@pytest.fixture
async def api(database, nursery, tmp_path):
    frames = pds_frames() + relay_frames()
    total_rows = sum(len(decode_frame(f).rows) for f in frames)
    relay_port = await nursery.start(serve_replay, frames)
    settings = Settings(database_url=database, relay_url=f"ws://127.0.0.1:{relay_port}",
                        port=0, api_token_salt=SALT, deadletter_dir=tmp_path / "dl",
                        backoff_min=0.05, backoff_max=0.2)
    running = await nursery.start(serve, settings)
    await wait_until(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                     == [(total_rows,)], 30)
    # Spread the log over two days so that paging crosses a partition boundary.
    yesterday = (utc_now() - timedelta(days=1)).date()
    name = types.partition_name(yesterday)
    query(database, f"CREATE TABLE {name} PARTITION OF firehose_events FOR VALUES FROM "
                    f"('{types.day_start(yesterday).isoformat()}') TO "
                    f"('{types.day_start(yesterday + timedelta(days=1)).isoformat()}')")
    query(database, "UPDATE firehose_events SET indexed_at = indexed_at - interval '1 day' "
                    "WHERE id <= 250")
    tokens = {
        "all": _make_token(database, "all"),
        "posts": _make_token(database, "posts", collections=["app.bsky.feed.post"]),
        "graph": _make_token(database, "graph", collections=["app.bsky.graph.*"],
                             event_types=["commit"]),
        "slow": _make_token(database, "slow", rate=2),
        "revoked": _make_token(database, "revoked"),
    }
    assert token_store.revoke_token(database, "revoked")
    yield Api(running.api_url, database, tokens, settings)


async def _walk(client: httpx.AsyncClient, limit: int, **filters: object) -> list[dict]:
    events, since = [], 0
    while True:
        response = await client.get("/events", params={"since": since, "limit": limit, **filters})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["events"]) <= limit
        if not body["events"]:
            assert body["cursor"] == since
            return events
        assert body["cursor"] == body["events"][-1]["id"]
        events += body["events"]
        since = body["cursor"]


def _ids(database: str, where: str = "true") -> list[int]:
    return [i for (i,) in query(database, f"SELECT id FROM firehose_events WHERE {where} "
                                          "ORDER BY id")]


async def test_paging_returns_each_event_once_in_order(api):
    async with api.client() as client:
        everything = _ids(api.database)
        partitions = {p for (p,) in query(api.database, "SELECT DISTINCT tableoid::regclass::text "
                                                        "FROM firehose_events")}
        assert len(partitions) == 2  # the walk crosses a partition boundary
        for limit in range(1, 8):
            events = await _walk(client, limit)
            assert [e["id"] for e in events] == everything
        cases = [
            ({"collection": "app.bsky.feed.post"},
             "collection = 'app.bsky.feed.post' OR event_type IN ('identity', 'account')"),
            ({"collection": ["app.bsky.graph.*", "app.bsky.feed.like"], "event_type": "commit"},
             "(collection LIKE 'app.bsky.graph.%' OR collection = 'app.bsky.feed.like') "
             "AND event_type = 'commit'"),
            ({"event_type": ["identity", "account"]}, "event_type IN ('identity', 'account')"),
            ({"action": "delete", "event_type": "commit"}, "action = 'delete'"),
            ({"repo": "did:plc:hqvhxrowqbemo5e4wjnj6zao"},
             "repo = 'did:plc:hqvhxrowqbemo5e4wjnj6zao'"),
        ]
        for filters, where in cases:
            expected = _ids(api.database, where)
            assert expected, where
            for limit in (1, 3, 7):
                assert [e["id"] for e in await _walk(client, limit, **filters)] == expected


async def test_events_have_the_jetstream_shape(api):
    expected = {}
    for line in RELAY_EXPECTED.read_text().splitlines():
        event = json.loads(line)
        if event["kind"] == "commit":
            expected[(event["did"], event["commit"]["rkey"])] = event
    async with api.client() as client:
        events = await _walk(client, 1000)
    seen = 0
    for event in events:
        if event["kind"] == "commit" and (event["did"], event["commit"].get("rkey")) in expected:
            want = expected[(event["did"], event["commit"]["rkey"])]["commit"]
            assert event["commit"] == want
            assert isinstance(event["time_us"], int) and isinstance(event["seq"], int)
            seen += 1
    assert seen == 150


async def test_long_poll_wakes_on_commit_and_times_out(api):
    last_id = query(api.database, "SELECT last_id FROM firehose_cursor")[0][0]
    async with api.client() as client:
        started = trio.current_time()
        response = await client.get("/events", params={"since": last_id, "wait": 1})
        elapsed = trio.current_time() - started
        assert response.status_code == 200 and response.json() == {"events": [],
                                                                     "cursor": last_id}
        assert 0.9 <= elapsed < 2.5

        result: dict[str, object] = {}

        async def poll() -> None:
            response = await client.get("/events", params={"since": last_id, "wait": 20})
            result["body"] = response.json()
            result["at"] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.5)
            assert "body" not in result
            # A real batch commit through the writer (COPY + cursor + NOTIFY).
            row = decode_frame(relay_frames()[0]).rows[0]
            async with trio_asyncio.open_loop(), writer.connect(api.database) as store:
                await store.append([row], None, last_id, utc_now())
            committed = trio.current_time()
        assert [e["id"] for e in result["body"]["events"]] == [last_id + 1]
        assert result["at"] - committed < 0.3


@pytest.mark.parametrize("header, code", [
    (None, "missing_token"),
    ("Bearer", "malformed_token"),
    ("Basic abc", "malformed_token"),
    ("Bearer not-a-token", "malformed_token"),
    ("Bearer swt_" + "A" * 43, "unknown_token"),
])
async def test_bad_tokens_get_401(api, header, code):
    async with httpx.AsyncClient(base_url=api.url) as client:
        headers = {"Authorization": header} if header else {}
        for path in ("/events", "/partitions"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == code and response.json()["message"]


async def test_revoked_token_gets_401_immediately(api):
    async with api.client("revoked") as client:
        response = await client.get("/events")
        assert (response.status_code, response.json()["error"]) == (401, "revoked_token")
    token = _make_token(api.database, "short-lived")
    async with httpx.AsyncClient(base_url=api.url,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.get("/events")).status_code == 200
        assert token_store.revoke_token(api.database, "short-lived")
        assert (await client.get("/events")).status_code == 401


async def test_scopes(api):
    async with api.client("posts") as client:
        events = (await client.get("/events", params={"limit": 1000})).json()["events"]
        assert events and {e["kind"] for e in events} <= {"commit", "identity", "account"}
        assert {e["commit"]["collection"] for e in events if e["kind"] == "commit"} == {
            "app.bsky.feed.post"}
        for params in ({"collection": "app.bsky.feed.like"}, {"collection": "app.bsky.feed.*"}):
            response = await client.get("/events", params=params)
            assert (response.status_code, response.json()["error"]) == (403, "out_of_scope")
    async with api.client("graph") as client:
        ok = await client.get("/events", params={"collection": "app.bsky.graph.follow"})
        assert ok.status_code == 200
        assert {e["commit"]["collection"] for e in ok.json()["events"]} == {
            "app.bsky.graph.follow"}
        response = await client.get("/events", params={"event_type": "identity"})
        assert response.status_code == 403
        events = (await client.get("/events", params={"limit": 1000})).json()["events"]
        assert events and all(e["kind"] == "commit" and
                              e["commit"]["collection"].startswith("app.bsky.graph.")
                              for e in events)


async def test_rate_limit_answers_429_with_retry_after(api):
    async with api.client("slow") as client:
        statuses = [(await client.get("/events", params={"limit": 1})) for _ in range(4)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and limited[0].json()["error"] == "rate_limited"
    assert int(limited[0].headers["Retry-After"]) >= 1


async def test_no_plaintext_token_is_stored(api):
    dump = json.dumps(query(api.database, "SELECT * FROM api_tokens"), default=str)
    hashes = query(api.database, "SELECT encode(token_hash, 'hex') FROM api_tokens")
    for token in api.tokens.values():
        assert token not in dump and token[4:] not in dump
        assert (auth.token_hash(SALT, token).hex(),) in hashes


INJECTIONS = ["1; DROP TABLE firehose_events", "' OR '1'='1", "app.bsky.feed.post'--",
              "did:plc:x' OR 1=1 --", "commit' OR 'a'='a", "1 UNION SELECT * FROM api_tokens",
              "%", "_", "app.bsky.%", "app.\\_.*"]


async def test_sql_injection_attempts_are_harmless(api):
    count = len(_ids(api.database))
    async with api.client() as client:
        for name in ("since", "limit", "wait", "collection", "repo", "event_type", "action",
                     "x'; DROP TABLE api_tokens; --"):
            for value in INJECTIONS:
                response = await client.get("/events", params={name: value})
                assert response.status_code in (200, 400), (name, value, response.text)
                if response.status_code == 400:
                    assert response.json()["error"] == "bad_request"
                else:  # accepted values are data, never SQL: they match nothing here
                    assert response.json()["events"] == [] or name == "wait"
    assert len(_ids(api.database)) == count
    assert query(api.database, "SELECT count(*) FROM api_tokens")[0][0] >= 5


async def test_health_metrics_openapi(api):
    async with httpx.AsyncClient(base_url=api.url) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok" and body["upstream_connected"] is True
        assert body["last_id"] == query(api.database, "SELECT last_id FROM firehose_cursor")[0][0]
        metrics = (await client.get("/metrics")).text
        committed = [line for line in metrics.splitlines()
                     if line.startswith("skywire_events_committed_total ")]
        assert committed == [f"skywire_events_committed_total {len(_ids(api.database))}"]
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.") and "/events" in spec["paths"]
        missing = await client.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def _commit(database: str, rows: list, after_id: int) -> int:
    """Commit ``rows`` through the real writer (COPY + cursor + NOTIFY); the new last id."""
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        return await store.append(rows, None, after_id, utc_now())


def _row(collection: str) -> object:
    row = next(r for f in relay_frames() for r in decode_frame(f).rows
               if r.collection == collection)
    return row


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def test_long_polls_are_woken_only_by_a_commit_that_can_match(api):
    last_id = query(api.database, "SELECT last_id FROM firehose_cursor")[0][0]
    results: dict[str, list[int]] = {}

    async def poll(client: httpx.AsyncClient, name: str, collection: str) -> None:
        response = await client.get("/events", params={"since": last_id, "wait": 20,
                                                        "collection": collection})
        results[name] = [e["id"] for e in response.json()["events"]]

    async with api.client() as client, trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(poll, client, f"never{n}", "app.bsky.graph.block")
        nursery.start_soon(poll, client, "likes", "app.bsky.feed.like")
        with trio.fail_after(10):
            while _metric((await client.get("/metrics")).text,
                          "skywire_long_polls_waiting") < 21:
                await trio.sleep(0.1)
        metrics = (await client.get("/metrics")).text
        woken_before = _metric(metrics, "skywire_long_poll_wakeups_total")
        # A post matches nobody: nobody is woken (nobody reads the log again).
        after_post = await _commit(api.database, [_row("app.bsky.feed.post")], last_id)
        await trio.sleep(0.5)
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "skywire_long_poll_wakeups_total") == woken_before
        assert results == {}
        # A like wakes exactly the long-poll that asked for likes.
        await _commit(api.database, [_row("app.bsky.feed.like")], after_post)
        await wait_until(lambda: "likes" in results, 5)
        assert results["likes"] == [after_post + 1]
        metrics = (await client.get("/metrics")).text
        assert _metric(metrics, "skywire_long_poll_wakeups_total") == woken_before + 1
        nursery.cancel_scope.cancel()
    async with api.client() as client:
        with trio.fail_after(5):  # the cancelled requests end; nothing stays registered
            while _metric((await client.get("/metrics")).text,
                          "skywire_long_polls_waiting") > 0:
                await trio.sleep(0.1)


async def test_a_long_poll_whose_token_is_revoked_gets_no_events(api):
    token = _make_token(api.database, "revoked-while-waiting")
    last_id = query(api.database, "SELECT last_id FROM firehose_cursor")[0][0]
    async with httpx.AsyncClient(base_url=api.url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        result: dict[str, httpx.Response] = {}

        async def poll() -> None:
            result["response"] = await client.get("/events",
                                                  params={"since": last_id, "wait": 20})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(0.5)
            assert token_store.revoke_token(api.database, "revoked-while-waiting")
            await _commit(api.database, [_row("app.bsky.feed.like")], last_id)
        response = result["response"]
        assert response.status_code == 401 and response.json()["error"] == "revoked_token"
        assert b"app.bsky.feed.like" not in response.content


async def test_failed_authentications_are_limited_per_address(api):
    bad = {"Authorization": "Bearer swt_" + "B" * 43}
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        responses = []
        started = trio.current_time()
        for n in range(40):  # malformed and missing tokens count too
            responses.append(await client.get("/events", headers=bad if n % 3 else {}))
        elapsed = trio.current_time() - started
        statuses = [r.status_code for r in responses]
        burst = auth.AUTH_FAILURE_BURST
        assert statuses[:burst] == [401] * burst and 429 in statuses
        # Past the burst, at most the refill rate reaches the database; the rest is refused.
        assert statuses.count(401) <= burst + auth.AUTH_FAILURE_RATE * elapsed + 1
        limited = responses[statuses.index(429)]
        assert limited.json()["error"] == "too_many_failures"
        retry = int(limited.headers["Retry-After"])
        assert 1 <= retry <= 5
        await trio.sleep(retry + 0.5)
        again = await client.get("/events", headers=bad)
        assert again.status_code == 401 and again.json()["error"] == "unknown_token"
        # Health needs no token and is never limited.
        assert (await client.get("/health")).status_code == 200
