"""The log's database and schema: create the database, run migrations, check the revision.

Synchronous (psycopg 3 and alembic): used at start and by the command line, never on the
hot path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from alembic.config import Config

# The migrations ship inside the package (skywire_trio/migrations), so an installed wheel can
# migrate without the source tree; the repository's alembic.ini points at the same directory.
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
# The newest revision in migrations/versions (tests/test_migrations.py checks that it is).
HEAD_REVISION = "0008_event_type_index"


def conninfo(database_url: str, dbname: str | None = None) -> str:
    """``database_url`` as a libpq connection string, optionally for another database."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    if dbname is not None:
        info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def create_database_if_missing(database_url: str) -> bool:
    """Create the configured database when it does not exist; True if it was created."""
    name = psycopg.conninfo.conninfo_to_dict(database_url).get("dbname") or "postgres"
    with psycopg.connect(conninfo(database_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def alembic_config(sqlalchemy_url: str) -> Config:
    """An alembic Config for the package's migrations, aimed at one database.

    Built in code, with no .ini file: it works the same from the source tree and from an
    installed wheel.
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = sqlalchemy_url
    return cfg


def migrate(sqlalchemy_url: str, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (head by default)."""
    # Imported here: alembic and SQLAlchemy are ~0.25 s of the service's ~1 s start, and a
    # database already at head (every start but the first after an upgrade) skips them.
    from alembic import command

    command.upgrade(alembic_config(sqlalchemy_url), revision)


def at_head(database_url: str) -> bool:
    """Whether the schema is already at ``HEAD_REVISION`` (no migration to run)."""
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
        if exists is None or exists[0] is None:
            return False
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return versions == [(HEAD_REVISION,)]
