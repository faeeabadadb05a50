"""Giving memory back to the system, after a wave of connections and in general.

A thousand open connections (long-polls, websockets, idle keep-alives) cost the service
~40 MB. When they close, that memory is free inside the process but stays in its RSS
unless the allocator returns it:

- CPython's own allocator (pymalloc) returns a 1 MiB arena only once every block in it is
  free. The service's steady work (commits, timers, queries) keeps allocating into the
  arenas the wave used, so almost none ever empties: after 1,000 long-polls closed, RSS
  stayed +58% above its idle figure, at 10 s and at 5 minutes alike.
- The C library's allocator returns any free 4 KiB page on ``malloc_trim``. So the service
  runs with ``PYTHONMALLOC=malloc`` (``use_system_allocator``) and trims every few seconds;
  after a wave of closed connections, ``release`` first collects what they left in
  reference cycles (tasks, frames), which only a full collection frees.

What still pins pages is whatever the service allocated during the wave and keeps: hence
no per-connection trio deadlines (timeouts.py) and no asyncpg statement timers in the
readers (log/reader.py). docs/performance.md ("1,000 waiting long-polls") has the figures.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
from collections.abc import Callable, Sequence

from .config import allocator_environment


def use_system_allocator(argv: Sequence[str]) -> None:
    """Re-execute this interpreter with ``PYTHONMALLOC=malloc`` when ``argv`` (the command
    line after ``-m skywire_trio``) runs the service, unless ``PYTHONMALLOC`` is set
    already. Returns only when there is nothing to do."""
    if argv and argv[0] != "run":
        return
    environment = allocator_environment()
    if environment is not None:
        os.execve(sys.executable, sys.orig_argv, environment)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    # Looked up on first use, not on import: every command imports this module, and the
    # service's first interpreter only re-executes itself.
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def trim() -> None:
    """Give the free pages of the C library's heap back to the system (glibc only)."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)


def release() -> None:
    """Free what only a full collection frees (reference cycles, such as a closed
    connection's tasks and frames), then ``trim``."""
    gc.collect()
    trim()
