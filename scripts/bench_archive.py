"""Archive benchmark: export a day of N real-shaped rows to Parquet, as the service does.

Fills yesterday's partition with N rows through the real writer. Rows are the relay
corpus's decoded rows, cycled, each made unique the way real traffic is: CIDs, rkeys and
revs become fresh hash-like strings, repos come from a pool of 50,000 accounts, and a
record's text is redrawn from the corpus's own words at its original length (identical
copies of the 152 corpus rows would make Parquet look ~20x smaller than it is). Then runs
``python -m skywire_trio export --day <yesterday>`` as its own process and reports rows/s,
the export process's peak RSS, and bytes per row in Parquet against PostgreSQL's
(``pg_total_relation_size`` of the partition, indexes included, after VACUUM ANALYZE).

    .venv/bin/python scripts/bench_archive.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import wait_until_quiet  # noqa: E402

from skywire_trio import types  # noqa: E402
from skywire_trio.firehose.codec import Row, decode_frame  # noqa: E402
from skywire_trio.log import partition_store, writer  # noqa: E402
from skywire_trio.log.batcher import utc_now  # noqa: E402
from tests.support import ROOT, fresh_database, query, relay_frames  # noqa: E402

BATCH = 10_000
ACCOUNTS = 50_000
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def _token(seed: str, length: int) -> str:
    digest = hashlib.blake2b(seed.encode(), digest_size=40).digest()
    return "".join(_B32[b % 32] for b in digest)[:length]


class _Uniquer:
    """Makes the n-th copy of a corpus row a distinct, realistic row."""

    def __init__(self, rows: list[Row]) -> None:
        self.words = [w for r in rows if r.record for w in _texts(json.loads(r.record))]
        self.random = random.Random(7)

    def _value(self, value: object, n: int) -> object:
        if isinstance(value, dict):
            return {k: (self._text(v) if k == "text" and isinstance(v, str)
                        else self._value(v, n)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, n) for v in value]
        if isinstance(value, str):
            if value.startswith("bafy"):
                return "bafyrei" + _token(f"{value}{n}", len(value) - 7)
            if value.startswith("did:plc:"):
                return "did:plc:" + _token(str(self.random.randrange(ACCOUNTS)), 24)
            if value.startswith("at://"):
                return "at://did:plc:" + _token(f"{value}{n}", 24) + "/" + \
                    value.split("/", 3)[-1].rsplit("/", 1)[0] + "/" + _token(f"r{n}", 13)
        return value

    def _text(self, text: str) -> str:
        count = max(1, len(text.split()))
        return " ".join(self.random.choice(self.words) for _ in range(count))

    def row(self, row: Row, n: int) -> Row:
        record = None if row.record is None else json.dumps(
            self._value(json.loads(row.record), n), separators=(",", ":"))
        return row._replace(
            repo="did:plc:" + _token(str(self.random.randrange(ACCOUNTS)), 24),
            rkey=row.rkey and _token(f"k{n}", 13), cid=row.cid and "bafyrei" + _token(
                f"c{n}", 52), rev=row.rev and _token(f"v{n}", 13), record=record)


def _texts(value: object) -> list[str]:
    if isinstance(value, dict):
        return [w for k, v in value.items()
                for w in (v.split() if k == "text" and isinstance(v, str) else _texts(v))]
    if isinstance(value, list):
        return [w for v in value for w in _texts(v)]
    return []


async def _fill(url: str, rows: int) -> None:
    decoded = [r for f in relay_frames() for r in decode_frame(f).rows]
    uniquer = _Uniquer(decoded)
    day = (utc_now() - timedelta(days=1)).date()
    async with trio_asyncio.open_loop(), writer.connect(url) as store, \
            partition_store.connect(url) as partitions:
        await partitions.create_partition(day)
        cursor = await store.claim_cursor("wss://bench.invalid/xrpc/com.atproto.sync.subscribeRepos")
        last_id, done = cursor.last_id, 0
        while done < rows:
            n = min(BATCH, rows - done)
            batch = [uniquer.row(decoded[(done + i) % len(decoded)], done + i)
                     for i in range(n)]
            stamp = types.day_start(day) + timedelta(seconds=done * 86000 / rows)
            last_id = await store.append(batch, None, last_id, stamp)
            done += n


def main() -> None:
    """Fill, export, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    day = (utc_now() - timedelta(days=1)).date()
    with fresh_database() as url, tempfile.TemporaryDirectory() as out:
        began = time.perf_counter()
        trio.run(_fill, url, args.rows)
        table = types.partition_name(day)
        query(url, f"VACUUM ANALYZE {table}")
        pg_bytes = query(url, f"SELECT pg_total_relation_size('{table}')")[0][0]
        print(f"filled {args.rows} rows ({pg_bytes / 1e6:.0f} MB in PostgreSQL) in "
              f"{time.perf_counter() - began:.0f}s", flush=True)
        print(wait_until_quiet(60), flush=True)
        env = dict(os.environ, DATABASE_URL=url)
        began = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "skywire_trio", "export", "--day",
                               day.isoformat(), "--out", out], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - began
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        files = list(Path(out).rglob("*.parquet"))
        parquet_bytes = sum(f.stat().st_size for f in files)
    print(done.stdout.strip())
    print(f"\nrows                 {args.rows:>12,}")
    print(f"export (process)     {wall:>12.2f} s   {args.rows / wall:>10,.0f} rows/s "
          "(including Python start-up and imports)")
    print(f"peak RSS (export)    {peak_mb:>12.0f} MB")
    print(f"Parquet              {parquet_bytes / args.rows:>12.1f} bytes/row "
          f"({parquet_bytes / 1e6:.0f} MB)")
    print(f"PostgreSQL           {pg_bytes / args.rows:>12.1f} bytes/row "
          f"(heap + TOAST + indexes; {pg_bytes / parquet_bytes:.1f}x the Parquet file)")


if __name__ == "__main__":
    main()
