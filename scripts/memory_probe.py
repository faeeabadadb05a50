"""Run the service with a memory probe, to see what keeps memory that a load wave used.

Run from the repository root, with the service's environment, instead of
``python -m skywire_trio``::

    .venv/bin/python scripts/memory_probe.py DIR

``scripts/bench_longpoll.py --probe DIR`` does this and signals the probe for you. On each
SIGUSR1 the probe runs a full collection, then writes into DIR:

- ``mallocstats-N.txt``: ``sys._debugmallocstats()`` (pymalloc's arenas, pools and blocks).
- from the second signal on, ``new-memory-N.txt``: the live objects (those the collector
  tracks, and what they refer to directly) whose addresses lie in memory mapped since the
  first signal, counted by type, with one example each. These are what keep the memory a
  wave mapped from being given back.

The probe runs in the service's own thread, between two bytecodes, so the service stalls
while it writes (a second or so with a few hundred thousand objects). A diagnostic tool:
never run it in production.
"""

from __future__ import annotations

import collections
import gc
import os
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType

Ranges = list[tuple[int, int]]


def mapped() -> Ranges:
    """The process's anonymous mappings and heap, as (start, end) address ranges."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[5] == "[heap]":
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def _inside(ranges: Ranges, address: int) -> bool:
    return any(start <= address < end for start, end in ranges)


def new_objects(before: Ranges) -> collections.Counter[str]:
    """Live objects at addresses that were not mapped in ``before``, by type name."""
    tracked = gc.get_objects()  # first: nothing the probe builds below is counted
    now = [r for r in mapped() if not (_inside(before, r[0]) and _inside(before, r[1] - 1))]
    # The probe's own address ranges are not the service's.
    seen = {id(x) for ranges in (before, now) for pair in ranges for x in (pair, *pair)}
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    for obj in tracked + [r for o in tracked for r in gc.get_referents(o)
                          if not gc.is_tracked(r)]:
        address = id(obj)
        if address in seen or not _inside(now, address) or _inside(before, address):
            continue
        seen.add(address)
        name = type(obj).__name__
        counts[name] += 1
        if name not in examples:
            try:
                examples[name] = repr(obj)[:120]
            except Exception:  # noqa: BLE001 - a repr that fails is only a missing example
                examples[name] = "?"
    return collections.Counter({f"{name}  e.g. {examples[name]}": n
                                for name, n in counts.items()})


def _mallocstats(path: Path) -> None:
    # _debugmallocstats writes to the C stderr: point fd 2 at a file for the call. Written
    # under another name and renamed, so that a reader waiting for ``path`` (the benchmark,
    # in another process) never reads it half written.
    partial = path.with_suffix(".part")
    saved = os.dup(2)
    with partial.open("wb") as out:
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    partial.replace(path)


def main() -> None:
    """Install the SIGUSR1 probe, then run the service as ``python -m skywire_trio``."""
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    first: Ranges = []
    signals = 0

    def probe(signum: int, frame: FrameType | None) -> None:
        nonlocal first, signals
        gc.collect()
        signals += 1
        _mallocstats(out / f"mallocstats-{signals}.txt")
        if signals == 1:
            first = mapped()
            return
        counts = new_objects(first)
        report = out / f"new-memory-{signals}.part"
        report.write_text(
            f"{sum(counts.values())} live objects in memory mapped since the first probe\n"
            + "".join(f"{n:8d}  {what}\n" for what, n in counts.most_common()))
        report.replace(report.with_suffix(".txt"))

    signal.signal(signal.SIGUSR1, probe)
    sys.argv = ["skywire_trio"]
    runpy.run_module("skywire_trio", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
