"""skywire_trio.client against the real service process: restarts, 429 storms, checkpoints,
trio, asyncio and blocking code."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import trio

from skywire_trio.client import (
    AsyncClient,
    Backoff,
    CallbackCheckpoint,
    Client,
    ClientError,
    FileCheckpoint,
    retry_after,
)

from .support import (
    PDS_CAPTURE,
    ROOT,
    query,
    replay_process,
    service_env,
    start_service,
    wait_for,
)
from .test_api import SALT, _make_token

EVENT_IDS = "SELECT id FROM firehose_events ORDER BY id"


@pytest.fixture
def live(database, tmp_path):
    """The service (a real process) with the PDS capture ingested; restartable."""
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, API_TOKEN_SALT=SALT)
        processes = [start_service(env, tmp_path / "service.log")]

        def restart() -> None:
            processes[-1].terminate()
            assert processes[-1].wait(15) == 0
            processes.append(start_service(env, tmp_path / "service.log"))

        assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                        == [(359,)], 30)
        try:
            yield f"http://127.0.0.1:{env['PORT']}", restart
        finally:
            processes[-1].terminate()
            assert processes[-1].wait(15) == 0


def _ids(database: str, where: str = "true") -> list[int]:
    return [i for (i,) in query(database, f"SELECT id FROM firehose_events WHERE {where} "
                                          "ORDER BY id")]


async def test_client_survives_a_service_restart(live, database, tmp_path):
    url, restart = live
    expected = _ids(database)
    token = _make_token(database, "restart")
    saved: list[int] = []

    async def save(cursor: int) -> None:  # an application's own (async) checkpoint
        await trio.sleep(0)
        saved.append(cursor)

    received, cursors = [], []
    async with AsyncClient(url, token, limit=10, wait=1,
                           backoff=Backoff(initial=0.1, maximum=0.5),
                           checkpoint=CallbackCheckpoint(save)) as client:
        async for page in client.pages():
            received += [e.id for e in page.events]
            cursors.append(page.cursor)
            if len(saved) == 15:
                # The service goes away mid-walk (SIGTERM, then a new process).
                await trio.to_thread.run_sync(restart)
            if received and received[-1] == expected[-1]:
                break
        assert client.stats.failures > 0  # it really met the restart
    assert received == expected
    # Saved after each handled page (not the last: the loop left while handling it).
    assert saved == cursors[:-1]


async def test_client_waits_out_a_429_storm_without_losing_or_repeating(live, database):
    url, _ = live
    expected = _ids(database, "collection = 'app.bsky.feed.post' OR "
                              "event_type IN ('identity', 'account')")
    token = _make_token(database, "stormy", rate=4)  # three clients share 4 requests/s
    results: list[tuple[list[int], int]] = []

    async def follow() -> None:
        async with AsyncClient(url, token, collections=["app.bsky.feed.post"], limit=40,
                               wait=0) as client:
            ids: list[int] = []
            async for event in client.events():
                ids.append(event.id)
                if event.id == expected[-1]:
                    break
            results.append((ids, client.stats.rate_limited))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(follow)
    assert [ids for ids, _ in results] == [expected] * 3
    assert sum(limited for _, limited in results) >= 3


def test_blocking_client_resumes_from_its_checkpoint_file(live, database, tmp_path):
    url, _ = live
    token = _make_token(database, "blocking")
    checkpoint = FileCheckpoint(tmp_path / "cursor.txt")
    posts = _ids(database, "collection = 'app.bsky.feed.post' AND event_type = 'commit'")
    first: list[int] = []
    with Client(url, token, collections=["app.bsky.feed.post"], event_types=["commit"],
                limit=25, checkpoint=checkpoint) as client:
        for page in client.pages():
            first += [e.id for e in page.events]
            if len(first) >= 100:
                break  # stop after a page: its cursor is not saved (not handled to the end)
    saved = checkpoint.load()
    assert len(first) == 100 and saved == first[74]  # the third page's cursor
    with Client(url, token, collections=["app.bsky.feed.post"], event_types=["commit"],
                limit=25, wait=0.5, checkpoint=checkpoint) as client:
        rest = []
        for event in client.events():
            assert event.kind == "commit" and event.commit is not None
            assert event.commit.collection == "app.bsky.feed.post"
            assert event.uri == f"at://{event.did}/app.bsky.feed.post/{event.commit.rkey}"
            assert event.raw["commit"]["rkey"] == event.commit.rkey
            rest.append(event.id)
            if event.id == posts[-1]:
                break
    # The page whose handling was interrupted comes again (at least once), nothing else.
    assert [i for i in first if i <= saved] + rest == posts


def test_asyncio_and_refusals(live, database):
    url, _ = live
    token = _make_token(database, "asyncio")
    identities = _ids(database, "event_type = 'identity'")

    async def under_asyncio() -> list[int]:
        async with AsyncClient(url, token, event_types=["identity"], limit=5) as client:
            ids = []
            async for event in client.events():
                assert event.body is not None and event.body["did"] == event.did
                ids.append(event.id)
                if event.id == identities[-1]:
                    return ids
        raise AssertionError("unreachable")

    assert asyncio.run(under_asyncio()) == identities
    # What retrying cannot fix is raised, not retried.
    with Client(url, token, collections=["not an nsid"]) as client, \
            pytest.raises(ClientError) as refused:
        client.next_page()
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    with Client(url, "swt_" + "A" * 43) as client, pytest.raises(ClientError) as refused:
        client.next_page()
    assert (refused.value.status, refused.value.code) == (401, "unknown_token")


def test_retry_after_and_backoff_rules():
    assert retry_after({"retry-after": "3"}) == 3.0
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=7), usegmt=True)
    assert retry_after({"retry-after": later}, now) == 7.0
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None
    backoff = Backoff(initial=1, maximum=8)
    delays = [backoff.next() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1 and all(4 <= d <= 8 for d in delays[4:])
    backoff.reset()
    assert backoff.next() <= 1


def test_client_imports_nothing_else_of_the_package():
    code = ("import sys, skywire_trio.client; "
            "print(sorted(m for m in sys.modules if m.startswith('skywire_trio')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    assert eval(loaded) == ["skywire_trio", "skywire_trio.client", "skywire_trio.client.aio",
                            "skywire_trio.client.checkpoint", "skywire_trio.client.events",
                            "skywire_trio.client.follow", "skywire_trio.client.sync"]
