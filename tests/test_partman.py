"""pg_partman 5.1.0 takes the log's partitions over, and gives them back, for real.

pg_partman is built from its source tarball with PGXS into the local PostgreSQL 15
(scripts/install-pg-partman; once per machine) and every test runs against a database of
its own in a throwaway cluster of this module's own, so extensions, database time zones
and ``run_maintenance`` never touch the shared server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.framefile import write_frames
from skywire_trio.types import day_start, partition_name

from .cluster import Cluster, needs_cluster, throwaway_cluster
from .support import (
    ROOT,
    SHARED,
    append_rows,
    fresh_database,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    service_process,
    wait_for,
)

pytestmark = needs_cluster
TARBALL = SHARED / "vendor" / "pg_partman-5.1.0.tar.gz"
DEFAULT = "firehose_events_default"


def _install_pg_partman() -> None:
    """Build and install pg_partman 5.1.0 unless it is there; skip if it cannot be built."""
    if not TARBALL.exists():
        pytest.skip(f"pg_partman source not found at {TARBALL}")
    done = subprocess.run([str(ROOT / "scripts" / "install-pg-partman"), str(TARBALL)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        pytest.skip("pg_partman 5.1.0 cannot be built and installed here (needs "
                    "postgresql-server-dev-15 and root; scripts/setup installs the package): "
                    f"{(done.stdout + done.stderr)[-800:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _install_pg_partman()
    with throwaway_cluster(tmp_path_factory.mktemp("pg") / "postgres.log") as c:
        yield c


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    """A new, migrated database in the throwaway cluster."""
    with fresh_database(cluster.url("postgres")) as database_url:
        yield database_url


def _today() -> datetime:
    return day_start(datetime.now(UTC).date())


def cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m skywire_trio ARGS`` against ``url``, as an operator runs it."""
    full = {"PATH": os.environ["PATH"], "DATABASE_URL": url, **env}
    return subprocess.run([sys.executable, "-m", "skywire_trio", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120, check=False)


def bounds(url: str) -> dict[str, tuple[datetime, datetime]]:
    """Each daily partition's bounds as the catalog has them (read in a UTC session)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        rows = conn.execute(
            "SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid, regexp_match(pg_get_expr(c.relpartbound, "
            r"c.oid), $$FROM \('([^']+)'\) TO \('([^']+)'\)$$) b "
            "WHERE i.inhparent = 'firehose_events'::regclass AND b IS NOT NULL").fetchall()
    return {name: (lower, upper) for name, lower, upper in rows}


def assert_utc_days(url: str) -> dict[str, tuple[datetime, datetime]]:
    """Every daily partition covers exactly the UTC day its name says."""
    found = bounds(url)
    for name, (lower, upper) in found.items():
        day = lower.astimezone(UTC).date()
        assert (name, lower, upper) == (partition_name(day), day_start(day),
                                        day_start(day + timedelta(days=1))), found
    return found


def rows_where(url: str) -> list[tuple]:
    """(partition, id, seq, rkey, indexed_at) of every row, in id order."""
    return query(url, "SELECT tableoid::regclass::text, id, seq, rkey, indexed_at "
                      "FROM firehose_events ORDER BY id")


def maintenance(url: str, premake: int | None = None) -> None:
    """What pg_partman's background worker or cron job runs, from a new session."""
    with psycopg.connect(url, autocommit=True) as conn:
        if premake is not None:
            conn.execute("UPDATE partman.part_config SET premake = %s "
                         "WHERE parent_table = 'public.firehose_events'", (premake,))
        conn.execute("SELECT partman.run_maintenance('public.firehose_events')")


def test_adopt_then_ingest_with_pg_partman_managing(url, tmp_path):
    today = _today()
    frames = renumbered(relay_frames(), 300)
    recording = tmp_path / "frames.bin"
    write_frames(recording, frames)
    with replay_process(recording) as relay:
        upstream = relay + "/xrpc/com.atproto.sync.subscribeRepos"
        old = relay_frames()[:10]
        kept_ids = append_rows(url, upstream, old, today - timedelta(days=9) + timedelta(hours=12))
        gone_ids = append_rows(url, upstream, old, today - timedelta(days=20) + timedelta(hours=12))
        day9, day20 = (partition_name((today - timedelta(days=n)).date()) for n in (9, 20))
        # Our own manager first (retention long enough to keep both old days).
        done = cli(url, "partitions", "maintain", SKYWIRE_RETENTION_DAYS="30")
        assert done.returncode == 0, done.stderr
        assert {day9, day20} <= set(bounds(url))

        done = cli(url, "partitions", "adopt-partman", "--retention-days", "14", "--premake", "6")
        assert done.returncode == 0, done.stdout + done.stderr
        made = [partition_name((today + timedelta(days=n)).date()) for n in (5, 6)]
        assert "pg_partman 5.1.0 installed" in done.stdout
        assert f"created {', '.join(made)}" in done.stdout, done.stdout
        assert "retention 14 days" in done.stdout
        assert_utc_days(url)

        expected = sum(len(decode_frame(f).rows) for f in frames)
        first_new = max(gone_ids) + 1
        log = tmp_path / "service.log"
        env = service_env(url, relay, tmp_path, SKYWIRE_PARTITION_MANAGER="pg_partman",
                          SKYWIRE_PARTITION_INTERVAL="1")  # default retention: 7 days
        with service_process(env, log):
            assert wait_for(lambda: query(url, "SELECT last_id FROM firehose_cursor")[0][0]
                            == first_new - 1 + expected, 60), log.read_text()[-3000:]
            time.sleep(2.5)  # a few of the manager's passes
            rows = rows_where(url)
            new = [r for r in rows if r[1] >= first_new]
            assert len(new) == expected
            assert {r[0] for r in new} == {partition_name(today.date())}  # pg_partman's
            assert query(url, f"SELECT count(*) FROM {DEFAULT}") == [(0,)]
            # Older than our default retention (7 days), inside pg_partman's (14): kept.
            assert [r[1] for r in rows if r[0] == day9] == kept_ids
            assert [r[1] for r in rows if r[0] == day20] == gone_ids  # ours drops nothing

            base = f"http://127.0.0.1:{env['PORT']}"
            health = httpx.get(f"{base}/health").json()
            assert health["status"] == "ok", health
            assert health["partitions"] == {
                "manager": "pg_partman", "retention": "14 days", "premake": 6,
                "partitions_ahead": 6, "default_rows": 0, "alarms": []}
            metrics = httpx.get(f"{base}/metrics").text
            assert 'skywire_partition_manager_info{manager="pg_partman"} 1' in metrics
            assert "skywire_partition_retention_seconds 1209600.0" in metrics
            assert "skywire_partitions_ahead 6" in metrics
            listed = cli(url, "partitions", "list", SKYWIRE_PARTITION_MANAGER="pg_partman")
            assert listed.stdout.startswith(
                "manager: pg_partman; retention: 14 days; premake: 6; partitions ahead of "
                "today: 6; rows in the default partition: 0\n"), listed.stdout

            # pg_partman's own maintenance, from a session that sets no time zone: the
            # next days get exactly the names and bounds ours would give them, and the day
            # past its retention goes.
            maintenance(url, premake=8)
            found = assert_utc_days(url)
            for n in range(9):
                day = (today + timedelta(days=n)).date()
                assert found[partition_name(day)] == (day_start(day),
                                                      day_start(day + timedelta(days=1)))
            assert day20 not in found and day9 in found
            assert [r[1] for r in rows_where(url) if r[0] == day9] == kept_ids

            # Rows in the default partition: an alarm, with pg_partman's remedy.
            skewed = today + timedelta(days=30, hours=3)
            append_rows(url, upstream, relay_frames()[:5], skewed)
            assert wait_for(lambda: httpx.get(f"{base}/health").json()["partitions"]
                            ["default_rows"] > 0, 10)
            alarms = httpx.get(f"{base}/health").json()["partitions"]["alarms"]
            assert any("partition_data_proc" in a for a in alarms), alarms
            assert wait_for(lambda: "skywire_partition_alarms 1" in
                            httpx.get(f"{base}/metrics").text, 10)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CALL partman.partition_data_proc('public.firehose_events')")
            assert query(url, f"SELECT count(*) FROM {DEFAULT}") == [(0,)]
            assert partition_name(skewed.date()) in assert_utc_days(url)
        assert "Traceback" not in log.read_text()


def test_adopt_moves_default_rows_and_forces_utc(url):
    today = _today()
    with psycopg.connect(url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'America/New_York'")
    upstream = "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos"
    # Before 05:00 UTC: the previous day in New York, so a local-time partition would be
    # a day off. The fresh migration made no daily partition: all of it is in the default.
    frames = relay_frames()
    for n, stamp in enumerate((today - timedelta(days=3, hours=-2),
                               today - timedelta(minutes=30), today + timedelta(hours=1))):
        append_rows(url, upstream, frames[n * 10:n * 10 + 10], stamp)
    before = rows_where(url)
    assert {r[0] for r in before} == {DEFAULT}

    done = cli(url, "partitions", "adopt-partman")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"moved {len(before)} row(s) out of firehose_events_default" in done.stdout
    assert "database TimeZone: America/New_York -> UTC" in done.stdout

    after = rows_where(url)
    assert [r[1:] for r in after] == [r[1:] for r in before]  # nothing lost, ids unchanged
    for partition, *_, indexed_at in after:
        assert partition == partition_name(indexed_at.astimezone(UTC).date())
    found = assert_utc_days(url)
    assert partition_name((today + timedelta(days=4)).date()) in found  # premake 4
    assert query(url, "SHOW timezone") == [("UTC",)]  # every new session
    # pg_partman's own maintenance from a new session keeps to UTC days as well.
    maintenance(url, premake=6)
    assert partition_name((today + timedelta(days=6)).date()) in assert_utc_days(url)
    # A second adoption is refused and changes nothing.
    again = cli(url, "partitions", "adopt-partman")
    assert again.returncode == 2 and "already manages" in again.stderr


def test_release_then_builtin_adopts_pg_partmans_partitions(url):
    today = _today()
    done = cli(url, "partitions", "adopt-partman", "--retention-days", "14", "--premake", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    append_rows(url, "ws://127.0.0.1:9/x", relay_frames()[:20], datetime.now(UTC))
    maintenance(url, premake=6)  # two days made by pg_partman itself
    by_partman = [partition_name((today + timedelta(days=n)).date()) for n in (5, 6)]
    assert set(by_partman) <= set(bounds(url))
    # While pg_partman manages the table the builtin manager refuses to touch it.
    refused = cli(url, "partitions", "maintain")
    assert refused.returncode == 2 and "release-partman" in refused.stderr
    before_rows, before_parts = rows_where(url), bounds(url)

    released = cli(url, "partitions", "release-partman")
    assert released.returncode == 0, released.stderr
    assert "its retention was 14 days" in released.stdout
    assert query(url, "SELECT count(*) FROM partman.part_config") == [(0,)]
    template = "SELECT to_regclass('partman.template_public_firehose_events')"
    assert query(url, template) == [(None,)]
    assert rows_where(url) == before_rows and bounds(url) == before_parts

    done = cli(url, "partitions", "maintain", SKYWIRE_PREMAKE_DAYS="8",
               SKYWIRE_RETENTION_DAYS="14")
    assert done.returncode == 0, done.stderr
    # (pg_partman premakes one day more than asked before noon UTC: with
    # infinite_time_partitions it counts from now, not from midnight, and rounds.)
    window = {partition_name((today + timedelta(days=n)).date()) for n in range(9)}
    made = sorted(window - set(before_parts))
    assert made and done.stdout.startswith(f"created: {', '.join(made)}; dropped: none"), \
        done.stdout
    after = assert_utc_days(url)
    assert {n: after[n] for n in before_parts} == before_parts  # pg_partman's, adopted
    assert rows_where(url) == before_rows
    assert query(url, f"SELECT count(*) FROM {DEFAULT}") == [(0,)]


def test_pg_partman_mode_refuses_an_unmanaged_table(url, tmp_path):
    old = _today() - timedelta(days=20) + timedelta(hours=1)
    ids = append_rows(url, "ws://127.0.0.1:9/x", relay_frames()[:10], old)
    assert cli(url, "partitions", "maintain", SKYWIRE_RETENTION_DAYS="30").returncode == 0
    expired = partition_name(old.date())
    env = service_env(url, "ws://127.0.0.1:9", tmp_path, SKYWIRE_PARTITION_MANAGER="pg_partman")

    def start() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "skywire_trio"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    done = start()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pg_partman extension is not installed in this database" in done.stderr
    assert "adopt-partman" in done.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
    done = start()
    assert done.returncode == 2, done.stderr[-2000:]
    assert ("pg_partman 5.1.0 does not manage public.firehose_events: hand the log over with "
            "`python -m skywire_trio partitions adopt-partman`") in done.stderr
    # Nothing dropped: the day past our default retention is still there, rows and all.
    assert expired in bounds(url)
    assert [r[1] for r in rows_where(url) if r[0] == expired] == ids
