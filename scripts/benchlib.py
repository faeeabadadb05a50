"""What the benchmark scripts share: CPU accounting from /proc and waiting for quiet."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """Busy CPU seconds over all CPUs since boot, from /proc/stat (idle, iowait excluded)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


def wait_until_quiet(limit: float, threshold: float = 0.15) -> str:
    """Wait up to ``limit`` seconds for the machine to be idle; describes what was seen."""
    deadline = time.monotonic() + limit
    cores = os.cpu_count() or 1
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = (machine_busy_seconds() - before) / cores
        if busy <= threshold or time.monotonic() >= deadline:
            break
    loadavg = Path("/proc/loadavg").read_text().split()[0]
    state = "quiet" if busy <= threshold else f"BUSY after waiting {limit:.0f}s"
    return f"{state}: {busy:.0%} of all cores busy over 1 s, loadavg {loadavg}"
