"""Timeouts kept by one task, without a trio deadline each.

trio keeps every cancel scope's deadline in one heap, and forgets the entry of a scope
that exited only when that entry reaches the top of the heap (its deadline passes) or when
such stale entries outnumber the live ones by 1,000. So when a thousand connections that
each armed a deadline (the keep-alive timer, 75 s; a long-poll's ``wait``, 30 s; each read,
10 s) close at once, up to a thousand entries stay, each keeping its cancel scope and the
scope's bookkeeping alive until the deadline would have passed. They were allocated while
the connections were open, so they lie scattered through the memory those connections
used, and the allocator cannot give those pages back to the system (memory.py).

``Timeouts`` keeps such deadlines itself: each is a cancel scope with no deadline of its
own, and one task cancels it when it is due. An entry is dropped as soon as its
scope exits (the heap is rebuilt once dropped entries outnumber the live ones), so nothing
of a closed connection outlives it. Used for the HTTP server's keep-alive timer, the
long-polls' waits and the readers' statements (log/reader.py).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

# The heap is rebuilt when it holds more than twice the live entries plus this many.
PRUNE_SLACK = 32


@dataclasses.dataclass(slots=True, order=True)
class _Entry:
    due: float
    order: int
    scope: trio.CancelScope | None = dataclasses.field(compare=False)  # None: exited


class Timeouts:
    """Cancel scopes that cancel themselves after a while, like ``trio.move_on_after``.

    The task that cancels them is a trio system task, started with the first timeout (so
    that it holds no caller's context, and needs no nursery around the users: a nursery
    would wrap every exception they raise in a group); ``close`` stops it.
    """

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live = 0
        self._order = itertools.count()
        self._next = math.inf  # when the task wakes up next
        self._earlier = trio.Event()  # set when an entry is due before ``_next``
        self._task: trio.CancelScope | None = None

    @property
    def pending(self) -> int:
        """Scopes entered and not yet exited."""
        return self._live

    @contextmanager
    def move_on_after(self, seconds: float) -> Iterator[trio.CancelScope]:
        """A cancel scope that is cancelled ``seconds`` from now, unless exited before."""
        if self._task is None:
            self._task = trio.CancelScope()
            trio.lowlevel.spawn_system_task(self._run, self._task, name="timeouts")
        due = trio.current_time() + seconds
        scope = trio.CancelScope()
        entry = _Entry(due, next(self._order), scope)
        heapq.heappush(self._heap, entry)
        self._live += 1
        if due < self._next:
            self._earlier.set()
        try:
            with scope:
                yield scope
        finally:
            entry.scope = None
            self._live -= 1
            if len(self._heap) > 2 * self._live + PRUNE_SLACK:
                self._heap = [e for e in self._heap if e.scope is not None]
                heapq.heapify(self._heap)

    @contextmanager
    def fail_after(self, seconds: float, what: str) -> Iterator[None]:
        """``move_on_after``, then ``TimeoutError("{what} took longer than ...")`` if it
        was cut short (a database fault, for the statements that use it)."""
        with self.move_on_after(seconds) as scope:
            yield
        if scope.cancelled_caught:
            raise TimeoutError(f"{what} took longer than {seconds:g}s")

    def __enter__(self) -> Timeouts:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the task (also on leaving ``with Timeouts()``); a later timeout starts it
        again."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self._next = math.inf

    async def _run(self, task: trio.CancelScope) -> None:
        with task:
            while True:
                now = trio.current_time()
                # self._heap every time, never a local across the wait below: a pruned heap
                # must not stay alive in this frame.
                while self._heap and (self._heap[0].scope is None
                                      or self._heap[0].due <= now):
                    scope = heapq.heappop(self._heap).scope
                    if scope is not None:
                        scope.cancel()
                self._next = self._heap[0].due if self._heap else math.inf
                self._earlier = trio.Event()
                with trio.move_on_at(self._next):
                    await self._earlier.wait()
