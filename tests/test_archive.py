"""The Parquet archive: exported days read back exactly, drops wait for a verified archive."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import psycopg
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import trio_asyncio

from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.log import writer
from skywire_trio.service import serve
from skywire_trio.types import day_start, partition_name

from .faults import wait_until
from .support import (
    ROOT,
    append_rows,
    expected_rows,
    free_port,
    query,
    relay_frames,
    renumbered,
    wait_for,
)
from .test_partitions import FakeClock, _settings

COLUMNS = ("id, seq, repo, event_type, action, collection, rkey, cid, rev, record::text, "
           "record_error, raw, event_time, indexed_at")


def cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], "DATABASE_URL": url, **env}
    return subprocess.run([sys.executable, "-m", "skywire_trio", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120, check=False)


def db_rows(url: str, where: str = "true") -> list[tuple]:
    """Every column of the matching rows, ``record`` parsed, in id order."""
    rows = query(url, f"SELECT {COLUMNS} FROM firehose_events WHERE {where} ORDER BY id")
    return [(*r[:9], None if r[9] is None else json.loads(r[9]), *r[10:]) for r in rows]


def file_rows(table: pa.Table) -> list[tuple]:
    """The same tuples from an archive read back with pyarrow."""
    out = []
    for r in table.sort_by("id").to_pylist():
        out.append((r["id"], r["seq"], r["repo"], r["event_type"], r["action"],
                    r["collection"], r["rkey"], r["cid"], r["rev"],
                    None if r["record"] is None else json.loads(r["record"]), r["record_error"],
                    r["raw"], r["event_time"], r["indexed_at"]))
    return out


def _day(n: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=n)


def test_export_reads_back_with_duckdb_and_pyarrow(database, tmp_path):
    old, older = _day(1), _day(2)
    upstream = "ws://relay.test/xrpc/com.atproto.sync.subscribeRepos"
    frames = relay_frames()
    append_rows(database, upstream, frames, day_start(older) + timedelta(hours=3))
    append_rows(database, upstream, frames[:20], day_start(old) + timedelta(hours=1))
    append_rows(database, upstream, frames[20:30], datetime.now(UTC))
    assert cli(database, "partitions", "maintain", SKYWIRE_RETENTION_DAYS="30").returncode == 0
    expected = db_rows(database, f"indexed_at < '{day_start(old).isoformat()}'")
    assert len(expected) == sum(len(decode_frame(f).rows) for f in frames)

    out = tmp_path / "out"
    done = cli(database, "export", "--day", older.isoformat(), "--out", str(out))
    assert done.returncode == 0, done.stderr
    first, last = expected[0][0], expected[-1][0]
    path = out / f"date={older}" / f"events-{first}-{last}.parquet"
    assert f"exported {older}: {len(expected)} rows, ids {first}..{last}" in done.stdout
    assert "not recorded in archives" in done.stdout and str(path) in done.stdout
    assert sorted(p.name for p in out.rglob("*")) == [path.parent.name, path.name]

    # pyarrow: every column, typed; the metadata says what the file is.
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    assert schema.field("repo").type == pa.dictionary(pa.int32(), pa.string())
    assert schema.field("indexed_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("id").type == pa.int64() and schema.field("raw").type == pa.binary()
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["skywire.schema_version"] == "1" and meta["skywire.upstream"] == upstream
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    assert file_rows(pq.read_table(path)) == expected

    # DuckDB over the Hive layout: the date comes from the directory.
    got = duckdb.sql(
        f"SELECT id, record, date FROM read_parquet('{out}/*/*.parquet', "
        "hive_partitioning = true) ORDER BY id").fetchall()
    assert [r[0] for r in got] == [r[0] for r in expected]
    assert [None if r[1] is None else json.loads(r[1]) for r in got] == [r[9] for r in expected]
    assert {r[2] for r in got} == {older}

    # The current day: a snapshot up to the last committed id, never into the archive.
    snap = cli(database, "export", "--day", _day(0).isoformat(), "--out", str(tmp_path / "s"))
    assert snap.returncode == 0 and "snapshot of the current day" in snap.stdout, snap.stderr
    archive = str(tmp_path / "archive")
    refused = cli(database, "export", "--day", _day(0).isoformat(),
                  SKYWIRE_ARCHIVE_DIR=archive)
    assert refused.returncode == 2 and "not over yet" in refused.stderr

    # Into SKYWIRE_ARCHIVE_DIR: recorded, listed.
    done = cli(database, "export", "--day", old.isoformat(), SKYWIRE_ARCHIVE_DIR=archive)
    assert done.returncode == 0 and "recorded in archives" in done.stdout, done.stderr
    rows_old = len(db_rows(database, f"indexed_at >= '{day_start(old).isoformat()}' "
                                     f"AND indexed_at < '{day_start(_day(0)).isoformat()}'"))
    listed = cli(database, "archives", "list", "--json")
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(e["day"], e["rows"]) for e in entries] == [(old.isoformat(), rows_old)]
    partitions = cli(database, "partitions", "list", SKYWIRE_ARCHIVE_DIR=archive).stdout
    line = [x for x in partitions.splitlines() if x.startswith(partition_name(old))][0]
    assert f"archived ({entries[0]['rows']} rows)" in line
    line = [x for x in partitions.splitlines() if x.startswith(partition_name(older))][0]
    assert line.split()[-1] == "pending"


def _archived(url: str) -> dict[date, tuple]:
    return {r[0]: r[1:] for r in query(url, "SELECT day, path, rows, last_id FROM archives")}


def _partitions(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT c.relname FROM pg_inherits i JOIN pg_class c "
                                     "ON c.oid = i.inhrelid "
                                     "WHERE i.inhparent = 'firehose_events'::regclass")}


async def test_a_simulated_week_archives_each_day_once_before_dropping_it(database, nursery,
                                                                         tmp_path):
    # A feed far longer than the test (~60 s): every simulated day gets rows, whatever the
    # machine's load; the checks below cover what was committed by then.
    frames = renumbered(relay_frames(), 18000)
    clock = FakeClock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    port = await nursery.start(serve_replay, frames, "127.0.0.1", 0, 300.0)
    archive = tmp_path / "archive"
    settings = dataclasses.replace(_settings(database, port, tmp_path),
                                   archive_dir=str(archive), archive_grace=60.0)
    running = await nursery.start(serve, settings, writer.connect, clock)

    def last_id() -> int:
        return query(database, "SELECT last_id FROM firehose_cursor")[0][0]

    def never_dropped_unarchived() -> None:
        archived, present = _archived(database), _partitions(database)
        for n in range(10):
            day = date(2026, 3, 1) + timedelta(days=n)
            if day < clock.now.date() and partition_name(day) not in present:
                assert day in archived, f"{day} dropped without an archive"

    for _ in range(7):
        mark = last_id()
        await wait_until(lambda m=mark: last_id() > m, 20)  # rows for the current day
        clock.now += timedelta(days=1)
        closed = clock.now.date() - timedelta(days=1)
        await wait_until(lambda d=closed: d in _archived(database), 20)
        never_dropped_unarchived()
        cutoff = day_start(clock.now.date() - timedelta(days=2))  # retention 2 days at noon
        await wait_until(lambda c=cutoff: all(
            day_start(date.fromisoformat(f"{p[17:21]}-{p[21:23]}-{p[23:25]}")) >= c
            for p in _partitions(database) if p != "firehose_events_default"), 10)
        never_dropped_unarchived()

    # Each closed day once: one row, one file, and as many exports as days.
    archived = _archived(database)
    days = sorted(archived)
    assert days == [date(2026, 3, 1) + timedelta(days=n) for n in range(7)]
    assert running.stats.archive.written == 7 and running.stats.archive.failures == 0
    files = sorted(p for p in archive.rglob("*") if p.is_file())
    assert files == sorted(Path(v[0]) for v in archived.values())
    # Nothing lost: the archives plus what the log still holds are every event committed
    # so far, once, in order. (No day closes while this reads: the clock stands still.)
    committed = last_id()
    table = pq.read_table(archive)
    assert table.num_rows == sum(v[1] for v in archived.values())
    from_files = [(r["id"], r["seq"], r["collection"], r["rkey"], r["cid"])
                  for r in table.sort_by("id").to_pylist()]
    kept = query(database, "SELECT id, seq, collection, rkey, cid FROM firehose_events "
                           "WHERE id > %s AND id <= %s ORDER BY id", table.num_rows, committed)
    everything = from_files + [tuple(r) for r in kept]
    assert [r[0] for r in everything] == list(range(1, committed + 1))
    assert [r[1:] for r in everything] == expected_rows(frames)[:committed]
    # A day archived by the manager reads back with DuckDB as well.
    day = days[2]
    got = duckdb.sql(f"SELECT count(*), min(id), max(id) FROM read_parquet('{archive}/*/*.parquet',"
                     f" hive_partitioning = true) WHERE date = DATE '{day}'").fetchall()
    assert got == [(archived[day][1], archived[day][2] - archived[day][1] + 1,
                    archived[day][2])]


async def test_an_unwritable_archive_delays_the_drop_until_it_is_writable(database, nursery,
                                                                        tmp_path):
    port = await nursery.start(serve_replay, [])
    blocked = tmp_path / "archive"
    blocked.write_text("a file where the directory should be")  # root ignores chmod
    clock = FakeClock(datetime.now(UTC))
    settings = dataclasses.replace(_settings(database, port, tmp_path, retention_days=1),
                                   archive_dir=str(blocked), archive_grace=0.0)
    running = await nursery.start(serve, settings, writer.connect, clock)
    day = clock.now.date()
    rows = [r for f in relay_frames()[:30] for r in decode_frame(f).rows]
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        cursor = await store.claim_cursor(settings.subscribe_url)
        last = await store.append(rows, None, cursor.last_id, clock.now)
    ids = list(range(cursor.last_id + 1, last + 1))
    clock.now += timedelta(days=3)  # the day is past retention, but not archived
    base = running.api_url

    async def health() -> dict:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/health")).json()

    await wait_until(lambda: running.stats.archive.failures >= 2, 10)  # retried
    body = await health()
    assert body["archive"]["failing"] and body["archive"]["failing_day"] == day.isoformat()
    assert "Error" in body["archive"]["last_error"]  # the exception, named
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"{base}/metrics")).text
    assert "skywire_archive_failing 1" in metrics
    assert "skywire_partitions_waiting_for_archive 1" in metrics
    assert partition_name(day) in _partitions(database)  # kept
    assert [r[0] for r in query(database, "SELECT id FROM firehose_events ORDER BY id")] == ids

    blocked.unlink()  # writable again
    await wait_until(lambda: day in _archived(database), 10)
    await wait_until(lambda: partition_name(day) not in _partitions(database), 10)
    body = await health()
    assert not body["archive"]["failing"] and body["archive"]["written"] == 1
    assert pq.read_table(_archived(database)[day][0]).column("id").to_pylist() == ids


def test_sigkill_during_an_export_leaves_nothing_that_looks_complete(database, tmp_path):
    day = _day(2)
    n = 300_000
    start = day_start(day).isoformat()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {partition_name(day)} PARTITION OF firehose_events FOR "
                     f"VALUES FROM ('{start}') TO ('{day_start(_day(1)).isoformat()}')")
        conn.execute(
            f"INSERT INTO {partition_name(day)} (id, seq, repo, event_type, action, collection, "
            "rkey, cid, rev, record, event_time, indexed_at) SELECT g, g, 'did:plc:' || (g %% "
            "5000), 'commit', 'create', 'app.bsky.feed.post', 'k' || g, 'cid' || g, 'rev', "
            "jsonb_build_object('text', repeat(md5(g::text), 8), 'n', g), "
            f"%s::timestamptz + g * interval '1 ms', %s::timestamptz + g * interval '1 ms' "
            "FROM generate_series(1, %s) g", (start, start, n))
        conn.execute("INSERT INTO firehose_cursor (upstream, last_id) VALUES ('ws://x', %s)",
                     (n,))
    archive = tmp_path / "archive"
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": database,
           "SKYWIRE_ARCHIVE_DIR": str(archive)}
    proc = subprocess.Popen([sys.executable, "-m", "skywire_trio", "export", "--day",
                             day.isoformat()], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    folder = archive / f"date={day}"
    try:
        assert wait_for(lambda: any(folder.glob(".events-*.tmp")), 60), proc.communicate()
        time.sleep(0.3)  # well into the file
        assert proc.poll() is None, "the export finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not list(archive.rglob("*.parquet"))  # only the hidden temporary file
    assert query(database, "SELECT count(*) FROM archives") == [(0,)]

    done = cli(database, "export", "--day", day.isoformat(), SKYWIRE_ARCHIVE_DIR=str(archive))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in folder.iterdir()] == [f"events-1-{n}.parquet"]  # temp cleared
    assert query(database, "SELECT rows, first_id, last_id FROM archives") == [(n, 1, n)]
    parquet = pq.ParquetFile(folder / f"events-1-{n}.parquet")
    assert parquet.num_row_groups == 3  # about 100,000 rows each
    assert parquet.metadata.row_group(0).num_rows == 100_000


def test_rows_out_of_id_order_on_disk_are_exported_in_id_order(database, tmp_path):
    day = _day(3)
    start = day_start(day).isoformat()
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {partition_name(day)} PARTITION OF firehose_events FOR "
                     f"VALUES FROM ('{start}') TO ('{day_start(_day(2)).isoformat()}')")
        # Physically in decreasing id order (the exporter's first, unordered read fails
        # its order check and it reads again in id order).
        conn.execute(f"INSERT INTO {partition_name(day)} (id, event_type, record, indexed_at) "
                     "SELECT g, 'commit', jsonb_build_object('n', g), %s::timestamptz "
                     "FROM generate_series(150000, 1, -1) g", (start,))
        conn.execute("INSERT INTO firehose_cursor (upstream, last_id) VALUES ('ws://x', 150000)")
    done = cli(database, "export", "--day", day.isoformat(), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / f"date={day}" / "events-1-150000.parquet")
    assert table.column("id").to_pylist() == list(range(1, 150_001))
    assert [json.loads(r)["n"] for r in table.column("record").to_pylist()[:3]] == [1, 2, 3]


@pytest.fixture
def s3(tmp_path):
    """A local S3-compatible server (moto) on a free port; yields the AWS variables."""
    port = free_port()
    log = (tmp_path / "moto.log").open("wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        def up() -> bool:
            try:
                return httpx.get(env["AWS_ENDPOINT_URL"], timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        assert wait_for(up, 30), (tmp_path / "moto.log").read_text()
        httpx.put(f"{env['AWS_ENDPOINT_URL']}/archive-bucket").raise_for_status()
        yield env
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_export_to_s3(database, s3, monkeypatch):
    day = _day(1)
    append_rows(database, "ws://x/y", relay_frames()[:40], day_start(day) + timedelta(hours=5))
    assert cli(database, "partitions", "maintain", SKYWIRE_RETENTION_DAYS="30").returncode == 0
    location = "s3://archive-bucket/skywire/log"
    done = cli(database, "export", "--day", day.isoformat(), SKYWIRE_ARCHIVE_DIR=location, **s3)
    assert done.returncode == 0, done.stderr
    expected = db_rows(database)
    key = (f"archive-bucket/skywire/log/date={day}/"
           f"events-{expected[0][0]}-{expected[-1][0]}.parquet")
    assert query(database, "SELECT path, rows FROM archives") == [(f"s3://{key}",
                                                                    len(expected))]
    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    fs = pafs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"], region="us-east-1",
                           access_key="testing", secret_key="testing")
    listed = fs.get_file_info(pafs.FileSelector("archive-bucket/skywire/log", recursive=True))
    assert [i.path for i in listed if i.is_file] == [key]
    assert file_rows(pq.read_table(key, filesystem=fs)) == expected
