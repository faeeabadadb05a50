"""The dead-letter directory: frames that could not be stored, kept for an operator.

Each frame is two files named by the time it was refused: ``<time>-<n>.bin`` holds the bytes
exactly as received and ``<time>-<n>.txt`` the reason, one line. Written by the reader (a
frame that cannot be decoded, or whose identifying fields cannot be stored) and by the
batcher (a frame the database refused, found by narrowing the batch). Saving happens before
the frame's seq is committed, so a crash in between saves it twice, never zero times.
"""

from __future__ import annotations

import time
from pathlib import Path

# A reason quotes at most this much (a database error can quote a whole row).
MAX_REASON_CHARS = 4000


def save(directory: Path, frame: bytes | str, reason: str) -> Path:
    """Write a refused frame and why; returns the ``.bin`` file."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.monotonic_ns()}"
    path = directory / f"{stem}.bin"
    path.write_bytes(frame if isinstance(frame, bytes) else frame.encode("utf-8", "replace"))
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[:MAX_REASON_CHARS] + f"... ({len(reason)} characters)"
    (directory / f"{stem}.txt").write_text(reason.replace("\n", " ") + "\n")
    return path
