"""Garbage-collector settings for the service's long-running processes.

Ingest allocates a few container objects per event (a row tuple, a frame, the lists that
carry them), almost all freed within milliseconds. With CPython's default young-generation
threshold (700 net allocations) the collector ran ~130 times a second in the service during
a 300,000-frame replay and took 11-16% of its CPU (0.87 s of 5.4 s, counted with
``gc.callbacks``), mostly scanning frames that were about to be freed anyway. Collecting
after 20,000 net allocations instead leaves a handful of collections in the same run; the
price is that garbage in reference cycles (rare in this code) lives a little longer, a few
MB at most. docs/performance.md has the measurements.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle() -> None:
    """Call once the process has started: everything alive now (imports, the app) lives as
    long as the process, so it leaves the collector's full passes; young objects are
    collected after ``YOUNG_THRESHOLD`` net allocations instead of 700."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
