"""The first phase of an ordered shutdown: intake stops, work in flight finishes.

On SIGTERM the service calls ``Shutdown.begin()``. Everything that takes work *in* (the
upstream reader, waiting long-polls, the partition manager's timer) runs inside
``shutdown.intake()``, a cancel scope that is cancelled at that moment; what was already
taken in (the batch in the channel, requests being answered) is left to finish. The
service then waits up to its grace period before cancelling whatever is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Shutdown:
    """Broadcasts the start of a graceful shutdown to cancel scopes and waiters."""

    def __init__(self) -> None:
        self._begun = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    @property
    def begun(self) -> bool:
        """Whether ``begin`` was called."""
        return self._begun.is_set()

    def begin(self) -> None:
        """Stop intake now: cancel every ``intake()`` scope and wake ``wait()``."""
        self._begun.set()
        for scope in self._scopes:
            scope.cancel()

    async def wait(self) -> None:
        """Sleep until ``begin`` (hypercorn's ``shutdown_trigger``)."""
        await self._begun.wait()

    @contextmanager
    def intake(self) -> Iterator[trio.CancelScope]:
        """A cancel scope that ``begin`` cancels (cancelled at once if it already ran)."""
        with trio.CancelScope() as scope:
            if self.begun:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)
