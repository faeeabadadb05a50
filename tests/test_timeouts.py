"""Timeouts kept by one task: they fire on time, and a closed one leaves nothing behind."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from skywire_trio.timeouts import PRUNE_SLACK, Timeouts

pytestmark = pytest.mark.quick


async def _wait_in(timeouts: Timeouts, seconds: float, ended: dict[float, float]) -> None:
    with timeouts.move_on_after(seconds) as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
    ended[seconds] = trio.current_time()


async def test_scopes_are_cancelled_when_due_in_any_order(
        autojump_clock: trio.testing.MockClock) -> None:
    ended: dict[float, float] = {}
    with Timeouts() as timeouts:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_in, timeouts, 5.0, ended)
            await trio.testing.wait_all_tasks_blocked()
            # Due before the one the task sleeps for, then between the two.
            nursery.start_soon(_wait_in, timeouts, 1.0, ended)
            nursery.start_soon(_wait_in, timeouts, 3.0, ended)
        assert {seconds: round(at - start, 3) for seconds, at in ended.items()} == {
            1.0: 1.0, 3.0: 3.0, 5.0: 5.0}
        assert timeouts.pending == 0


async def test_a_scope_left_early_is_not_cancelled_and_not_kept(
        autojump_clock: trio.testing.MockClock) -> None:
    with Timeouts() as timeouts:
        scopes: list[weakref.ref[trio.CancelScope]] = []
        for _ in range(1000):
            with timeouts.move_on_after(30) as scope:
                await trio.sleep(0)
            scopes.append(weakref.ref(scope))
            assert not scope.cancel_called
        del scope
        gc.collect()
        # trio's own deadlines would keep these until their 30 s passed (the control below).
        assert sum(ref() is not None for ref in scopes) == 0
        assert timeouts.pending == 0
        await trio.sleep(31)  # the task goes past the dropped entries' times
        ended: dict[float, float] = {}
        await _wait_in(timeouts, 1.0, ended)
        assert list(ended) == [1.0]


async def test_trio_deadlines_keep_closed_scopes_until_due() -> None:
    # The control for the test above: what Timeouts avoids.
    scopes: list[weakref.ref[trio.CancelScope]] = []
    for _ in range(500):
        with trio.move_on_after(30) as scope:
            await trio.sleep(0)
        scopes.append(weakref.ref(scope))
    del scope
    gc.collect()
    assert sum(ref() is not None for ref in scopes) == 500


def _entries() -> int:
    return sum(type(o).__name__ == "_Entry" for o in gc.get_objects())


async def test_a_wave_of_closed_scopes_leaves_no_entries(
        autojump_clock: trio.testing.MockClock) -> None:
    # A thousand connections wait at once, then all go away before their time.
    before = _entries()
    with Timeouts() as timeouts:
        async with trio.open_nursery() as wave:
            for _ in range(1000):
                wave.start_soon(_wait_in, timeouts, 30.0, {})
            await trio.testing.wait_all_tasks_blocked()
            assert timeouts.pending == 1000
            wave.cancel_scope.cancel()
        gc.collect()
        assert timeouts.pending == 0 and _entries() - before <= PRUNE_SLACK


async def test_closed_timeouts_start_again_when_used() -> None:
    timeouts = Timeouts()
    timeouts.close()
    with timeouts:
        with timeouts.move_on_after(0.05) as scope:
            await trio.sleep(5)
        assert scope.cancelled_caught
    with timeouts.move_on_after(0.05) as scope:  # after the with: closed, then used again
        await trio.sleep(5)
    assert scope.cancelled_caught
    timeouts.close()
