"""The database a command works on: the configured one or the embedded server, migrated."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import Settings
from ..log import schema

log = logging.getLogger("skywire_trio")


@contextmanager
def database(settings: Settings, *, migrate: bool = True) -> Iterator[Settings]:
    """``settings`` with a database URL: the configured one, or the embedded server's.

    The database is created if missing and, with ``migrate``, brought to the head revision
    (alembic runs only when it is not there already).
    """
    if settings.database_url is not None:
        if migrate:
            migrate_database(settings)
        yield settings
        return
    from ..embedded import embedded_postgres

    log.info("DATABASE_URL is not set: using the embedded PostgreSQL in %s",
             settings.data_dir / "pgdata")
    with embedded_postgres(settings.data_dir) as url:
        settings = dataclasses.replace(settings, database_url=url)
        if migrate:
            migrate_database(settings)
        yield settings


def migrate_database(settings: Settings, always: bool = False) -> None:
    """Create the database if missing; migrate to head (``always``: run alembic anyway)."""
    assert settings.database_url is not None
    if schema.create_database_if_missing(settings.database_url):
        log.info("created database %s", settings.database_url)
    if always or not schema.at_head(settings.database_url):
        schema.migrate(settings.sqlalchemy_url)
