"""The one supervision rule: transient faults retried quietly with backoff; anything else
logged with its traceback, counted, shown in /health and restarted after a longer backoff."""

from __future__ import annotations

import dataclasses
import logging
import re

import httpx
import jsonschema
import pytest
import trio

from skywire_trio.api.openapi import OPENAPI
from skywire_trio.config import Settings
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import batcher
from skywire_trio.service import serve
from skywire_trio.supervise import TaskHealth, supervise

from .faults import wait_until
from .support import expected_rows, query, relay_frames, renumbered, stored_rows

FAST = Settings(backoff_min=0.1, backoff_max=0.1, crash_backoff_min=2.0, crash_backoff_max=4.0,
                healthy_after=1000.0)


async def _supervised(body, settings: Settings = FAST, **kwargs) -> dict[str, TaskHealth]:
    tasks: dict[str, TaskHealth] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: supervise(
            "demo", body, settings, tasks, task_status=task_status, **kwargs))
        await trio.sleep(9.99)
        nursery.cancel_scope.cancel()
    return tasks


@pytest.mark.quick
async def test_transient_faults_are_one_warning_line_each_and_retried_soon(autojump_clock,
                                                                           caplog):
    async def body(ready):
        ready()
        raise ConnectionRefusedError("relay down")

    tasks = await _supervised(body)
    health = tasks["demo"]
    # 10 s at 0.05-0.1 s a retry: ~100-200 tries, and every one said so.
    assert 90 <= health.faults <= 200 and health.crashes == 0 and health.last_crash is None
    lines = [r for r in caplog.records if r.name == "skywire_trio.supervise"]
    assert len(lines) == health.faults
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert "ConnectionRefusedError: relay down" in lines[0].getMessage()


@pytest.mark.quick
async def test_a_bug_is_logged_with_its_traceback_counted_and_backed_off_longer(autojump_clock,
                                                                                caplog):
    async def body(ready):
        ready()
        return {}["missing"]  # a programming error, not a fault

    tasks = await _supervised(body)
    health = tasks["demo"]
    # Crash backoff 2 s doubling to 4 s (jitter: half to all): at most 1 + 10 / 1 runs, and
    # far fewer than the ~100 retries a transient fault gets in the same 10 s.
    assert 3 <= health.crashes <= 7 and health.faults == 0
    assert health.last_crash == "KeyError: 'missing'"
    assert health.last_crash_where.endswith("in body") and "test_supervise.py" in \
        health.last_crash_where
    lines = [r for r in caplog.records if r.name == "skywire_trio.supervise"]
    assert len(lines) == health.crashes
    assert all(r.levelno == logging.ERROR and r.exc_info for r in lines)
    assert "demo crashed (crash 1; not a transient fault): KeyError" in lines[0].getMessage()
    assert health.as_json()["last_crash"]["error"] == "KeyError: 'missing'"


@pytest.mark.quick
async def test_groups_are_transient_only_when_every_exception_is(autojump_clock):
    async def transient_group(ready):
        ready()
        raise ExceptionGroup("nursery", [OSError("reset"), TimeoutError()])

    async def mixed_group(ready):
        ready()
        raise ExceptionGroup("nursery", [OSError("reset"), TypeError("bad arg")])

    assert (await _supervised(transient_group))["demo"].crashes == 0
    mixed = (await _supervised(mixed_group))["demo"]
    assert mixed.faults == 0 and mixed.crashes >= 3 and mixed.last_crash == "TypeError: bad arg"


@pytest.mark.quick
async def test_fatal_faults_stop_and_returning_is_a_crash(autojump_clock):
    class Misconfigured(Exception):
        pass

    async def fatal(ready):
        raise Misconfigured("cursor of another upstream")

    with pytest.RaisesGroup(Misconfigured):
        await _supervised(fatal, fatal=(Misconfigured,))

    async def returns(ready):
        ready()

    health = (await _supervised(returns))["demo"]
    assert health.crashes >= 3 and "returned" in health.last_crash


@pytest.mark.quick
async def test_the_service_starts_while_a_task_cannot(autojump_clock):
    # started is reported after the first failure, so the rest of the service comes up.
    async def never_ready(ready):
        raise OSError("database down")

    tasks: dict[str, TaskHealth] = {}
    async with trio.open_nursery() as nursery:
        with trio.fail_after(1):
            await nursery.start(lambda task_status: supervise(
                "demo", never_ready, FAST, tasks, task_status=task_status))
        assert tasks["demo"].state == "backing_off"
        nursery.cancel_scope.cancel()


async def test_a_bug_in_the_batcher_is_logged_counted_shown_and_not_looped(
        database, tmp_path, monkeypatch, caplog):
    frames = renumbered(relay_frames(), 200)
    real_collect = batcher._collect
    bug = {"on": True}

    async def buggy_collect(*args):
        if bug["on"]:
            return len(args[-1])  # TypeError (Settings has no len): a deliberate bug
        return await real_collect(*args)

    monkeypatch.setattr(batcher, "_collect", buggy_collect)
    caplog.set_level(logging.INFO)
    settings = Settings(database_url=database, port=0, deadletter_dir=tmp_path / "dl",
                        backoff_min=0.02, backoff_max=0.05, crash_backoff_min=0.4,
                        crash_backoff_max=10.0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_replay, frames, "127.0.0.1", 0, 0.0)
        settings = dataclasses.replace(settings, relay_url=f"ws://127.0.0.1:{port}")
        running = await nursery.start(serve, settings)
        # The ingest task exists once this instance leads ingestion (leaders.py).
        await wait_until(lambda: (task := running.stats.tasks.get("ingest")) is not None
                         and task.crashes >= 3, 30)
        ingest = running.stats.tasks["ingest"]
        assert ingest.faults == 0 and ingest.state == "backing_off"
        errors = [r for r in caplog.records
                  if r.name == "skywire_trio.supervise" and r.levelno == logging.ERROR]
        assert len(errors) == ingest.crashes
        # Not a quiet loop: each restart waited the crash backoff (0.4 s doubling, jitter
        # half to all), not the transient one (0.02-0.05 s).
        gaps = [b.created - a.created for a, b in zip(errors, errors[1:], strict=False)]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
        async with httpx.AsyncClient(base_url=running.api_url) as client:
            health = (await client.get("/health")).json()
            metrics = (await client.get("/metrics")).text
        # ... as documented: the OpenAPI schema of /health, crash included.
        jsonschema.Draft202012Validator(
            {**OPENAPI["components"]["schemas"]["Health"], "components": OPENAPI["components"]}
        ).validate(health)
        crash = health["tasks"]["ingest"]["last_crash"]
        assert crash["error"] == "TypeError: object of type 'Settings' has no len()"
        assert "test_supervise.py" in crash["where"] and "buggy_collect" in crash["where"]
        assert health["tasks"]["ingest"]["crashes"] >= 3
        counted = re.search(r'^skywire_task_crashes_total\{task="ingest"\} (\d+)$', metrics,
                            re.M)
        assert counted and int(counted[1]) >= 3
        assert re.search(r'^skywire_task_faults_total\{task="ingest"\} 0$', metrics, re.M)
        formatted = [logging.Formatter().formatException(r.exc_info) for r in errors]
        assert all("Traceback" in f and "in buggy_collect" in f and "TypeError" in f
                   for f in formatted)
        # Fixed: the next restart ingests everything, nothing lost or duplicated.
        bug["on"] = False
        await wait_until(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                         == [(200,)], 30)
        assert stored_rows(database) == expected_rows(frames)
        assert running.stats.tasks["ingest"].state == "running"
        nursery.cancel_scope.cancel()
