"""Shared fixtures: every test gets its own database on the real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import fresh_database


@pytest.fixture
def database() -> Iterator[str]:
    """URL of a new, migrated database, dropped after the test."""
    with fresh_database() as url:
        yield url
