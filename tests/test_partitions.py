"""Partition lifecycle with an injectable clock, against a real database and live ingest."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import trio
import trio_asyncio

from skywire_trio import types
from skywire_trio.config import ConfigError, Settings, from_env
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import writer
from skywire_trio.service import serve

from .faults import wait_until
from .support import ROOT, query, relay_frames, renumbered
from .test_api import SALT, _make_token


@dataclasses.dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def _partitions(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                                     "ON c.oid = i.inhrelid "
                                     "WHERE i.inhparent = 'firehose_events'::regclass")}


def _rows_by_partition(url: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, ident in query(url, "SELECT tableoid::regclass::text, id FROM firehose_events "
                                  "ORDER BY id"):
        out.setdefault(name, []).append(ident)
    return out


def _settings(url: str, port: int, tmp_path, **overrides: object) -> Settings:
    return dataclasses.replace(Settings(
        database_url=url, relay_url=f"ws://127.0.0.1:{port}", port=0, api_token_salt=SALT,
        deadletter_dir=tmp_path / "dl", backoff_min=0.05, backoff_max=0.2,
        retention_days=2, premake_days=2, partition_interval=0.1), **overrides)


def test_configuration_refuses_short_retention_and_no_premake():
    for env, name in (({"SKYWIRE_RETENTION_DAYS": "0"}, "SKYWIRE_RETENTION_DAYS"),
                      ({"SKYWIRE_PREMAKE_DAYS": "0"}, "SKYWIRE_PREMAKE_DAYS")):
        try:
            from_env(env)
        except ConfigError as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"{env} was accepted")
    result = subprocess.run([sys.executable, "-m", "skywire_trio"], cwd=ROOT, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "SKYWIRE_RETENTION_DAYS": "0"})
    assert result.returncode == 2 and "SKYWIRE_RETENTION_DAYS" in result.stderr


async def test_days_pass_window_moves_expired_days_drop_ingest_continues(database, nursery,
                                                                         tmp_path):
    frames = renumbered(relay_frames(), 3000)
    expected_rows = sum(len(decode_frame(f).rows) for f in frames)
    clock = FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    port = await nursery.start(serve_replay, frames, "127.0.0.1", 0, 400.0)  # ~7.5 s of feed
    settings = _settings(database, port, tmp_path)
    await nursery.start(serve, settings, writer.connect, clock)

    def last_id() -> int:
        return query(database, "SELECT last_id FROM firehose_cursor")[0][0]

    progress = [last_id()]
    history: dict[str, list[int]] = {}
    for step in range(5):
        await wait_until(lambda: last_id() > progress[-1], 10)  # ingest is committing
        progress.append(last_id())
        snapshot = _rows_by_partition(database)
        history.update(snapshot)
        clock.now += timedelta(days=1)
        today = clock.now.date()
        window = {types.partition_name(today + timedelta(days=n)) for n in range(3)}
        await wait_until(lambda w=window: w <= _partitions(database), 10)
        cutoff = clock.now - timedelta(days=2)
        await wait_until(lambda c=cutoff: all(
            types.day_start(datetime.strptime(p[17:], "%Y%m%d").date() + timedelta(days=1)) > c
            for p in _partitions(database) if p != "firehose_events_default"), 10)
        # The surviving partitions hold exactly the rows they held before the pass.
        now_rows = _rows_by_partition(database)
        for name, ids in snapshot.items():
            if name in now_rows:
                assert now_rows[name][:len(ids)] == ids, (step, name)
    # Ingestion committed during every simulated day.
    assert progress == sorted(set(progress)) and len(progress) == 6
    await wait_until(lambda: last_id() == expected_rows, 30)
    remaining = _rows_by_partition(database)
    assert "firehose_events_default" not in remaining
    # Exactly the expired days are gone: 2026-03-01 .. 03-03 with a 2-day retention at 03-06.
    names = _partitions(database)
    for day in range(1, 4):
        assert f"firehose_events_p202603{day:02}" not in names
    assert {"firehose_events_p20260304", "firehose_events_p20260305",
            "firehose_events_p20260306", "firehose_events_p20260308"} <= names
    # What remains is a gapless run of ids ending at the last committed one.
    ids = sorted(i for v in remaining.values() for i in v)
    assert ids == list(range(ids[0], expected_rows + 1))
    for name, ids_then in history.items():
        if name in remaining:
            assert remaining[name][:len(ids_then)] == ids_then


async def test_default_partition_rows_are_reported_and_moved(database, nursery, tmp_path):
    port = await nursery.start(serve_replay, [])
    settings = _settings(database, port, tmp_path, premake_days=1, partition_interval=3600)
    running = await nursery.start(serve, settings)
    # Force rows into the default partition: a commit stamped 30 days ahead (clock skew).
    skewed = datetime.now(UTC) + timedelta(days=30)
    rows = [r for f in relay_frames()[:20] for r in decode_frame(f).rows]
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        cursor = await store.claim_cursor(settings.subscribe_url)
        await store.append(rows, None, cursor.last_id, skewed)
    before = query(database, "SELECT id, seq, rkey, cid FROM firehose_events ORDER BY id")
    assert query(database, "SELECT count(*) FROM firehose_events_default") == [(len(rows),)]
    await wait_until(lambda: running.stats.upstream_reached, 10)  # else it is "connecting"
    async with httpx.AsyncClient(base_url=running.api_url) as client:
        async def health_now() -> dict:
            return (await client.get("/health")).json()

        # /health is answered from state the service refreshes: wait for the probe to see it.
        with trio.fail_after(30):
            while (health := await health_now())["default_partition_rows"] != len(rows):
                await trio.sleep(0.2)
        assert health["default_partition_rows"] == len(rows)
        assert health["status"] == "ok"  # an alarm, not an outage
        assert health["partitions"]["default_rows"] == len(rows)
        assert any(f"{len(rows)} row(s) in firehose_events_default" in alarm
                   for alarm in health["partitions"]["alarms"])
        token = _make_token(database, "ops")
        listing = (await client.get("/partitions",
                                    headers={"Authorization": f"Bearer {token}"})).json()
        default = [p for p in listing["partitions"] if p["default"]]
        assert default[0]["name"] == "firehose_events_default"
        assert default[0]["rows_estimate"] == len(rows)
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": database}
    listed = await trio.run_process([sys.executable, "-m", "skywire_trio", "partitions", "list"],
                                    cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True)
    lines = listed.stdout.decode().splitlines()
    # An alarm in either mode, in the listing and in /health.
    assert any(x.startswith(f"ALARM: {len(rows)} row(s) in firehose_events_default")
               for x in lines), lines
    header = lines.index(next(x for x in lines if x.startswith("name ")))
    assert lines[header].split() == ["name", "from", "to", "rows_estimate", "bytes", "current",
                                     "default", "archive"]
    line = [x for x in lines[header:] if "firehose_events_default" in x][0]
    assert line.split()[1:4] == ["-", "-", str(len(rows))] and line.split()[-2:] == ["True", "-"]
    listed = await trio.run_process([sys.executable, "-m", "skywire_trio", "partitions", "list",
                                     "--json"], cwd=ROOT, env=env, capture_stdout=True,
                                    capture_stderr=True)
    entries = [json.loads(x) for x in listed.stdout.decode().splitlines()]
    assert entries[-1]["default"] and entries[-1]["rows_estimate"] == len(rows)
    assert "ALARM" in listed.stderr.decode()
    done = await trio.run_process([sys.executable, "-m", "skywire_trio", "partitions",
                                   "maintain"], cwd=ROOT, env=env, capture_stdout=True,
                                  capture_stderr=True)
    out = done.stdout.decode()
    assert f"moved {len(rows)} row(s)" in out and "0 left there" in out
    assert types.partition_name(skewed.date()) in out
    assert query(database, "SELECT count(*) FROM firehose_events_default") == [(0,)]
    assert query(database, "SELECT id, seq, rkey, cid FROM firehose_events ORDER BY id") == before
    moved_to = {r[0] for r in query(database, "SELECT DISTINCT tableoid::regclass::text "
                                              "FROM firehose_events")}
    assert moved_to == {types.partition_name(skewed.date())}


async def test_paging_across_a_drop_says_events_were_skipped(database, nursery, tmp_path):
    frames = renumbered(relay_frames(), 600)
    # Rate-limited (~3 s of feed) so that events keep arriving after the day is dropped.
    port = await nursery.start(serve_replay, frames, "127.0.0.1", 0, 200.0)
    clock = FakeClock(datetime.now(UTC) - timedelta(days=1))
    running = await nursery.start(serve, _settings(database, port, tmp_path, retention_days=1,
                                                   partition_interval=0.1),
                                  writer.connect, clock)
    await wait_until(lambda: query(database, "SELECT last_id FROM firehose_cursor")[0][0] >= 100,
                     10)
    token = _make_token(database, "reader")
    async with httpx.AsyncClient(base_url=running.api_url,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        first = (await client.get("/events", params={"limit": 50})).json()
        cursor = first["cursor"]
        assert cursor == 50 and "skipped" not in first
        # Everything so far was stamped "yesterday"; let a day pass and retention drop it.
        old_day = clock.now.date()
        old_max = query(database, "SELECT max(id) FROM firehose_events")[0][0]
        clock.now += timedelta(days=2)
        await wait_until(lambda: types.partition_name(old_day) not in _partitions(database), 10)
        await wait_until(lambda: query(database, "SELECT min(id) FROM firehose_events")[0][0]
                         is not None, 20)
        oldest = query(database, "SELECT min(id) FROM firehose_events")[0][0]
        assert oldest > old_max >= cursor
        page = (await client.get("/events", params={"since": cursor, "limit": 50})).json()
        assert page["skipped"] == oldest - cursor - 1
        assert page["events"][0]["id"] == oldest
        ids = [e["id"] for e in page["events"]]
        assert ids == list(range(oldest, oldest + len(ids)))
