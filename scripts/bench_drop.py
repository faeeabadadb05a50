"""Retention benchmark: DROP a one-million-row day vs DELETE it, with ingest running.

Fills yesterday's partition with N synthetic rows shaped like real ones (a ~500-byte
record), keeps a writer committing 500-row batches every 100 ms into today's partition
through the real ``LogStore.append``, and measures (a) how long the drop takes and (b) the
longest a batch commit took while it ran. Then does the same with ``DELETE ... WHERE
indexed_at < ...`` on an identical day.

    .venv/bin/python scripts/bench_drop.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skywire_trio import types  # noqa: E402
from skywire_trio.firehose.codec import decode_frame  # noqa: E402
from skywire_trio.log import partition_store, writer
from skywire_trio.log.batcher import utc_now  # noqa: E402
from tests.support import fresh_database, query, relay_frames  # noqa: E402

FILL = """
INSERT INTO {table} (id, seq, repo, event_type, action, collection, rkey, cid, rev, record,
                     event_time, indexed_at)
SELECT g, g, 'did:plc:' || md5(g::text), 'commit', 'create', 'app.bsky.feed.post',
       '3mptb' || g, 'bafyrei' || md5(g::text), '3mptbyplu' || g,
       jsonb_build_object('$type', 'app.bsky.feed.post', 'createdAt', now()::text,
                          'langs', jsonb_build_array('en'),
                          'text', repeat(md5(g::text), 12)),
       now(), '{day}'::timestamptz + (g % 86000) * interval '1 second'
FROM generate_series({first}, {last}) g
"""


async def _writer(url: str, start_id: int, stop: trio.Event,
                  latencies: list[tuple[float, float]]) -> None:
    rows = [r for f in relay_frames() for r in decode_frame(f).rows]
    batch = (rows * 4)[:500]
    async with writer.connect(url) as store:
        last_id = start_id
        while not stop.is_set():
            began = time.perf_counter()
            last_id = await store.append(batch, None, last_id, utc_now())
            latencies.append((began, time.perf_counter() - began))
            await trio.sleep(0.1)


async def _measure(url: str, start_id: int, action: str) -> tuple[float, float, float]:
    """Run ``action`` (SQL) beside the writer; returns (seconds, worst commit, median)."""
    latencies: list[tuple[float, float]] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_writer, url, start_id, stop, latencies)
        await trio.sleep(2.0)
        async with writer.connect(url) as conn_store:
            began = time.perf_counter()
            await conn_store._conn.execute(action)  # noqa: SLF001 - benchmark only
            took = time.perf_counter() - began
        await trio.sleep(1.0)
        stop.set()
    during = [lat for at, lat in latencies if began - 0.2 <= at <= began + took + 0.2]
    worst = max(during or [0.0])
    ordinary = sorted(lat for _, lat in latencies)
    return took, worst, ordinary[len(ordinary) // 2]


def main() -> None:
    """Print the DROP and DELETE figures side by side."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    results = {}
    for method in ("drop", "delete"):
        with fresh_database() as url:
            yesterday = (utc_now() - timedelta(days=1)).date()
            today = utc_now().date()

            async def setup(days: list) -> None:
                async with trio_asyncio.open_loop(), writer.connect(url) as store, \
                        partition_store.connect(url) as partitions:
                    await store.claim_cursor("ws://bench")
                    for day in days:
                        await partitions.create_partition(day)

            trio.run(setup, [yesterday, today])
            table = types.partition_name(yesterday)
            began = time.perf_counter()
            query(url, FILL.format(table=table, day=types.day_start(yesterday).isoformat(),
                                   first=1, last=args.rows))
            query(url, f"UPDATE firehose_cursor SET last_id = {args.rows}")
            query(url, "VACUUM ANALYZE firehose_events")
            size = query(url, f"SELECT pg_total_relation_size('{table}')")[0][0]
            print(f"[{method}] filled {args.rows} rows ({size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - began:.1f}s", flush=True)
            sql = (f"DROP TABLE {table}" if method == "drop" else
                   f"DELETE FROM firehose_events WHERE indexed_at < "
                   f"'{types.day_start(today).isoformat()}'")

            async def run(sql: str = sql) -> tuple[float, float, float]:
                async with trio_asyncio.open_loop():
                    return await _measure(url, args.rows, sql)

            results[method] = trio.run(run)
            left = query(url, f"SELECT count(*) FROM firehose_events WHERE indexed_at < "
                              f"'{types.day_start(today).isoformat()}'")[0][0]
            assert left == 0, left
    print(f"\n{'method':8} {'seconds':>9} {'worst batch commit during':>27} {'median commit':>14}")
    for method, (took, worst, median) in results.items():
        print(f"{method:8} {took:9.3f} {worst * 1000:24.1f} ms {median * 1000:11.1f} ms")


if __name__ == "__main__":
    main()
