"""Narrow a batch the log refused to the frames that caused it.

The decoder's field rules (``firehose.sanitize``) keep rows storable, so this is the net
under them: a value they did not foresee, which PostgreSQL or the driver refuses, must cost
one frame, not stop ingestion. Without it the batch fails, ingest restarts from the cursor,
the upstream sends the same frame again, and so on forever.

The batcher stages each batch as one transaction (``writer.LogStore.stage``). If the log
refuses it *for its data*, the batcher waits for the batches before it to commit, then calls
``narrow`` on the same connection: the batch is bisected, each half tried on its own, in
order, down to single frames. A single frame that is still refused goes to the dead letters
with its bytes and the error, and the cursor is moved past it in a small transaction of its
own; everything else is committed in log order, with the cursor exactly after the batch. A
batch with one bad frame costs about 2 log2(n) extra transactions, and no pipelining while
it lasts. Errors that are not about the data (connection lost, timeouts, a second writer, a
type mismatch that would be our bug) propagate unchanged, and ingest restarts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from asyncpg.exceptions import DataError, ProgramLimitExceededError

from .. import deadletter
from ..errors import describe
from ..firehose.codec import Frame, Row
from .writer import LogStore

log = logging.getLogger(__name__)

# Refusals caused by a value in a row: SQLSTATE class 22 (data exception: NUL in text,
# invalid JSON, out-of-range numbers) and 54 (program limit: an index entry too large), and
# the driver's own encoders (an int past 64 bits, a string that is not UTF-8).
REFUSED_DATA = (DataError, ProgramLimitExceededError, OverflowError, UnicodeEncodeError)


@dataclasses.dataclass(frozen=True)
class Appended:
    """What ``append_frames`` or ``narrow`` committed."""

    last_id: int
    rows: list[Row]  # the rows written, in log order (those of refused frames are not)
    refused: int  # frames sent to the dead letters


def _rows(frames: Sequence[Frame]) -> list[Row]:
    return [row for frame in frames for row in frame.rows]


def _last_seq(frames: Sequence[Frame]) -> int | None:
    seqs = [frame.seq for frame in frames if frame.seq is not None]
    return seqs[-1] if seqs else None


async def append_frames(store: LogStore, frames: Sequence[Frame], last_id: int,
                        indexed_at: datetime, deadletter_dir: Path) -> Appended:
    """Append ``frames`` after ``last_id``, dead-lettering any the log refuses for its data."""
    rows = _rows(frames)
    try:
        new_last_id = await store.append(rows, _last_seq(frames), last_id, indexed_at)
    except REFUSED_DATA as exc:
        return await narrow(store, frames, last_id, indexed_at, deadletter_dir, exc)
    return Appended(new_last_id, rows, 0)


async def narrow(store: LogStore, frames: Sequence[Frame], last_id: int, indexed_at: datetime,
                 deadletter_dir: Path, exc: Exception) -> Appended:
    """``frames``, just refused together for their data (``exc``), stored half by half.

    Call it on a connection with no transaction open, once everything before ``last_id``
    has committed. Returns after the cursor has moved past the last of ``frames``.
    """
    if len(frames) > 1:
        log.warning("the log refused a batch of %d frames (%s); narrowing it", len(frames),
                    describe(exc)[:300])
        half = len(frames) // 2
        first = await append_frames(store, frames[:half], last_id, indexed_at, deadletter_dir)
        rest = await append_frames(store, frames[half:], first.last_id, indexed_at,
                                   deadletter_dir)
        return Appended(rest.last_id, first.rows + rest.rows, first.refused + rest.refused)
    [frame] = frames
    path = deadletter.save(deadletter_dir, frame.data,
                           f"the log refused frame seq {frame.seq}: {describe(exc)}")
    log.error("the log refused the frame with seq %s (%s); bytes saved to %s", frame.seq,
              describe(exc)[:300], path)
    if frame.seq is None:
        return Appended(last_id, [], 1)
    # Move the cursor past it, so that a restart does not fetch it again.
    return Appended(await store.append([], frame.seq, last_id, indexed_at), [], 1)
