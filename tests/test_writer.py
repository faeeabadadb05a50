"""The pipelined writer against real PostgreSQL: commits in order, a failed predecessor
stops its successor, and a second instance cannot write beside the first."""

from __future__ import annotations

from functools import partial

import psycopg
import pytest
import trio
import trio_asyncio

from skywire_trio.config import Settings
from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import writer
from skywire_trio.log.batcher import utc_now
from skywire_trio.service import serve

from .faults import wait_until
from .support import expected_rows, query, relay_frames, renumbered, stored_rows

ROWS = [row for frame in relay_frames()[:40] for row in decode_frame(frame).rows][:25]


def _visible(url: str) -> tuple[int, int]:
    """(cursor last_id, rows) as any other session sees them."""
    return query(url, "SELECT (SELECT last_id FROM firehose_cursor), "
                      "(SELECT count(*) FROM firehose_events)")[0]


async def _staged(url: str, store: writer.LogStore, batch: writer.Batch,
                  moved: trio.Event | None = None) -> None:
    await store.stage(batch)
    await store.move_cursor(batch)
    if moved is not None:
        moved.set()


async def test_second_batch_commits_only_after_the_first(database):
    first = writer.Batch(ROWS[:10], 10, 0, utc_now())
    second = writer.Batch(ROWS[10:25], 20, 10, utc_now())
    async with trio_asyncio.open_loop(), writer.connect(database) as a, \
            writer.connect(database) as b, trio.open_nursery() as nursery:
        await a.claim_cursor("ws://pipeline-test")
        await _staged(database, a, first)
        # The successor copies its rows while the first has not committed; its cursor move
        # waits inside PostgreSQL for the first transaction to end.
        moved = trio.Event()
        nursery.start_soon(_staged, database, b, second, moved)
        with trio.move_on_after(0.5):
            await moved.wait()
        assert not moved.is_set()
        assert await trio.to_thread.run_sync(_visible, database) == (0, 0)
        await a.commit()
        with trio.fail_after(5):
            await moved.wait()
        assert await trio.to_thread.run_sync(_visible, database) == (10, 10)
        await b.commit()
    assert _visible(database) == (25, 25)
    assert [r[0] for r in query(database, "SELECT id FROM firehose_events ORDER BY id")] \
        == list(range(1, 26))


async def test_successor_of_a_batch_that_did_not_commit_fails(database):
    first = writer.Batch(ROWS[:10], 10, 0, utc_now())
    second = writer.Batch(ROWS[10:25], 20, 10, utc_now())
    async with trio_asyncio.open_loop(), writer.connect(database) as a, \
            writer.connect(database) as b:
        await a.claim_cursor("ws://pipeline-test")
        await _staged(database, a, first)
        failure: list[BaseException] = []

        async def successor() -> None:
            try:
                await _staged(database, b, second)
            except writer.ConcurrentWriter as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(successor)
            await trio.sleep(0.3)
            await a.rollback()  # what a crash of the first connection amounts to
        assert failure, "the successor moved the cursor past a batch that never committed"
    assert _visible(database) == (0, 0)


async def test_a_second_instance_waits_while_either_writer_lock_is_held(database, nursery,
                                                                       tmp_path):
    frames = renumbered(relay_frames(), 100)
    port = await nursery.start(partial(serve_replay, frames))
    settings = Settings(database_url=database, relay_url=f"ws://127.0.0.1:{port}", port=0,
                        deadletter_dir=tmp_path / "dl", backoff_min=0.05, backoff_max=0.1)
    # Only the pipeline connection's lock: an old instance with one connection left alive.
    with psycopg.connect(database, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (writer.WRITER_LOCKS[1],))
        running = await nursery.start(serve, settings)
        await wait_until(lambda: running.stats.ingest_restarts >= 3, 10)
        assert _visible(database)[1] == 0  # tried, and wrote nothing
    await wait_until(lambda: _visible(database)[1] == len(expected_rows(frames)), 30)
    assert stored_rows(database) == expected_rows(frames)


@pytest.mark.parametrize("role", [0, 1])
async def test_cursor_set_is_refused_while_a_writer_connection_lives(database, role):
    from skywire_trio.log.cursor import set_cursor

    query(database, "INSERT INTO firehose_cursor (upstream) VALUES ('ws://x')")
    with psycopg.connect(database, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (writer.WRITER_LOCKS[role],))
        with pytest.raises(writer.WriterActive):
            set_cursor(database, 5)
    set_cursor(database, 5)
    assert query(database, "SELECT last_seq FROM firehose_cursor") == [(5,)]
