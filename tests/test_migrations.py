"""Alembic: upgrade, downgrade and upgrade again against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory

from skywire_trio.log import schema

from .support import ROOT, fresh_database, query

TABLES = ("SELECT relname FROM pg_class WHERE (relname LIKE 'firehose%' "
          "OR relname IN ('api_tokens', 'publisher_cursor')) AND relkind IN ('r', 'p') "
          "ORDER BY 1")


def test_upgrade_downgrade_upgrade():
    with fresh_database(migrate=False) as url:
        cfg = schema.alembic_config("postgresql+psycopg://" + url.split("://", 1)[1])
        assert not schema.at_head(url)  # a fresh database gets migrated at start
        command.upgrade(cfg, "head")
        assert schema.at_head(url)  # ... and later starts skip alembic
        assert [r[0] for r in query(url, TABLES)] == [
            "api_tokens", "firehose_cursor", "firehose_events", "firehose_events_default",
            "publisher_cursor"]
        query(url, "INSERT INTO firehose_cursor (upstream) VALUES ('ws://x')")
        command.downgrade(cfg, "base")
        assert query(url, TABLES) == []
        assert not schema.at_head(url)
        command.upgrade(cfg, "head")
        assert len(query(url, TABLES)) == 5
        indexes = {r[0] for r in query(
            url, "SELECT indexname FROM pg_indexes WHERE tablename = 'firehose_events'")}
        assert {"firehose_events_id_idx", "firehose_events_collection_id_idx",
                "firehose_events_repo_id_idx", "firehose_events_event_type_id_idx"} <= indexes


def test_operators_alembic_ini_upgrades_and_downgrades(tmp_path):
    # `alembic upgrade head` by hand, as README says: the repository's alembic.ini, the
    # database from DATABASE_URL, run from another directory with -c.
    alembic = Path(sys.executable).parent / "alembic"
    with fresh_database(migrate=False) as url:
        env = {**os.environ, "DATABASE_URL": url}
        for args in (["upgrade", "head"], ["downgrade", "base"]):
            result = subprocess.run([alembic, "-c", ROOT / "alembic.ini", *args], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            assert schema.at_head(url) == (args[0] == "upgrade")
            assert len(query(url, TABLES)) == (5 if args[0] == "upgrade" else 0)


@pytest.mark.quick
def test_head_revision_is_the_newest_migration():
    script = ScriptDirectory.from_config(schema.alembic_config("postgresql+psycopg://unused/x"))
    assert script.get_heads() == [schema.HEAD_REVISION]


def test_cursor_table_holds_one_row(database):
    query(database, "INSERT INTO firehose_cursor (upstream) VALUES ('ws://a')")
    try:
        query(database, "INSERT INTO firehose_cursor (upstream) VALUES ('ws://b')")
    except Exception as exc:  # noqa: BLE001 - any refusal will do; a second row will not
        assert "duplicate key" in str(exc)
    else:
        raise AssertionError("a second cursor row was accepted")
    assert query(database, "SELECT count(*) FROM firehose_cursor") == [(1,)]
